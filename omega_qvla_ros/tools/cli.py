"""`omega-qvla`: the project's command line.

Each sub-command lives in its own module under tools/ and registers itself through
`register(subparsers)`; heavy imports (rclpy, the simulator) happen inside the handlers.

Errors: a failing command prints one line — `omega-qvla <command>: <reason>` — and exits
non-zero; never a traceback for a user mistake. `--debug` (or OMEGA_QVLA_DEBUG=1) shows
the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
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
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"omega_qvla_ros.tools.{name}").register(sub)
    return parser


def error_line(e: BaseException) -> str:
    """The one line a user sees for an error: the message of the errors that describe a
    user's input (bad pack, checkpoint, bag, file, value), else type and message."""
    from omega_qvla_ros.models.importer import CheckpointImportError
    from omega_qvla_ros.models.processor import ObservationError
    from omega_qvla_ros.models.tokenizer import TokenizerFileError
    from omega_qvla_ros.quant.pack import PackError

    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (PackError, CheckpointImportError, TokenizerFileError, ObservationError, ValueError)):
        return msg
    if isinstance(e, OSError) and getattr(e, "filename", None):
        return f"{e.filename}: {e.strerror or msg}"
    return f"{type(e).__name__}: {msg} (run with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"omega-qvla {args.command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # handlers end with SystemExit("reason") for a user mistake
        if isinstance(e.code, str):
            msg = e.code if e.code.startswith("omega-qvla") else f"omega-qvla {args.command}: {e.code}"
            print(" ".join(msg.split()), file=sys.stderr)
            return 1
        raise
    except Exception as e:  # noqa: BLE001 - one line for the user, not a traceback
        if args.debug or os.environ.get("OMEGA_QVLA_DEBUG"):
            raise
        print(f"omega-qvla {args.command}: {error_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
