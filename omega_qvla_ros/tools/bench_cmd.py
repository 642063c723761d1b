"""`omega-qvla bench`: benchmarks with JSON output (suites land with their issues)."""
from __future__ import annotations

import argparse

from omega_qvla_ros.tools.cli import emit
from omega_qvla_ros.tools.model_source import add_family_arg, model_spec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print JSON")
    p.add_argument("suite", choices=["quant", "models", "policy"], help="which benchmark")
    p.add_argument("--model", default=None, help="policy benchmark: FP pack (default: the shipped model)")
    add_family_arg(p)  # policy benchmark
    p.add_argument("--size", default="tiny", choices=["tiny", "small"], help="models benchmark: model size")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    p.add_argument("--device", default="cpu", help="cpu or cuda (latency part)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.suite == "quant":
        from omega_qvla_ros.tools import bench_quant as mod

        result = mod.run(quick=args.quick, device=args.device)
    elif args.suite == "policy":
        from omega_qvla_ros.tools import bench_policy as mod

        result = mod.run(model_spec=model_spec(args.model, args.family), repeats=3 if args.quick else 5)
    else:
        from omega_qvla_ros.tools import bench_models as mod

        result = mod.run(size=args.size)
    emit(result, args.json, mod.format_text(result))
    return 0
