"""`omega-qvla eval`: closed-loop success per recipe and task in the simulator.

Every recipe is calibrated on the same observations from scripted-expert episodes
(seeds 90000+, disjoint from training seeds 0… and evaluation seeds 100000+) and runs
the same evaluation seeds with the same per-episode noise, so recipes differ only by
quantization. Episodes are split among parallel worker processes (`--workers`: worker k of
n runs episodes k, k+n, …); each worker rebuilds the quantized models itself
(deterministic), nothing is pickled.

JSON: {"<recipe>": {"<task>": {"episodes", "successes", "success_rate", "ci95",
"max_rewards"}}, "_meta": {command, model, seeds, calibration, seconds}}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from omega_qvla_ros.tools.cli import emit
from omega_qvla_ros.tools.model_source import add_family_arg, add_model_args, model_spec, repo_relative

EVAL_SEED = 100000
CALIB_SEED = 90000
CALIB_SOURCES = ("expert", "policy")


def add_schedule_args(p: argparse.ArgumentParser) -> None:
    """The controller's scheduling flags (eval, bench sensitivity, bench scripts)."""
    p.add_argument("--replan-every", type=int, default=0,
                   help="infer a new chunk every N steps (0: when the executed part runs out); "
                        "overlapping chunks are merged by --blend")
    p.add_argument("--blend", choices=["none", "average", "crossfade"], default="none")
    p.add_argument("--blend-new-weight", type=float, default=0.7)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="closed-loop success rate per recipe (fixed seeds)")
    add_model_args(p)
    add_family_arg(p)
    p.add_argument("--recipes", default="fp16,omega_qvla")
    p.add_argument("--tasks", default="transfer_cube,insertion")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--first-seed", type=int, default=EVAL_SEED,
                   help="first evaluation seed (disjoint from training)")
    # 4 × 10 observations: over six calibration draws each, 40 observations handed over in
    # 21.3 of 50 on average and 10 (2 × 5, the default until 2026-12-04) in 12.2; 80 no more
    # (22.5) (bench/results/calibration_draws_pi05_cam_table.json)
    p.add_argument("--calib-episodes", type=int, default=4, help="expert episodes per task for calibration")
    p.add_argument("--calib-frames", type=int, default=10, help="observations per calibration episode")
    p.add_argument("--calib-seed", type=int, default=CALIB_SEED,
                   help="first calibration episode's seed (another draw of the calibration set; keep it "
                        "clear of the evaluation seeds)")
    p.add_argument("--calib-source", choices=CALIB_SOURCES, default="expert",
                   help="calibration episodes: the scripted expert's, or the FP policy's own closed-loop "
                        "rollouts under the evaluation's controller (the states it visits, observations at its "
                        "inference times)")
    p.add_argument("--execute-horizon", type=int, default=25)
    add_schedule_args(p)
    p.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                   help="simulated inference latency: a chunk reaches the controller this long after its "
                        "observation while the arm keeps moving (0: synchronous, the simulator waits)")
    p.add_argument("--noise-scale", type=float, default=1.0,
                   help="scale of the flow's starting noise (0: start from the prior's mean)")
    p.add_argument("--max-inflight", type=int, default=1, help="inference requests in flight at once")
    p.add_argument("--workers", type=int, default=1, help="worker processes (episodes are split among them)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def command_line(args: argparse.Namespace) -> str | None:
    """The command as typed, with the calibration size spelled out where the defaults gave
    it (defaults change; a recorded command must still say what ran)."""
    if not (sys.argv and "omega" in sys.argv[0]):
        return None
    argv = sys.argv[1:]
    for flag, value in (("--calib-episodes", args.calib_episodes), ("--calib-frames", args.calib_frames)):
        if not any(a == flag or a.startswith(flag + "=") for a in argv):
            argv = [*argv, flag, str(value)]
    return "omega-qvla " + " ".join(argv)


def calibration_observations(policy, tasks, episodes: int, frames: int, seed: int = CALIB_SEED,
                             source: str = "expert", execute_horizon: int = 25, **controller):
    """`frames` observations per episode from `episodes` episodes per task (seeds disjoint
    from training and eval): the scripted expert's, or with source="policy" the FP
    policy's own rollouts (evenly spaced among the observations it inferred on) under
    `controller` (run_policy_episode's scheduling: replan_every, blend, new_weight)."""
    if source == "policy":
        from omega_qvla_ros.sim.closed_loop import on_policy_observations

        out = []
        for task in tasks:
            for ep in on_policy_observations(policy, task, [seed + e for e in range(episodes)], execute_horizon,
                                             **controller):
                idx = sorted({round(i * (len(ep) - 1) / max(1, frames - 1)) for i in range(frames)})
                out += [policy.processor.observation(ep[i][0])[0] for i in idx]
        return out
    if source != "expert":
        raise ValueError(f"unknown calibration source {source!r}; choose from {CALIB_SOURCES}")
    from omega_qvla_ros.runtime.preprocess import RawObservation
    from omega_qvla_ros.sim.aloha import INSTRUCTIONS, JOINT_NAMES, AlohaSim
    from omega_qvla_ros.sim.expert import EPISODE_STEPS, run_expert_episode

    cfg = policy.model.config
    every = max(1, EPISODE_STEPS // frames)  # frames 0, every, 2·every, … (only those rendered)
    picks = set(range(0, every * frames, every))
    out = []
    for task in tasks:
        with AlohaSim(task, image_size=cfg.vision.image_size, cameras=tuple(policy.cameras)) as sim:
            for e in range(episodes):
                def grab(t, obs, a, _task=task):
                    if t in picks:
                        raw = RawObservation(obs.images, list(JOINT_NAMES), obs.qpos.astype("float64"),
                                             INSTRUCTIONS[_task], t * 0.02)
                        out.append(policy.processor.observation(raw)[0])
                run_expert_episode(sim, seed + e, on_step=grab, render_every=every)
    return out


def evaluate(model_spec: str | None, seed: int, recipes: list[str], tasks: list[str], calib_tasks: list[str],
             episodes: int, first_seed: int, calib_episodes: int, calib_frames: int, execute_horizon: int,
             replan_every: int = 0, blend: str = "none", blend_new_weight: float = 0.7,
             latency: float = 0.0, max_inflight: int = 1, threads: int = 0, log: bool = True,
             calib_source: str = "expert", shard: tuple[int, int] = (0, 1), noise_scale: float = 1.0,
             calib_seed: int = CALIB_SEED) -> dict:
    """Each episode's outcome per recipe and task, keyed by its episode index (calibration
    always from `calib_tasks`). `shard` (k, n) runs episodes k, k+n, … only: workers split the
    episodes, so one task's 50 episodes spread over every core."""
    import copy

    import torch

    from omega_qvla_ros.models.calibrate import quantize_model
    from omega_qvla_ros.sim.aloha import AlohaSim
    from omega_qvla_ros.sim.closed_loop import run_policy_episode
    from omega_qvla_ros.tools.model_source import load_fp_model

    if threads:
        torch.set_num_threads(threads)
    src = load_fp_model(model_spec, seed)
    fp = src.model
    base = src.policy()
    calib = calibration_observations(base, calib_tasks, calib_episodes, calib_frames, seed=calib_seed,
                                     source=calib_source,
                                     execute_horizon=min(execute_horizon, fp.config.action_horizon),
                                     replan_every=replan_every, blend=blend, new_weight=blend_new_weight)
    result: dict = {}
    for recipe in recipes:
        m = fp if recipe == "fp16" else quantize_model(copy.deepcopy(fp), recipe, calib, seed=seed)
        pol = src.policy(m, recipe)
        result[recipe] = {}
        for task in tasks:
            with AlohaSim(task, image_size=fp.config.vision.image_size, cameras=tuple(pol.cameras)) as sim:
                runs = {i: run_policy_episode(pol, sim, first_seed + i, execute_horizon, replan_every=replan_every,
                                              blend=blend, new_weight=blend_new_weight, latency_s=latency,
                                              max_inflight=max_inflight, noise_scale=noise_scale)
                        for i in range(shard[0], episodes, shard[1])}
            result[recipe][task] = runs
            if log:
                print(f"{recipe:22s} {task:14s} {sum(r['success'] for r in runs.values())}/{len(runs)}"
                      + (f" (episodes {shard[0]}::{shard[1]})" if shard[1] > 1 else ""), file=sys.stderr, flush=True)
    return {"result": result, "calibration_observations": len(calib), "family": src.description["family"],
            "action_horizon": fp.config.action_horizon}


def _worker(kw: dict) -> dict:
    return evaluate(**kw)


def run(args: argparse.Namespace) -> int:
    from omega_qvla_ros.sim.closed_loop import summarize

    tasks = [t for t in args.tasks.split(",") if t]
    recipes = [r for r in args.recipes.split(",") if r]
    t0 = time.time()
    if args.calib_seed < args.first_seed + args.episodes and args.first_seed < args.calib_seed + args.calib_episodes:
        raise SystemExit(f"--calib-seed {args.calib_seed}: calibration episodes {args.calib_seed}-"
                         f"{args.calib_seed + args.calib_episodes - 1} overlap the evaluation seeds "
                         f"{args.first_seed}-{args.first_seed + args.episodes - 1}")
    spec = model_spec(args.model, args.family)
    common = dict(model_spec=spec, seed=args.seed, recipes=recipes, calib_tasks=tasks,
                  episodes=args.episodes, first_seed=args.first_seed, calib_episodes=args.calib_episodes,
                  calib_frames=args.calib_frames, execute_horizon=args.execute_horizon,
                  replan_every=args.replan_every, blend=args.blend, blend_new_weight=args.blend_new_weight,
                  latency=args.latency, max_inflight=args.max_inflight, calib_source=args.calib_source,
                  noise_scale=args.noise_scale, calib_seed=args.calib_seed)
    workers = max(1, min(args.workers, args.episodes))
    if workers == 1:
        parts = [evaluate(tasks=tasks, **common)]
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_worker, [dict(tasks=tasks, threads=1, shard=(k, workers), **common)
                                       for k in range(workers)])
    result: dict = {r: {} for r in recipes}
    for r in recipes:
        for t in tasks:
            runs = {i: run for part in parts for i, run in part["result"][r][t].items()}
            result[r][t] = summarize([runs[i] for i in sorted(runs)])
    result["_meta"] = {
        "command": command_line(args),
        "model": repo_relative(spec) if spec else "shipped default", "family": parts[0]["family"], "tasks": tasks,
        "eval_seeds": [args.first_seed, args.first_seed + args.episodes - 1],
        "calibration": {"observations": parts[0]["calibration_observations"], "episodes_per_task": args.calib_episodes,
                        "frames_per_episode": args.calib_frames, "source": args.calib_source,
                        "seeds": [args.calib_seed, args.calib_seed + args.calib_episodes - 1]},
        # a chunk shorter than --execute-horizon is executed whole
        "execute_horizon": min(args.execute_horizon, parts[0]["action_horizon"]),
        "replan_every": min(args.replan_every or args.execute_horizon, parts[0]["action_horizon"]),
        "blend": args.blend, "latency_s": args.latency, "max_inflight": args.max_inflight,
        "noise_scale": args.noise_scale,
        "seconds": time.time() - t0}
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"{'recipe':22s} " + "  ".join(f"{t:>22s}" for t in tasks)]
    for r in recipes:
        lines.append(f"{r:22s} " + "  ".join(
            f"{result[r][t]['successes']:3d}/{result[r][t]['episodes']:<3d} "
            f"[{100 * result[r][t]['ci95'][0]:3.0f}–{100 * result[r][t]['ci95'][1]:3.0f}%]".rjust(22)
            for t in tasks))
    lines.append(f"({result['_meta']['seconds']:.0f} s; calibration {parts[0]['calibration_observations']} "
                 f"observations from {args.calib_episodes} {args.calib_source} episodes per task)")
    emit(result, args.json, "\n".join(lines))
    return 0
