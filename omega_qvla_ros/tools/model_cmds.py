"""`omega-qvla memory | import-checkpoint | quantize`: model-level commands."""
from __future__ import annotations

import argparse
import sys

from omega_qvla_ros.quant.recipes import RECIPES
from omega_qvla_ros.tools.cli import emit
from omega_qvla_ros.tools.model_source import add_model_args, load_fp_model, model_spec


def register(sub: argparse._SubParsersAction) -> None:
    from omega_qvla_ros.models import family_names

    fams = family_names()
    p = sub.add_parser("memory", help="static memory: parameters per component, FP16 vs W4A4 bytes")
    p.add_argument("--family", choices=fams, required=True)
    p.add_argument("--size", choices=["tiny", "small", "full"], default="full")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="omega_qvla")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_memory)

    p = sub.add_parser("import-checkpoint",
                       help="import a real checkpoint (LeRobot / openpi Pi0.5, GR00T N1.5) as an FP pack",
                       description="Sizes come from the checkpoint's tensor shapes (and its config.json); "
                       "its processor (normalisation statistics, cameras, prompt) from LeRobot's "
                       "policy_preprocessor/postprocessor files or openpi's norm_stats.json. Nothing is "
                       "downloaded: the tokenizer must be a local file.")
    p.add_argument("checkpoint", help="a checkpoint folder (save_pretrained output, or an openpi folder with "
                   "model.safetensors) or a .safetensors file")
    p.add_argument("--out", help="write the FP pack here (without it: report only)")
    p.add_argument("--tokenizer", help="tokenizer.json or SentencePiece .model (or a folder holding one); "
                   "default: one found next to the checkpoint")
    p.add_argument("--family", choices=fams, help="force the family (default: detected)")
    p.add_argument("--joint-names", help="comma-separated joint names, in the state/action order "
                   "(default: from config.json, else ALOHA names for 14 joints)")
    p.add_argument("--cameras", help="comma-separated camera names (openpi checkpoints; LeRobot's come "
                   "from config.json)")
    p.add_argument("--norm-stats", help="openpi norm_stats.json (default: found under the checkpoint)")
    p.add_argument("--vision-heads", type=int, help="SigLIP attention heads, when the width is not the stock 1152")
    p.add_argument("--allow-missing", action="store_true", help="report missing tensors instead of failing "
                   "(no pack is written then)")
    p.add_argument("--float-dtype", choices=["float16", "bfloat16", "float32"], default="float32",
                   help="storage of the imported weights in the pack")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_import)

    p = sub.add_parser("quantize", help="quantize a model into a W4A4 pack")
    add_model_args(p)
    p.add_argument("--family", choices=fams, help="that family's shipped pack (instead of --model)")
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
    import torch

    from omega_qvla_ros.models import model_info
    from omega_qvla_ros.models.importer import CheckpointImportError, ImportOptions, load_checkpoint
    from omega_qvla_ros.models.tokenizer import TokenizerFileError
    from omega_qvla_ros.quant.pack import save_pack

    def names(v):
        return [x.strip() for x in v.split(",") if x.strip()] if v else None

    opts = ImportOptions(tokenizer=args.tokenizer, joint_names=names(args.joint_names), cameras=names(args.cameras),
                         norm_stats=args.norm_stats, vision_heads=args.vision_heads,
                         strict=not args.allow_missing)
    try:
        model, imp, rep = load_checkpoint(args.checkpoint, opts, family=args.family)
    except (CheckpointImportError, TokenizerFileError, ValueError) as e:
        print(f"import-checkpoint: {e}", file=sys.stderr)
        return 2
    d = {"kind": imp.kind, "family": model.config.family, "report": rep.to_dict(), "notes": imp.notes,
         "config": model_info(model)["config"], "processor": imp.processor.to_dict()}
    if args.out and not rep.missing:
        assets = {imp.processor.tokenizer: imp.tokenizer_file} if imp.tokenizer_file else {}
        save_pack(model, args.out, model_info(model), recipe=RECIPES["fp16"].to_dict(),
                  processor=imp.processor.to_dict(), assets=assets,
                  extra={"imported_from": {"path": str(args.checkpoint), "kind": imp.kind, "notes": imp.notes}},
                  float_dtype=getattr(torch, args.float_dtype))
        d["out"] = args.out
    c = model.config
    lines = [f"{imp.kind}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
             f"{len(imp.processor.joint_names)} joints, cameras {imp.processor.cameras}"
             + (f" + {imp.processor.empty_cameras} empty" if imp.processor.empty_cameras else ""),
             f"mapped {len(rep.mapped)} tensors; ignored {len(rep.ignored)}; unmapped {len(rep.unmapped)}"
             + (f": {rep.unmapped[:5]}" if rep.unmapped else "") + f"; missing {len(rep.missing)}"
             + (f": {rep.missing[:5]}" if rep.missing else ""),
             f"horizon {c.action_horizon}, {c.num_steps} flow steps, image {c.vision.image_size}px"]
    lines += [f"note: {n}" for n in imp.notes]
    lines.append(f"wrote {args.out}" if "out" in d else "no pack written" + (" (missing tensors)" if rep.missing else ""))
    emit(d, args.json, "\n".join(lines))
    return 0


def bag_observations(bag, processor, batches: int, batch: int = 2, offset: int = 0):
    """Model-ready observations from frames spread evenly over a recorded bag, through the
    model's processor."""
    import numpy as np

    from omega_qvla_ros.sim.bag_read import read_frames

    frames = read_frames(bag, processor.cameras)
    if not frames:
        raise ValueError(f"{bag}: no frame holds the model's cameras {processor.cameras} and a joint state")
    pick = np.minimum(np.linspace(0, len(frames) - 1, batches * batch).astype(int) + offset, len(frames) - 1)
    out = []
    for k in range(0, len(pick), batch):
        out.append(processor.observation([frames[i].observation for i in pick[k:k + batch]])[0])
    return out


def run_quantize(args: argparse.Namespace) -> int:
    import torch

    from omega_qvla_ros.models import model_info
    from omega_qvla_ros.models.calibrate import quantize_model, synthetic_observations
    from omega_qvla_ros.quant.pack import save_pack
    from omega_qvla_ros.quant.qlinear import QuantLinear

    if (args.model or "").startswith("random:") and args.model.endswith(":full"):
        print("quantize: a random-init full-size model is a memory benchmark, not a pack to write; "
              "use `omega-qvla memory --size full`", file=sys.stderr)
        return 2
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
        try:
            obs = bag_observations(args.calib, src.processor, args.calib_batches)
        except Exception as e:  # noqa: BLE001 - a bag's reader raises many kinds; one line for the user
            print(f"calibration bag {args.calib}: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
    quantize_model(model, args.recipe, obs, progress=not args.json, seed=args.seed)
    rep = model.quantization_report
    # the FP model's processor (and tokenizer file) and joint limits travel with the pack
    save_pack(model, args.out, model_info(model, src.size), recipe=rep["recipe_dict"],
              calibration={**rep["calibration"], "source": args.calib, "batches": args.calib_batches},
              float_dtype=None, **src.pack_extras())
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
