"""`omega-qvla memory | import-checkpoint | quantize`: model-level commands."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    p.add_argument("--embodiment-id", type=int, help="GR00T: the embodiment whose encoders/decoder to use "
                   "(default: from the checkpoint's processor, else 0)")
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
    p.add_argument("--calib-batch", type=int, default=2, help="observations per calibration batch")
    p.add_argument("--float-dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                   help="storage of the parts kept in floating point")
    p.add_argument("--pipeline", choices=["sequential", "memory"], default="sequential",
                   help="sequential: block by block from the FP pack in bounded memory (the published sizes); "
                        "memory: the whole model at once (same result)")
    p.add_argument("--hessian-dtype", choices=["float32", "float64"],
                   help="GPTQ Hessian precision (default: the recipe's, float64; float32 halves the memory of "
                        "the published sizes' 16384-wide layers)")
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
    from omega_qvla_ros.models.importer import (CheckpointImportError, ImportOptions, describe_checkpoint,
                                                import_to_pack)
    from omega_qvla_ros.models.tokenizer import TokenizerFileError

    def names(v):
        return [x.strip() for x in v.split(",") if x.strip()] if v else None

    opts = ImportOptions(tokenizer=args.tokenizer, joint_names=names(args.joint_names), cameras=names(args.cameras),
                         norm_stats=args.norm_stats, vision_heads=args.vision_heads,
                         embodiment_id=args.embodiment_id,
                         strict=not args.allow_missing)
    try:
        if args.out and not args.allow_missing:
            imp, rep, model = import_to_pack(args.checkpoint, args.out, opts, family=args.family,
                                             float_dtype=getattr(torch, args.float_dtype))
        else:
            imp, rep, model = describe_checkpoint(args.checkpoint, opts, family=args.family)
    except (CheckpointImportError, TokenizerFileError, ValueError) as e:
        print(f"import-checkpoint: {e}", file=sys.stderr)
        return 2
    d = {"kind": imp.kind, "family": model.config.family, "report": rep.to_dict(), "notes": imp.notes,
         "config": model_info(model)["config"], "processor": imp.processor.to_dict()}
    if args.out and not rep.missing and not args.allow_missing:
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


def _calibration(args, processor, model_config):
    """The calibration observations `--calib` names, through the model's processor."""
    from omega_qvla_ros.models.calibrate import synthetic_batches

    if args.calib == "synthetic":
        return synthetic_batches(processor, args.calib_batches, batch=args.calib_batch, seed=args.seed + 1)
    if not Path(args.calib).exists():
        raise SystemExit(f"calibration source {args.calib!r}: not 'synthetic' and no such bag")
    try:
        return bag_observations(args.calib, processor, args.calib_batches, batch=args.calib_batch)
    except Exception as e:  # noqa: BLE001 - a bag's reader raises many kinds; one line for the user
        raise SystemExit(f"calibration bag {args.calib}: {type(e).__name__}: {e}") from None


def _with_hessian_dtype(recipe: str, dtype: str | None):
    from omega_qvla_ros.quant.recipes import get_recipe

    r = get_recipe(recipe)
    return r if dtype is None else r.replace_sides(hessian_dtype=dtype)


class _Rounded:
    """A weight source whose floats are rounded to the pack's float precision first (as
    the all-in-memory path holds its float parts at their stored precision)."""

    def __init__(self, source, dtype) -> None:
        self.source, self.dtype = source, dtype

    def get(self, name: str):
        t = self.source.get(name)
        return t.to(self.dtype).to(t.dtype) if t.is_floating_point() else t

    def close(self) -> None:
        self.source.close()


def _quantize_sequential(args, path, fdt, recipe) -> tuple[dict, dict, int]:
    """Stage by stage from an FP pack (memory: one stage); returns (report, description, integer layers)."""
    from omega_qvla_ros.models import build_model, get_family, model_info
    from omega_qvla_ros.models.processor import processor_from_manifest
    from omega_qvla_ros.models.sequential import PackWeights, quantize_sequential
    from omega_qvla_ros.quant.pack import PackWriter
    from omega_qvla_ros.runtime.policy import default_robot_for
    from omega_qvla_ros.runtime.robot import RobotSpec
    from omega_qvla_ros.tools.model_source import repo_relative

    source = PackWeights(path)
    manifest = source.manifest
    if (manifest.get("recipe") or {}).get("name", "fp16") != "fp16":
        raise SystemExit(f"{path} is a {manifest['recipe']['name']} pack; quantize starts from an FP pack")
    info = manifest["model"]
    cfg = get_family(info["family"]).config_from_dict(info["config"])
    proc = processor_from_manifest(manifest, path, RobotSpec().to_dict(), cfg)
    model = build_model(info["family"], config=cfg, device="meta")
    obs = _calibration(args, proc, cfg)
    writer = PackWriter(args.out, fdt, shard_bytes=256 << 20)  # a pending shard is resident memory
    log = None if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    seq = quantize_sequential(model, _Rounded(source, fdt), recipe, obs, writer=writer, seed=args.seed, log=log)
    rep = model.quantization_report
    description = {"family": info["family"], "size": info.get("size"), "source": repo_relative(path)}
    tok = proc.config.tokenizer
    robot = default_robot_for(proc, manifest.get("extra"))
    writer.finish(model_info(model, info.get("size")), recipe=rep["recipe_dict"],
                  calibration={**rep["calibration"], "source": args.calib, "batches": args.calib_batches,
                               "pipeline": "sequential", "seconds": seq.seconds,
                               "peak_rss_gib": seq.peak_rss_gib, "stages": seq.stages},
                  processor=proc.to_dict(), assets={tok: Path(path) / tok} if tok != "byte" else {},
                  extra={"robot": robot.to_dict(), "cameras": proc.cameras, "fp_model": description})
    return rep, description, sum(1 for s in rep["layers"].values() if s["integer_path"])


def run_quantize(args: argparse.Namespace) -> int:
    import torch

    from omega_qvla_ros.models import model_info
    from omega_qvla_ros.models.calibrate import quantize_model
    from omega_qvla_ros.quant.pack import save_pack
    from omega_qvla_ros.quant.qlinear import QuantLinear
    from omega_qvla_ros.tools.model_source import default_model_dir

    fdt = getattr(torch, args.float_dtype)
    recipe = _with_hessian_dtype(args.recipe, args.hessian_dtype)
    spec = model_spec(args.model, args.family)
    if not (spec or "").startswith("random:") and args.pipeline == "sequential":
        path = Path(spec) if spec else default_model_dir()
        if not (path / "manifest.json").exists():
            raise SystemExit(f"no model pack at {path} (import a checkpoint first: omega-qvla import-checkpoint)")
        rep, description, n_int = _quantize_sequential(args, path, fdt, recipe)
    else:
        if (spec or "").endswith(":full"):
            raise SystemExit("a random-init full-size model does not fit in memory here: write it as a pack "
                             "(omega-qvla bench full does) and quantize that pack")
        src = load_fp_model(spec, args.seed)
        model = src.model
        with torch.no_grad():  # hold the float parts at their stored precision from the start
            for p in model.parameters():
                p.copy_(p.to(fdt).to(p.dtype))
        obs = _calibration(args, src.processor, model.config)
        quantize_model(model, recipe, obs, progress=not args.json, seed=args.seed)
        rep = model.quantization_report
        # the FP model's processor (and tokenizer file) and joint limits travel with the pack
        save_pack(model, args.out, model_info(model, src.size), recipe=rep["recipe_dict"],
                  calibration={**rep["calibration"], "source": args.calib, "batches": args.calib_batches,
                               "pipeline": "memory"},
                  float_dtype=fdt, **src.pack_extras())
        description = src.description
        n_int = sum(1 for m in model.modules() if isinstance(m, QuantLinear) and m.uses_integer_path())
    layers = rep["layers"]
    summary = {"out": args.out, "recipe": args.recipe, "model": description,
               "quantized_layers": len(layers), "integer_layers": n_int,
               "mean_weight_rel_mse": (sum(v["weight_rel_mse"] for v in layers.values()) / len(layers)
                                       if layers else 0.0),
               "worst_layers": sorted(((v["weight_rel_mse"], k) for k, v in layers.items()), reverse=True)[:5]}
    emit(summary, args.json, "\n".join([
        f"wrote {args.out}: {summary['quantized_layers']} layers quantized with {args.recipe} "
        f"({summary['integer_layers']} on the integer path)",
        f"mean weight relative MSE {summary['mean_weight_rel_mse']:.4f}; worst:",
        *[f"  {e:.4f}  {n}" for e, n in summary["worst_layers"]]]))
    return 0
