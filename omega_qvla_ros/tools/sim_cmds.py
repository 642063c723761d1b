"""`omega-qvla sim record | expert-eval`: scripted episodes, bags and dataset shards."""
from __future__ import annotations

import argparse
import time

from omega_qvla_ros.tools.cli import emit

TASK_CHOICES = ["transfer_cube", "insertion"]


def register(sub: argparse._SubParsersAction) -> None:
    sim = sub.add_parser("sim", help="simulator episodes with the scripted expert")
    ssub = sim.add_subparsers(dest="sim_command", metavar="SIM_COMMAND")

    p = ssub.add_parser("record", help="record expert episodes as a rosbag2 and dataset shards")
    p.add_argument("--task", default="transfer_cube", help="task name(s), comma separated")
    p.add_argument("--episodes", type=int, default=1, help="episodes per task")
    p.add_argument("--seed", type=int, default=0, help="first seed (episode i uses seed + i)")
    p.add_argument("--out", required=True, help="output directory (bag/ and dataset/ inside)")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--cameras", default="cam_high,cam_left_wrist,cam_right_wrist")
    p.add_argument("--image-every", type=int, default=1,
                   help="render cameras on every N-th frame only (joints/actions keep every frame)")
    _add_noise_args(p)
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    p.add_argument("--compress", action="store_true", help="JPEG CompressedImage topics")
    p.add_argument("--no-bag", action="store_true")
    p.add_argument("--no-dataset", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_record)

    p = ssub.add_parser("expert-eval", help="success rate of the scripted expert (render off)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", default="transfer_cube,insertion")
    _add_noise_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_expert_eval)
    sim.set_defaults(func=lambda a: (sim.print_help(), 1)[1])


def _add_noise_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--action-noise", type=float, default=0.0, metavar="RAD",
                   help="perturb the executed arm joints (slow noise of this std, rad) while the "
                        "expert's commands stay the labels (DART-style; 0 = off)")
    p.add_argument("--noise-tau", type=float, default=0.5, help="correlation time (s) of that noise")


def _tasks(arg: str) -> list[str]:
    tasks = [t.strip() for t in arg.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASK_CHOICES]
    if bad:
        raise SystemExit(f"unknown task(s) {bad}; choose from {TASK_CHOICES}")
    return tasks


def run_record(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from omega_qvla_ros.sim.aloha import AlohaSim
    from omega_qvla_ros.sim.record import BagRecorder, record_episode, write_shard

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cams = tuple(c for c in args.cameras.split(",") if c)
    episodes, t_start = [], time.time()
    bag = None
    if not args.no_bag:
        if (out / "bag").exists():
            raise SystemExit(f"{out / 'bag'} exists; choose another --out")
        bag = BagRecorder(out / "bag", storage=args.storage, compress_images=args.compress).__enter__()
    try:
        for task in _tasks(args.task):
            with AlohaSim(task, image_size=args.image_size, cameras=cams) as sim:
                for i in tqdm(range(args.episodes), desc=f"record {task}", disable=args.json):
                    ep = record_episode(sim, args.seed + i, image_every=args.image_every,
                                        action_noise=args.action_noise, noise_tau=args.noise_tau)
                    if bag is not None:
                        bag.write_episode(ep)
                    episodes.append(ep)
    finally:
        if bag is not None:
            bag.__exit__(None, None, None)
    if not args.no_dataset:
        (out / "dataset").mkdir(exist_ok=True)
        write_shard(episodes, out / "dataset" / "shard_000.safetensors")
    summary = {"out": str(out), "episodes": len(episodes),
               "successes": sum(e.success for e in episodes),
               "frames": sum(e.length for e in episodes),
               "seconds": time.time() - t_start,
               "bag_bytes": sum(f.stat().st_size for f in (out / "bag").rglob("*") if f.is_file())
               if bag is not None else 0,
               "dataset_bytes": sum(f.stat().st_size for f in (out / "dataset").rglob("*") if f.is_file())
               if not args.no_dataset else 0}
    emit(summary, args.json, f"recorded {summary['episodes']} episodes ({summary['successes']} successful, "
         f"{summary['frames']} frames) in {summary['seconds']:.1f} s → {out}")
    return 0


def run_expert_eval(args: argparse.Namespace) -> int:
    from omega_qvla_ros.sim.aloha import AlohaSim
    from omega_qvla_ros.sim.expert import run_expert_episode

    result = {}
    for task in _tasks(args.task):
        t0 = time.time()
        with AlohaSim(task, render=False) as sim:
            ok = sum(run_expert_episode(sim, args.seed + i, action_noise=args.action_noise,
                                        noise_tau=args.noise_tau) for i in range(args.episodes))
        result[task] = {"episodes": args.episodes, "successes": ok, "success_rate": ok / args.episodes,
                        "action_noise": args.action_noise,
                        "seconds_per_episode": (time.time() - t0) / args.episodes}
    emit(result, args.json, "\n".join(
        f"{t}: {r['successes']}/{r['episodes']} ({100 * r['success_rate']:.0f}%), "
        f"{r['seconds_per_episode']:.2f} s/episode" for t, r in result.items()))
    return 0
