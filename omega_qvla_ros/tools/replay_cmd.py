"""`omega-qvla replay BAG`: compare recipes on recorded observations.

Offline (deterministic, fixed noise per frame): every recipe's action chunks vs FP's,
divergence from the recorded teleop commands, chunk-boundary jumps, jerk and inference
latency. Live (`--live`): the real node, in shadow mode over loopback DDS, loaded with
`--pack`, fed the bag's messages at their recorded pace; its divergence, latency and
status are collected. Writes report.json and report.md (and PNG joint traces when
matplotlib is installed)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from omega_qvla_ros.tools.cli import emit
from omega_qvla_ros.tools.model_source import add_model_args, load_fp_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="replay a rosbag2 through recipes (offline) and the node (--live)")
    p.add_argument("bag")
    add_model_args(p)
    p.add_argument("--compare", default="fp16,omega_qvla,rtn")
    p.add_argument("--every", type=int, default=10, help="use every N-th joint-state frame offline")
    p.add_argument("--calib-batches", type=int, default=4)
    p.add_argument("--execute-horizon", type=int, default=25)
    p.add_argument("--live", action="store_true", help="also replay through the running node")
    p.add_argument("--pack", help="W4A4 pack for the live node")
    p.add_argument("--rate", type=float, default=1.0, help="live replay speed factor")
    p.add_argument("--report", required=True, help="output folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def offline(args, frames, src) -> dict:
    import copy

    import numpy as np
    import torch

    from omega_qvla_ros.models.calibrate import quantize_model
    from omega_qvla_ros.tools.model_cmds import bag_observations

    fp, robot = src.model, src.robot
    calib = bag_observations(args.bag, src.processor, args.calib_batches, offset=3)
    cfg = fp.config
    H = min(args.execute_horizon, cfg.action_horizon)
    noises = [torch.randn(1, cfg.action_horizon, cfg.action_dim, generator=torch.Generator().manual_seed(i))
              for i in range(len(frames))]
    chunks, lat = {}, {}
    for recipe in [r for r in args.compare.split(",") if r]:
        m = fp if recipe == "fp16" else quantize_model(copy.deepcopy(fp), recipe, calib)
        pol = src.policy(m, recipe)
        out, ts = [], []
        for f, n in zip(frames, noises):
            c = pol.infer(f.observation, noise=n)
            out.append(c.positions[:H])
            ts.append(c.inference_s)
        chunks[recipe], lat[recipe] = np.stack(out), np.array(ts)
    teleop = np.stack([f.teleop if f.teleop is not None else np.full(robot.dof, np.nan) for f in frames])
    ref = chunks.get("fp16")
    res = {}
    for r, ch in chunks.items():
        first = ch[:, 0]
        d = np.abs(first - teleop)
        jumps = [np.abs(ch[k, args.every] - ch[k + 1, 0]).max() for k in range(len(ch) - 1) if args.every < H]
        res[r] = {
            "action_rel_mse_vs_fp": (float(((ch - ref) ** 2).mean() / (ref ** 2).mean()) if ref is not None else None),
            "teleop_divergence_mean_rad": float(np.nanmean(d)),
            "teleop_divergence_max_rad": float(np.nanmax(d)),
            "chunk_boundary_jump_mean_rad": float(np.mean(jumps)) if jumps else None,
            "jerk_mean": float(np.abs(np.diff(ch, n=3, axis=1)).mean()),
            "inference_ms_p50": float(1e3 * np.percentile(lat[r], 50)),
            "inference_ms_p99": float(1e3 * np.percentile(lat[r], 99)),
        }
    return {"frames": len(frames), "every": args.every, "recipes": res, "_chunks": chunks, "_teleop": teleop}


def _msg_class(msgtype: str):
    """'sensor_msgs/msg/Image' → the rclpy message class."""
    import importlib

    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def live(args) -> dict:
    """Start the real node as its own process (shadow mode, dry run, loopback DDS), feed it
    the bag's messages at their recorded pace from this process, and collect /diagnostics."""
    import os
    import signal
    import subprocess

    import numpy as np
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader
    from std_msgs.msg import String

    from omega_qvla_ros.ros.dds import apply_localhost_dds, is_localhost_dds
    from omega_qvla_ros.ros.spinner import BackgroundSpin

    if not is_localhost_dds():
        apply_localhost_dds()
    if not args.pack:
        raise SystemExit("--live needs --pack (the W4A4 pack the node loads)")
    with AnyReader([Path(args.bag)]) as r:
        cams = sorted({c.topic for c in r.connections if "Image" in c.msgtype})
        msgs = [(ts, c.topic, c.msgtype, bytes(raw)) for c, ts, raw in r.messages() if c.topic != "/clock"]
    names = [t.strip("/").split("/")[0] for t in cams]
    cmd = [sys.executable, "-m", "omega_qvla_ros.ros.policy_node", "--ros-args",
           "-p", f"pack_path:={args.pack}", "-p", "mode:=shadow", "-p", "dry_run:=true",
           "-p", f"camera_topics:={json.dumps(cams)}", "-p", f"camera_names:={json.dumps(names)}",
           "-p", "inference_deadline_s:=5.0", "-p", "diagnostics_rate_hz:=10.0"]
    # passive OpenMP waits: the node shares 2 cores with this process and its own threads
    node = subprocess.Popen(cmd, env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    io = rclpy.create_node("omega_qvla_replay", context=ctx)
    pubs = {}
    for _, topic, mt, _ in msgs:
        if topic not in pubs:
            qos = qos_profile_sensor_data if "Image" in mt else (latched if topic == "/instruction" else 10)
            pubs[topic] = (io.create_publisher(_msg_class(mt), topic, qos), _msg_class(mt))
    diags, status = [], []
    io.create_subscription(DiagnosticArray, "/diagnostics",
                           lambda m: diags.append({kv.key: kv.value for kv in m.status[0].values}), 10)
    io.create_subscription(String, "/omega_qvla_policy/status", lambda m: status.append(json.loads(m.data)), latched)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(io)
    spin = BackgroundSpin(ex).start()
    try:
        t0 = time.monotonic()
        while not status and time.monotonic() - t0 < 60:
            if node.poll() is not None:
                raise RuntimeError(f"the node exited:\n{node.stdout.read()[-3000:]}")
            time.sleep(0.1)
        if not status:
            raise RuntimeError("the node did not report a status within 60 s")
        t_wall0, t_bag0 = time.monotonic(), msgs[0][0]
        for ts, topic, mt, raw in msgs:
            delay = (ts - t_bag0) * 1e-9 / args.rate - (time.monotonic() - t_wall0)
            if delay > 0:
                time.sleep(delay)
            pub, cls = pubs[topic]
            pub.publish(deserialize_message(raw, cls))
        time.sleep(1.5)
    finally:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.kill()
        spin.stop()
        io.destroy_node()
        rclpy.shutdown(context=ctx)
    # one sample per chunk: (inference ms, observation → chunk ready ms)
    per_chunk, last_n = [], 0
    for d in diags:
        n = int(d.get("chunks", 0))
        if n > last_n:
            per_chunk.append((float(d["inference_ms"]), float(d["observation_age_ms"])))
            last_n = n
    div = [float(d["divergence_mean"]) for d in diags if float(d.get("divergence_mean", 0)) > 0]
    lat = np.array([o for _, o in per_chunk]) if per_chunk else np.array([np.nan])
    return {"messages": len(msgs), "seconds": (msgs[-1][0] - msgs[0][0]) * 1e-9 / args.rate,
            "chunks": last_n, "inference_ms_mean": float(np.mean([i for i, _ in per_chunk])) if per_chunk else None,
            "observation_to_chunk_ms_p50": float(np.percentile(lat, 50)),
            "observation_to_chunk_ms_p99": float(np.percentile(lat, 99)),
            "shadow_divergence_mean_rad": float(np.mean(div)) if div else None,
            "final_status": status[-1] if status else None,
            "latency_note": "shadow mode, dry run: latency is observation receipt → chunk ready, "
                            "as reported by the node's diagnostics (one sample per chunk)"}


def _plots(report: Path, off: dict) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "PNG plots skipped (matplotlib not installed)"
    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for ax, j in zip(axes, (0, 7)):
        ax.plot(off["_teleop"][:, j], "k-", label="teleop")
        for r, ch in off["_chunks"].items():
            ax.plot(ch[:, 0, j], label=r)
        ax.set_ylabel(f"joint {j} (rad)")
    axes[0].legend()
    fig.savefig(report / "joint_traces.png", dpi=80)
    return "joint_traces.png"


def run(args: argparse.Namespace) -> int:
    from omega_qvla_ros.models.memory import memory_report
    from omega_qvla_ros.sim.bag_read import read_frames

    t0 = time.time()
    if args.live and not args.pack:
        raise SystemExit("omega-qvla replay: --live needs --pack (the W4A4 pack the node loads)")
    src = load_fp_model(args.model, args.seed)
    frames = read_frames(args.bag, src.cameras, every=args.every)  # BagError: one line, nothing written
    if args.live:
        from omega_qvla_ros.quant.pack import read_manifest, verify_files

        verify_files(args.pack, read_manifest(args.pack))  # a bad pack fails here, not in the node
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    off = offline(args, frames, src)
    plots = _plots(report, off)
    result = {"bag": args.bag, "model": src.description,
              "offline": {k: v for k, v in off.items() if not k.startswith("_")}, "plots": plots}
    mem = memory_report(src.description["family"], None, "omega_qvla", config=src.model.config)["scopes"]["whole_model"]
    result["memory_whole_model"] = {"fp16_mib": mem["fp16_bytes"] / 2**20, "w4a4_mib": mem["w4a4_bytes"] / 2**20,
                                    "reduction": mem["reduction"]}
    if args.live:
        result["live"] = live(args)
    result["seconds"] = time.time() - t0
    (report / "report.json").write_text(json.dumps(result, indent=1))
    md = [f"# Replay of {args.bag}", "", f"model: {result['model']}", "",
          "| recipe | action rel-MSE vs FP | teleop divergence mean / max (rad) | chunk jump (rad) | "
          "inference p50 / p99 (ms) |", "|---|---|---|---|---|"]
    for r, v in off["recipes"].items():
        md.append(f"| {r} | {v['action_rel_mse_vs_fp']:.4f} | {v['teleop_divergence_mean_rad']:.3f} / "
                  f"{v['teleop_divergence_max_rad']:.3f} | {v['chunk_boundary_jump_mean_rad'] or 0:.3f} | "
                  f"{v['inference_ms_p50']:.0f} / {v['inference_ms_p99']:.0f} |")
    m = result["memory_whole_model"]
    md += ["", f"static memory (whole model): FP16 {m['fp16_mib']:.1f} MiB → W4A4 {m['w4a4_mib']:.1f} MiB "
               f"({100 * m['reduction']:.1f}% less)"]
    if "live" in result:
        lv = result["live"]
        div = lv["shadow_divergence_mean_rad"]
        md += ["", f"live node (own process, shadow mode, dry run, loopback DDS): {lv['chunks']} chunks; "
                   f"observation → chunk p50 {lv['observation_to_chunk_ms_p50']:.0f} ms, p99 "
                   f"{lv['observation_to_chunk_ms_p99']:.0f} ms; policy-vs-teleop divergence "
                   + ("n/a" if div is None else f"{div:.3f} rad (mean |Δq|)")]
    (report / "report.md").write_text("\n".join(md) + "\n")
    emit(result, args.json, "\n".join(md) + f"\n\nfull report: {report / 'report.md'} ({result['seconds']:.0f} s)")
    return 0
