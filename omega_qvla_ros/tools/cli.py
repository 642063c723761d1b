"""`omega-qvla`: the project's command line.

Each sub-command lives in its own module under tools/ and registers itself through
`register(subparsers)`; heavy imports (torch, rclpy) happen inside the handlers so
that `--help` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

# module names under omega_qvla_ros.tools, each exposing register(subparsers)
COMMAND_MODULES = ["bench_cmd", "model_cmds", "sim_cmds", "train_cmd", "eval_cmd", "replay_cmd"]


def emit(obj: dict, as_json: bool, text: str) -> None:
    """Print a command's result: JSON (for --json) or its human-readable text."""
    if as_json:
        json.dump(obj, sys.stdout, indent=2)
        print()
    else:
        print(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omega-qvla",
        description="Quantize VLA policies to W4A4 with Omega-QVLA, and inspect, "
        "benchmark and replay them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"omega_qvla_ros.tools.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
