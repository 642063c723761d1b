"""`omega-qvla bench`: benchmarks with JSON output (suites land with their issues)."""
from __future__ import annotations

import argparse
import sys

from omega_qvla_ros.tools.cli import emit
from omega_qvla_ros.tools.eval_cmd import add_schedule_args
from omega_qvla_ros.tools.model_source import add_family_arg, model_spec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print JSON")
    p.add_argument("suite", choices=["quant", "models", "policy", "full", "stack", "sensitivity"], help="which benchmark")
    p.add_argument("--model", default=None, help="policy benchmark: FP pack (default: the shipped model)")
    add_family_arg(p)  # policy benchmark
    p.add_argument("--size", default=None, choices=["tiny", "small", "full"],
                   help="models benchmark: model size (default tiny); full benchmark: size (default full)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    p.add_argument("--device", default="cpu", help="cpu or cuda (latency part)")
    p.add_argument("--recipe", default="omega_qvla", help="full, stack, sensitivity: the recipe")
    p.add_argument("--work", default="build/bench_full", help="full: folder for the packs (several GiB)")
    p.add_argument("--checkpoint", help="full: import this checkpoint instead of random weights")
    p.add_argument("--calib-batches", type=int, default=2, help="full: calibration observations")
    p.add_argument("--chunks", type=int, default=2, help="full: chunks timed per model (the fastest counts)")
    p.add_argument("--episodes", type=int, default=20, help="sensitivity: closed-loop episodes per part")
    p.add_argument("--rollouts", type=int, default=3,
                   help="sensitivity: FP rollouts whose observations measure the action error")
    p.add_argument("--svg", help="sensitivity: also write a bar chart here")
    p.add_argument("--parts", help="sensitivity: comma-separated part labels to measure (default: all)")
    add_schedule_args(p)  # sensitivity: the controller's scheduling, as eval's
    p.add_argument("--out", help="also write the JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    log = None if args.json else (lambda m: print(m, file=sys.stderr, flush=True))  # progress on stderr
    if args.suite == "quant":
        from omega_qvla_ros.tools import bench_quant as mod

        result = mod.run(quick=args.quick, device=args.device)
    elif args.suite == "policy":
        from omega_qvla_ros.tools import bench_policy as mod

        result = mod.run(model_spec=model_spec(args.model, args.family), repeats=3 if args.quick else 5)
    elif args.suite == "stack":
        from omega_qvla_ros.tools import bench_stack as mod

        result = mod.run(recipe=args.recipe, repeats=2 if args.quick else 3)
    elif args.suite == "sensitivity":
        from omega_qvla_ros.tools import bench_sensitivity as mod

        only = [x.strip() for x in args.parts.split(",")] if args.parts else None
        try:
            result = mod.run(model_spec=model_spec(args.model, args.family), recipe=args.recipe,
                             episodes=args.episodes, rollouts=args.rollouts, replan_every=args.replan_every,
                             blend=args.blend, new_weight=args.blend_new_weight, only=only, log=log)
        except mod.UnknownPart as e:
            raise SystemExit(str(e)) from None
        if args.svg:
            mod.write_svg(result, args.svg)
    elif args.suite == "full":
        from omega_qvla_ros.tools import bench_full as mod

        if not args.family:
            raise SystemExit("bench full needs --family")
        result = mod.run(args.family, args.work, recipe=args.recipe, checkpoint=args.checkpoint,
                         calib_batches=args.calib_batches, chunks=args.chunks, size=args.size or "full",
                         log=log)
    else:
        from omega_qvla_ros.tools import bench_models as mod

        result = mod.run(size=args.size or "tiny")
    if args.out:
        import json
        from pathlib import Path

        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    emit(result, args.json, mod.format_text(result))
    return 0
