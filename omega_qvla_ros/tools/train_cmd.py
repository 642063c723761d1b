"""`omega-qvla train`: flow-matching training of a VLA on recorded dataset shards."""
from __future__ import annotations

import argparse
import sys

from omega_qvla_ros.tools.cli import emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on dataset shards (resumable)")
    p.add_argument("--family", choices=["pi05", "gr00t"], default="pi05")
    p.add_argument("--size", choices=["tiny", "small"], default="small")
    p.add_argument("--data", nargs="+", required=True, help="shard files or folders holding *.safetensors")
    p.add_argument("--out", required=True, help="run folder (checkpoint/ inside)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--keep-normalisation", action="store_true",
                   help="when resuming, keep the checkpoint's joint normalisation instead of "
                        "recomputing it from --data (to fine-tune on added data)")
    p.add_argument("--init-vision-from", metavar="PACK",
                   help="start a fresh run with the vision tower of this trained pack (either family; "
                        "the towers of the small sizes match), as GR00T/Pi0.5 start from a pretrained VLM")
    p.add_argument("--init-from", metavar="PACK",
                   help="start a fresh run from all the weights of this FP pack (same family and size) and "
                        "keep its normalisation: fine-tuning a trained model on more data")
    p.add_argument("--freeze-vision", action="store_true",
                   help="do not train the vision tower (GR00T N1.5 keeps its VLM frozen)")
    p.add_argument("--cameras", help="comma-separated camera names the model reads, in order (default: the "
                   "robot's first cameras, cam_high for the small sizes); the data must hold them")
    p.add_argument("--quant-noise", type=float, default=0.0, metavar="P",
                   help="train a share P of the batches with int4 rounding of the weights and activations of "
                        "the layers W4A4 quantizes (straight-through; models/quant_noise.py), so the FP policy "
                        "tolerates its W4A4 pack's error (0 = off)")
    p.add_argument("--quant-noise-from", choices=("hadamard", "calibrated"), default=None,
                   help="the rounding --quant-noise trains with: a generic 64-wide Hadamard with per-sample "
                        "scales (quant_noise.py), or the default recipe's own calibrated W4A4 forward, "
                        "re-quantized every --quant-noise-refresh batches on training frames "
                        "(calibrated_noise.py); default hadamard")
    p.add_argument("--quant-noise-refresh", type=int, default=200, metavar="N",
                   help="with --quant-noise-from calibrated: quantize the current model again every N batches")
    p.add_argument("--quant-noise-frames", type=int, default=40, metavar="N",
                   help="with --quant-noise-from calibrated: training frames that calibrate each quantization")
    p.add_argument("--include-failed", action="store_true", help="also train on unsuccessful episodes")
    p.add_argument("--export", metavar="PACK", help="after training, write the FP model as an fp16 pack "
                   "(config, joint normalisation and training record in its manifest)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _checkpoint_normalizer(ck, data_norm):
    """The joint normalisation a checkpoint was trained with; the data's range must not
    reach far outside it (normalised values would leave the range the model has seen)."""
    import json

    import numpy as np

    from omega_qvla_ros.models.processor import Normalizer

    state_file = ck / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if "processor" in state:
        norm = Normalizer(**state["processor"]["state_norm"])
    elif "norm_lower" in (state.get("robot") or {}):
        norm = Normalizer("min_max", state["robot"]["norm_lower"], state["robot"]["norm_upper"], dtype="float64")
    else:
        raise SystemExit(f"--keep-normalisation: no checkpoint with a normalisation at {ck}")
    lo, hi = np.array(norm.low), np.array(norm.high)
    dlo, dhi = np.array(data_norm.low), np.array(data_norm.high)
    span = hi - lo
    out = np.maximum(lo - dlo, dhi - hi)
    if np.any(out > 0.25 * span):
        j = int(np.argmax(out / span))
        raise SystemExit(f"--keep-normalisation: joint {j} of the data spans [{dlo[j]:.3f}, {dhi[j]:.3f}], "
                         f"far outside the checkpoint's [{lo[j]:.3f}, {hi[j]:.3f}]")
    return norm


def _init_from_pack(model, pack: str, data_norm):
    """Load every weight of an FP pack (same family and size) into `model`; returns the
    pack's normalisation (the data's range must lie near it) and the pack path."""
    import torch

    from omega_qvla_ros.models.processor import ProcessorConfig, legacy_processor_config
    from omega_qvla_ros.quant.pack import PackError, load_state_checked, read_manifest, read_tensors, verify_files

    try:
        manifest = read_manifest(pack)
        verify_files(pack, manifest)
        if manifest["recipe"]["name"] != "fp16":
            raise SystemExit(f"--init-from {pack}: a quantized pack ({manifest['recipe']['name']}); give an FP pack")
        load_state_checked(model, {k: v.to(torch.float32) for k, v in read_tensors(pack, manifest).items()})
    except PackError as e:
        raise SystemExit(f"--init-from {pack}: {e}") from None
    extra = manifest.get("extra") or {}
    if manifest.get("processor"):
        norm = ProcessorConfig.from_dict(manifest["processor"]).state_norm
    elif "norm_lower" in (extra.get("robot") or {}):  # a pack from before processors were saved
        norm = legacy_processor_config(model.config, extra, {}).state_norm
    else:
        raise SystemExit(f"--init-from {pack}: the pack records no normalisation")
    import numpy as np

    lo, hi, dlo, dhi = map(np.array, (norm.low, norm.high, data_norm.low, data_norm.high))
    out = np.maximum(lo - dlo, dhi - hi)
    if np.any(out > 0.25 * (hi - lo)):
        j = int(np.argmax(out / (hi - lo)))
        raise SystemExit(f"--init-from: joint {j} of the data spans [{dlo[j]:.3f}, {dhi[j]:.3f}], far outside "
                         f"the pack's [{lo[j]:.3f}, {hi[j]:.3f}]")
    return norm, str(pack)


def _prepare_vision(model, args, fresh: bool) -> dict:
    """--init-vision-from (fresh runs only: a resumed run has its own tower) and
    --freeze-vision; returns what was done, for the training record."""
    from omega_qvla_ros.models.transfer import copy_vision_tower, freeze_vision_tower

    done: dict = {}
    if args.init_vision_from:
        if not fresh:
            print("--init-vision-from ignored: resuming from a checkpoint", file=sys.stderr)
        else:
            from omega_qvla_ros.quant.pack import read_manifest, read_tensors, verify_files

            manifest = read_manifest(args.init_vision_from)
            verify_files(args.init_vision_from, manifest)
            if manifest["recipe"]["name"] != "fp16":
                raise SystemExit(f"--init-vision-from {args.init_vision_from}: a quantized pack "
                                 f"({manifest['recipe']['name']}); give an FP pack")
            try:
                names = copy_vision_tower(model, read_tensors(args.init_vision_from, manifest))
            except ValueError as e:
                raise SystemExit(f"--init-vision-from {args.init_vision_from}: {e}") from None
            done["init_from"] = str(args.init_vision_from)
            done["init_tensors"] = len(names)
    if args.freeze_vision:
        done["frozen_parameters"] = freeze_vision_tower(model)
    return done


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch

    from omega_qvla_ros.models import build_model
    from omega_qvla_ros.models.processor import Processor, ProcessorConfig, data_range_normalizer
    from omega_qvla_ros.models.training import FrameSampler, TrainConfig, train
    from omega_qvla_ros.runtime.robot import RobotSpec
    from omega_qvla_ros.sim.record import EpisodeDataset

    if args.threads:
        torch.set_num_threads(args.threads)
    shards = []
    for d in args.data:
        p = Path(d)
        shards += sorted(p.rglob("*.safetensors")) if p.is_dir() else [p]
    if not shards:
        print(f"no dataset shards under {args.data}", file=sys.stderr)
        return 2
    ds = EpisodeDataset(shards, only_success=not args.include_failed)
    model = build_model(args.family, args.size, seed=args.seed)
    # normalise state and actions over the range the joints take in the data (both together)
    robot = RobotSpec()
    norm = data_range_normalizer(np.concatenate([ds.data["state"], ds.data["actions"]]), robot.lower, robot.upper)
    fresh = args.no_resume or not (Path(args.out) / "checkpoint" / "state.json").exists()
    init_from = None
    if args.init_from and fresh:
        norm, init_from = _init_from_pack(model, args.init_from, norm)
    elif args.keep_normalisation or args.init_from:
        norm = _checkpoint_normalizer(Path(args.out) / "checkpoint", norm)
    cams = [c for c in args.cameras.split(",") if c] if args.cameras else robot.cameras[: model.config.cameras]
    if len(cams) != model.config.cameras:
        raise SystemExit(f"--cameras: the {args.family} {args.size} model reads {model.config.cameras} camera(s), "
                         f"got {len(cams)} ({','.join(cams)})")
    cfg = model.config
    proc = ProcessorConfig(cameras=cams, joint_names=list(robot.joint_names), image_size=cfg.vision.image_size,
                           max_tokens=cfg.max_tokens, state_norm=norm, action_norm=norm, state_clip=1.5)
    vision = _prepare_vision(model, args, fresh)
    if init_from:
        vision["init_from_pack"] = init_from
    sampler = FrameSampler(ds, Processor(proc, action_width=cfg.action_dim), cfg.action_horizon, seed=args.seed)
    noise = None
    if not args.quant_noise and args.quant_noise_from:
        raise SystemExit("--quant-noise-from needs --quant-noise P (the share of batches with the rounding)")
    args.quant_noise_from = args.quant_noise_from or "hadamard"
    if args.quant_noise:
        try:
            if args.quant_noise_from == "calibrated":
                from omega_qvla_ros.models.calibrated_noise import CalibratedQuantNoise

                if args.quant_noise_frames < 1:
                    raise ValueError(f"--quant-noise-frames must be >= 1, got {args.quant_noise_frames}")
                # frames drawn by a sampler of their own: the training batches stay those of the seed
                calib_sampler = FrameSampler(ds, sampler.proc, cfg.action_horizon, seed=args.seed + 7919)
                calib = [calib_sampler.batch(min(4, args.quant_noise_frames - i))[0]
                         for i in range(0, args.quant_noise_frames, 4)]
                noise = CalibratedQuantNoise(model, calib, probability=args.quant_noise, seed=args.seed,
                                             refresh_every=args.quant_noise_refresh)
            else:
                from omega_qvla_ros.models.quant_noise import QuantNoise

                noise = QuantNoise(model, probability=args.quant_noise, seed=args.seed)
        except ValueError as e:
            raise SystemExit(f"--quant-noise: {e}") from None
    tc = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                     checkpoint_every=args.checkpoint_every)
    seeds: dict[str, list[int]] = {}
    for e in ds.episodes:
        seeds.setdefault(e["task"], []).append(e["seed"])
    data_info = {"shards": [str(s) for s in shards], "episodes": len(ds.episodes), "frames": len(ds),
                 "image_frames": int(len(ds.image_rows)), "tasks": sorted(seeds),
                 "seeds": {t: [min(v), max(v)] for t, v in seeds.items()}}
    if vision:
        data_info["vision"] = vision
    run_info = {"processor": proc.to_dict(), "robot": robot.to_dict(), "data": data_info,
                "command": " ".join(sys.argv)}
    if noise is not None:
        run_info["quant_noise"] = {"probability": args.quant_noise, "layers": len(noise.targets),
                                   "source": args.quant_noise_from}
        if args.quant_noise_from == "calibrated":
            run_info["quant_noise"] |= {"refresh_every": args.quant_noise_refresh,
                                        "calibration_frames": args.quant_noise_frames}
    state = train(model, sampler, args.out, tc, resume=not args.no_resume, progress=not args.json,
                  info=run_info, quant_noise=noise)
    summary = {"out": args.out, "step": state["step"], "frames": len(ds), "episodes": len(ds.episodes),
               "final_loss": state["losses"][-1][1] if state["losses"] else None,
               "seconds": state.get("seconds"), "checkpoint": str(Path(args.out) / "checkpoint")}
    if args.export:
        from omega_qvla_ros.models import model_info
        from omega_qvla_ros.quant.pack import save_pack
        from omega_qvla_ros.quant.recipes import RECIPES

        training = {"steps": state["step"], "batch": args.batch, "lr": args.lr, "seed": args.seed,
                    "seconds": state.get("seconds"), "losses": state["losses"], "data": data_info,
                    "commands": state.get("commands", [])}
        if "quant_noise" in state:
            training["quant_noise"] = {**state["quant_noise"], "steps": state.get("quant_noise_steps", 0)}
        save_pack(model, args.export, model_info(model, args.size), recipe=RECIPES["fp16"].to_dict(),
                  processor=proc.to_dict(), extra={"robot": robot.to_dict(), "cameras": cams, "training": training},
                  float_dtype=torch.float16)
        summary["export"] = args.export
    emit(summary, args.json, f"trained to step {summary['step']} on {summary['frames']} frames "
         f"({summary['episodes']} episodes); loss {summary['final_loss']}; → {summary['checkpoint']}")
    return 0
