"""The node's inference time where it runs: the node's own executable in its own process,
as on a robot, fed by this script (the ALOHA cameras as rgb8 at 30 Hz, joints at 50 Hz,
an instruction; loopback DDS), with its policy in a process of its own
(`inference_process: true`, the default) and on a thread of the node's (`false`), the two
taking turns over the rounds; and, for reference, the same pack's chunk in a plain
process with no node (this one, before the rounds). One run's ratios; the machine is
shared, so compare within it.

    .venv/bin/python bench/node_inference.py [--pack models/pi05_small_aloha_w4a4] [--seconds 15] \\
        [--rounds 2] [--width 640 --height 480] [--out bench/results/node_inference.json]

Per variant: the node's inference time per chunk (/diagnostics `inference_ms`, one
sample per chunk: median, p90), the observation age when the chunk reached the
controller (`observation_age_ms`), chunks per second.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"own process": "true", "node thread": "false"}


def plain_chunk_ms(pack: str, calls: int = 8) -> float:
    """Median time of Policy.infer in this process, nothing else running (after 2 warm-ups)."""
    from omega_qvla_ros.runtime.policy import Policy

    pol = Policy.from_pack(pack, device="cpu")
    raw = pol.synthetic_observation("transfer the cube")
    times = []
    for i in range(calls + 2):
        chunk = pol.infer(raw)
        if i >= 2:
            times.append(1e3 * chunk.inference_s)
    return float(np.median(times))


def node_run(pack: str, inference_process: str, seconds: float, width: int, height: int) -> dict:
    """Start the node's executable, feed it, and record its per-chunk diagnostics."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from omega_qvla_ros.ros.rig import HOME, LATCHED
    from omega_qvla_ros.runtime.robot import ALOHA_CAMERAS, ALOHA_JOINTS

    node_proc = subprocess.Popen(
        [sys.executable, "-m", "omega_qvla_ros.ros.policy_node", "--ros-args", "--params-file",
         str(ROOT / "config" / "aloha_bimanual.yaml"), "-p", f"pack_path:={pack}", "-p", "diagnostics_rate_hz:=20.0",
         "-p", f"inference_process:={inference_process}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    n = rclpy.create_node("node_inference_feeder", context=ctx)
    try:
        cams = [n.create_publisher(Image, f"/{c}/image_raw", qos_profile_sensor_data) for c in ALOHA_CAMERAS]
        joints = n.create_publisher(JointState, "/joint_states", 10)
        n.create_publisher(String, "/instruction", LATCHED).publish(String(data="transfer the cube"))
        img = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8).tobytes()
        per_chunk: dict[int, tuple[float, float]] = {}  # chunks count -> (inference_ms, observation_age_ms)
        ticks: list[tuple[float, int]] = []  # (receipt time, the controller's tick count)

        def on_diag(m) -> None:
            d = {kv.key: kv.value for kv in m.status[0].values}
            if "ticks" in d:
                ticks.append((time.monotonic(), int(float(d["ticks"]))))
            if int(d.get("chunks", 0)) > 0:
                per_chunk.setdefault(int(d["chunks"]), (float(d["inference_ms"]), float(d["observation_age_ms"])))

        def feed_cams() -> None:
            for p in cams:
                p.publish(Image(height=height, width=width, encoding="rgb8", step=width * 3, data=img))

        def feed_joints() -> None:
            m = JointState(name=list(ALOHA_JOINTS), position=[float(x) for x in HOME])
            m.header.stamp = n.get_clock().now().to_msg()
            joints.publish(m)

        n.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        n.create_timer(1 / 30, feed_cams)
        n.create_timer(1 / 50, feed_joints)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(n)
        t0 = time.monotonic()
        while not per_chunk:
            if node_proc.poll() is not None or time.monotonic() - t0 > 300:
                raise RuntimeError(f"the node gave no chunk: {node_proc.communicate()[0][-2000:]}")
            ex.spin_once(timeout_sec=0.01)
        first = max(per_chunk)
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            ex.spin_once(timeout_sec=0.01)
        keys = [k for k in per_chunk if k > first]
        window = [(t, k) for t, k in ticks if t >= t0]
    finally:
        n.destroy_node()
        rclpy.shutdown(context=ctx)
        node_proc.send_signal(signal.SIGINT)
        try:
            node_proc.wait(30)
        except subprocess.TimeoutExpired:
            node_proc.kill()
    inf = [per_chunk[k][0] for k in keys]
    age = [per_chunk[k][1] for k in keys]
    tick_rate = ((window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
                 if len(window) > 1 and window[-1][0] > window[0][0] else 0.0)
    return {"chunks_per_s": (max(keys) - first) / seconds if keys else 0.0, "inference_ms": inf,
            "observation_age_ms": age, "ticks_per_s": tick_rate}


def summarize(runs: list[dict], seconds: float) -> dict:
    inf = [x for r in runs for x in r["inference_ms"]]
    age = [x for r in runs for x in r["observation_age_ms"]]
    return {"chunks": len(inf), "inference_ms_median": float(np.median(inf)),
            "inference_ms_p90": float(np.quantile(inf, 0.9)), "observation_age_ms_median": float(np.median(age)),
            "chunks_per_s": float(np.mean([r["chunks_per_s"] for r in runs])),
            "ticks_per_s": float(np.mean([r["ticks_per_s"] for r in runs])), "seconds": seconds * len(runs)}


def format_markdown(r: dict) -> str:
    plain = r["plain_chunk_ms"]
    rows = [f"pack `{r['pack']}`, {r['machine']}, cameras {r['width']}×{r['height']} rgb8 at 30 Hz; "
            f"the chunk in a plain process: {plain:.1f} ms.", "",
            "| policy runs in | chunks | inference median (p90) | × plain | observation age median | chunks/s | "
            "control ticks/s (50 Hz) |",
            "|---|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        rows.append(f"| {name} | {v['chunks']} | {v['inference_ms_median']:.0f} ms ({v['inference_ms_p90']:.0f}) | "
                    f"{v['inference_ms_median'] / plain:.1f}× | {v['observation_age_ms_median']:.0f} ms | "
                    f"{v['chunks_per_s']:.1f} | {v.get('ticks_per_s', float('nan')):.1f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", default=str(ROOT / "models" / "pi05_small_aloha_w4a4"))
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    from omega_qvla_ros.ros.dds import apply_localhost_dds
    from omega_qvla_ros.tools.machine import describe

    apply_localhost_dds()
    plain = plain_chunk_ms(args.pack)
    runs: dict[str, list[dict]] = {k: [] for k in VARIANTS}
    for _ in range(args.rounds):
        for name, value in VARIANTS.items():
            runs[name].append(node_run(args.pack, value, args.seconds, args.width, args.height))
            print(f"{name}: {len(runs[name][-1]['inference_ms'])} chunks", file=sys.stderr, flush=True)
    pack = Path(args.pack).resolve()
    res = {"benchmark": "node_inference", "pack": str(pack.relative_to(ROOT)) if pack.is_relative_to(ROOT) else str(pack),
           "machine": describe(), "width": args.width, "height": args.height, "rounds": args.rounds,
           "plain_chunk_ms": plain, "variants": {k: summarize(v, args.seconds) for k, v in runs.items()}}
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(format_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
