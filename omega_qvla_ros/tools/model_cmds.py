"""`omega-qvla memory | import-checkpoint | quantize`: model-level commands."""
from __future__ import annotations

import argparse
import sys

from omega_qvla_ros.quant.recipes import RECIPES
from omega_qvla_ros.tools.cli import emit
from omega_qvla_ros.tools.model_source import add_model_args, load_fp_model, model_spec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("memory", help="static memory: parameters per component, FP16 vs W4A4 bytes")
    p.add_argument("--family", choices=["pi05", "gr00t"], required=True)
    p.add_argument("--size", choices=["tiny", "small", "full"], default="full")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="omega_qvla")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_memory)

    p = sub.add_parser("import-checkpoint", help="map a safetensors checkpoint onto a model by name")
    p.add_argument("checkpoint", help="model.safetensors of a real checkpoint")
    p.add_argument("--family", choices=["pi05", "gr00t"], required=True)
    p.add_argument("--size", choices=["tiny", "small", "full"], default="full")
    p.add_argument("--out", help="write the imported FP model as a pack here")
    p.add_argument("--allow-missing", action="store_true", help="report missing keys, do not fail")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_import)

    p = sub.add_parser("quantize", help="quantize a model into a W4A4 pack")
    add_model_args(p)
    p.add_argument("--checkpoint", help="instead of --model: import FP weights from a safetensors "
                   "checkpoint by name (openpi / LeRobot / GR00T names) into --family/--size")
    p.add_argument("--family", choices=["pi05", "gr00t"], help="with --checkpoint; alone: the family's shipped pack")
    p.add_argument("--size", choices=["tiny", "small"], help="with --checkpoint")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="omega_qvla")
    p.add_argument("--calib", default="synthetic",
                   help="calibration source: 'synthetic' (random observations) or a rosbag2 path")
    p.add_argument("--calib-batches", type=int, default=4)
    p.add_argument("--float-dtype", choices=["float16", "float32"], default="float16",
                   help="storage of the parts kept in floating point")
    p.add_argument("--out", required=True, help="pack directory to write")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_quantize)


def run_memory(args: argparse.Namespace) -> int:
    from omega_qvla_ros.models.memory import memory_report

    r = memory_report(args.family, args.size, args.recipe)
    lines = [f"{args.family} {args.size} {args.recipe}: {r['params']['total'] / 1e6:.1f}M parameters "
             f"({', '.join(f'{k} {v / 1e6:.1f}M' for k, v in r['params'].items() if k != 'total')})"]
    for name, s in r["scopes"].items():
        lines.append(f"  {name:24s} {s['params'] / 1e6:10.1f}M params  FP16 {s['fp16_gib']:.3f} GiB  "
                     f"W4A4 {s['w4a4_mib']:.1f} MiB  reduction {100 * s['reduction']:.1f}%")
    if "paper" in r:
        p = r["paper"]
        lines.append(f"  paper: {p['quantized_params'] / 1e9:.2f}B quantized weights, FP16 {p['fp16_gib']} GiB "
                     f"→ {p['w4a4_mib']:.0f} MiB ({100 * p['reduction']:.1f}%)")
    emit(r, args.json, "\n".join(lines))
    return 0


def run_import(args: argparse.Namespace) -> int:
    from omega_qvla_ros.models import build_model, model_info
    from omega_qvla_ros.models.importer import import_checkpoint
    from omega_qvla_ros.quant.pack import save_pack

    model = build_model(args.family, args.size)
    rep = import_checkpoint(model, args.checkpoint, strict=not args.allow_missing)
    if args.out:
        save_pack(model, args.out, model_info(model, args.size), recipe=RECIPES["fp16"].to_dict())
    d = rep.to_dict()
    emit(d, args.json, f"mapped {d['mapped']} tensors; unmapped {len(d['unmapped'])}: "
          f"{d['unmapped'][:10]}; missing {len(d['missing'])}: {d['missing'][:10]}")
    return 0


def bag_observations(bag, model, batches: int, batch: int = 2, offset: int = 0, robot=None,
                     cameras: list[str] | None = None):
    """Model-ready observations from frames spread evenly over a recorded bag, normalised
    with `robot` (the model's own normalisation; default: the ALOHA joint ranges)."""
    import numpy as np
    import torch

    from omega_qvla_ros.models.common import Observation
    from omega_qvla_ros.models.tokenizer import ByteTokenizer
    from omega_qvla_ros.runtime.preprocess import to_model_observation
    from omega_qvla_ros.runtime.robot import RobotSpec
    from omega_qvla_ros.sim.bag_read import read_frames

    cfg = model.config
    robot = robot or RobotSpec()
    cams = list(cameras or robot.cameras[: cfg.cameras])
    frames = read_frames(bag, cams)
    pick = np.linspace(0, len(frames) - 1, batches * batch).astype(int) + offset
    obs = [to_model_observation(frames[min(i, len(frames) - 1)].observation, robot, cams, cfg.vision.image_size,
                                ByteTokenizer(), cfg.max_tokens)[0] for i in pick]
    out = []
    for k in range(0, len(obs), batch):
        grp = obs[k:k + batch]
        out.append(Observation(*(torch.cat([getattr(o, f) for o in grp]) for f in
                                 ("images", "tokens", "token_mask", "state", "image_mask"))))
    return out


def run_quantize(args: argparse.Namespace) -> int:
    import torch

    from omega_qvla_ros.models import model_info
    from omega_qvla_ros.models.calibrate import quantize_model, synthetic_observations
    from omega_qvla_ros.quant.pack import save_pack
    from omega_qvla_ros.quant.qlinear import QuantLinear

    if (args.size or (args.model or "").rsplit(":", 1)[-1]) == "full":
        print("quantizing a full-size model on a CPU is not supported here; use "
              "`omega-qvla memory` for full-size accounting", file=sys.stderr)
        return 2
    if args.checkpoint:
        from omega_qvla_ros.models import build_model
        from omega_qvla_ros.models.importer import import_checkpoint
        from omega_qvla_ros.runtime.robot import RobotSpec
        from omega_qvla_ros.tools.model_source import FPModel

        if not (args.family and args.size):
            print("--checkpoint needs --family and --size", file=sys.stderr)
            return 2
        m = build_model(args.family, args.size).eval()
        import_checkpoint(m, args.checkpoint)
        src = FPModel(m, RobotSpec(), RobotSpec().cameras[: m.config.cameras],
                      {"family": args.family, "size": args.size, "source": args.checkpoint}, args.size)
    else:  # --family alone: that family's shipped pack
        src = load_fp_model(model_spec(args.model, args.family), args.seed)
    model = src.model
    fdt = getattr(torch, args.float_dtype)
    with torch.no_grad():  # hold the float parts at their stored precision from the start
        for p in model.parameters():
            p.copy_(p.to(fdt).to(p.dtype))
    if args.calib == "synthetic":
        obs = synthetic_observations(model.config, args.calib_batches, seed=args.seed + 1)
    else:
        from pathlib import Path

        if not Path(args.calib).exists():
            print(f"calibration source {args.calib!r}: not 'synthetic' and no such bag", file=sys.stderr)
            return 2
        obs = bag_observations(args.calib, model, args.calib_batches, robot=src.robot, cameras=src.cameras)
    quantize_model(model, args.recipe, obs, progress=not args.json, seed=args.seed)
    rep = model.quantization_report
    # the FP model's joint normalisation and cameras travel with the quantized pack
    save_pack(model, args.out, model_info(model, src.size), recipe=RECIPES[args.recipe].to_dict(),
              calibration={**rep["calibration"], "source": args.calib, "batches": args.calib_batches},
              extra={"robot": src.robot.to_dict(), "cameras": src.cameras, "fp_model": src.description},
              float_dtype=None)
    layers = rep["layers"]
    summary = {"out": args.out, "recipe": args.recipe, "model": src.description,
               "quantized_layers": len(layers),
               "integer_layers": sum(1 for m in model.modules() if isinstance(m, QuantLinear)
                                     and m.uses_integer_path()),
               "mean_weight_rel_mse": (sum(v["weight_rel_mse"] for v in layers.values()) / len(layers)
                                       if layers else 0.0),
               "worst_layers": sorted(((v["weight_rel_mse"], k) for k, v in layers.items()), reverse=True)[:5]}
    emit(summary, args.json, "\n".join([
        f"wrote {args.out}: {summary['quantized_layers']} layers quantized with {args.recipe} "
        f"({summary['integer_layers']} on the integer path)",
        f"mean weight relative MSE {summary['mean_weight_rel_mse']:.4f}; worst:",
        *[f"  {e:.4f}  {n}" for e, n in summary["worst_layers"]]]))
    return 0
