"""`omega-qvla eval`: closed-loop success per recipe and task in the simulator."""
from __future__ import annotations

import argparse
import json
import sys
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="closed-loop success rate per recipe (fixed seeds)")
    p.add_argument("--family", choices=["pi05", "gr00t"], default="pi05")
    p.add_argument("--size", choices=["tiny", "small"], default="small")
    p.add_argument("--checkpoint", required=True, help="FP weights (safetensors, our names)")
    p.add_argument("--recipes", default="fp16,omega_qvla")
    p.add_argument("--tasks", default="transfer_cube,insertion")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=100000, help="first evaluation seed (disjoint from training)")
    p.add_argument("--calib-episodes", type=int, default=2, help="expert episodes per task for calibration")
    p.add_argument("--calib-frames", type=int, default=8, help="observations per calibration episode")
    p.add_argument("--execute-horizon", type=int, default=25)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def calibration_observations(policy, tasks, episodes: int, frames: int, seed: int = 90000):
    """Observations from scripted-expert episodes (seeds disjoint from training and eval)."""
    import numpy as np

    from omega_qvla_ros.runtime.preprocess import RawObservation, to_model_observation
    from omega_qvla_ros.sim.aloha import INSTRUCTIONS, JOINT_NAMES, AlohaSim
    from omega_qvla_ros.sim.expert import EPISODE_STEPS, run_expert_episode

    cfg = policy.model.config
    picks = set(np.linspace(0, EPISODE_STEPS - 1, frames).astype(int).tolist())
    out = []
    for task in tasks:
        with AlohaSim(task, image_size=cfg.vision.image_size, cameras=tuple(policy.cameras)) as sim:
            for e in range(episodes):
                def grab(t, obs, a, _task=task):
                    if t in picks:
                        raw = RawObservation(obs.images, list(JOINT_NAMES), obs.qpos.astype(np.float64),
                                             INSTRUCTIONS[_task], t * 0.02)
                        out.append(to_model_observation(raw, policy.robot, policy.cameras, cfg.vision.image_size,
                                                        policy.tokenizer, cfg.max_tokens)[0])
                run_expert_episode(sim, seed + e, on_step=grab)
    return out


def run(args: argparse.Namespace) -> int:
    import copy

    from omega_qvla_ros.models import build_model
    from omega_qvla_ros.models.calibrate import quantize_model
    from omega_qvla_ros.models.importer import import_checkpoint
    from omega_qvla_ros.runtime.policy import Policy
    from omega_qvla_ros.runtime.robot import RobotSpec
    from omega_qvla_ros.sim.aloha import AlohaSim
    from omega_qvla_ros.sim.closed_loop import run_policy_episode, wilson_ci95

    tasks = [t for t in args.tasks.split(",") if t]
    fp = build_model(args.family, args.size).eval()
    import_checkpoint(fp, args.checkpoint)
    robot = RobotSpec()
    manifest = {"recipe": {"name": "fp16"}, "extra": {}}
    base = Policy(fp, manifest, fp.parameters().__next__().device, robot=robot)
    calib = calibration_observations(base, tasks, args.calib_episodes, args.calib_frames)
    result: dict = {}
    t0 = time.time()
    for recipe in [r for r in args.recipes.split(",") if r]:
        m = quantize_model(copy.deepcopy(fp), recipe, calib) if recipe != "fp16" else fp
        pol = Policy(m, {"recipe": {"name": recipe}, "extra": {}}, base.device, robot=robot)
        result[recipe] = {}
        for task in tasks:
            with AlohaSim(task, image_size=fp.config.vision.image_size, cameras=tuple(pol.cameras)) as sim:
                ok = sum(run_policy_episode(pol, sim, args.seed + i, args.execute_horizon)["success"]
                         for i in range(args.episodes))
            result[recipe][task] = {"episodes": args.episodes, "successes": ok,
                                    "success_rate": ok / args.episodes, "ci95": wilson_ci95(ok, args.episodes)}
            if not args.json:
                print(f"{recipe:22s} {task:14s} {ok}/{args.episodes}", file=sys.stderr)
    json.dump(result, sys.stdout, indent=2 if args.json else 1)
    print()
    print(f"eval took {time.time() - t0:.0f} s (calibration: {len(calib)} observations from "
          f"{args.calib_episodes} expert episodes per task)", file=sys.stderr)
    return 0
