"""`omega-qvla bench`: benchmarks with JSON output (suites land with their issues)."""
from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print JSON")
    p.add_argument("suite", choices=["quant"], help="which benchmark")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    p.add_argument("--device", default="cpu", help="cpu or cuda (latency part)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from omega_qvla_ros.tools import bench_quant

    result = bench_quant.run(quick=args.quick, device=args.device)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(bench_quant.format_text(result))
    return 0
