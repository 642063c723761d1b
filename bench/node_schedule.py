"""How the node drives a robot at its control rate, measured from the outside (real
rclpy, loopback DDS, the rig's synthetic inputs at 50 Hz): what every published
trajectory was, over a fixed time. Works on any checkout of the node (for before/after).

    .venv/bin/python bench/node_schedule.py --pack models/pi05_small_aloha_w4a4 --seconds 10 \\
        [--latency 0.8] [--param name=value ...] [--out bench/results/node_schedule.json]

Reported: trajectories published, single-point ones, consecutive exact repeats of the
executed command, action chunks received, the status states seen, and the node's own
counters from /diagnostics (policy / starved ticks, skipped actions) where it has them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def parse_value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


class Slow:
    """A policy whose chunks come `latency` s after the observation (sleeping)."""

    def __init__(self, policy, latency: float) -> None:
        self.p, self.latency = policy, latency

    def __getattr__(self, name):
        return getattr(self.p, name)

    def infer(self, raw, **kw):
        t0 = time.monotonic()
        chunk = self.p.infer(raw, **kw)
        time.sleep(max(0.0, self.latency - (time.monotonic() - t0)))
        return chunk


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", default="models/pi05_small_aloha_w4a4")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--latency", type=float, default=0.0, help="inject this inference latency (sleep)")
    ap.add_argument("--param", action="append", default=[], help="node parameter name=value")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    from omega_qvla_ros.ros.dds import apply_localhost_dds

    apply_localhost_dds()
    from std_srvs.srv import SetBool

    from omega_qvla_ros.ros.rig import Harness

    params = dict(p.split("=", 1) for p in args.param)
    params = {k: parse_value(v) for k, v in params.items()}
    params.setdefault("control_rate_hz", 50.0)
    wrap = (lambda p: Slow(p, args.latency)) if args.latency > 0 else None
    h = Harness(args.pack, policy_wrapper=wrap, feed_hz=50.0, **params)
    try:
        h.call(SetBool, "/omega_qvla_policy/enable", SetBool.Request(data=True))
        t_first = time.monotonic() + 60
        while not h.chunks and time.monotonic() < t_first:
            time.sleep(0.02)
        n0, c0, d0 = len(h.traj), len(h.chunks), len(h.diag)
        time.sleep(args.seconds)
        msgs = [m for _, m in list(h.traj)[n0:]]
        diags = h.diag[d0:]
        states = sorted({s.get("state", s.get("source", "?")) + ": " + s.get("reason", "")[:80]
                         for s in h.status[-20:]})
    finally:
        h.close()
    firsts = [np.array(m.points[0].positions) for m in msgs]
    out = {"pack": args.pack, "seconds": args.seconds, "latency_injected_s": args.latency, "params": params,
           "trajectories": len(msgs), "single_point": sum(len(m.points) == 1 for m in msgs),
           "exact_repeats": int(sum(np.array_equal(a, b) for a, b in zip(firsts, firsts[1:]))),
           "chunks": len(h.chunks) - c0, "status_seen": states}
    if diags:
        a, b = diags[0], diags[-1]
        for k in ("ticks", "policy_ticks", "starved_ticks", "hold_ticks", "skipped_actions", "useless_chunks",
                  "latency_estimate_ms"):
            if k in b:
                out[k] = float(b[k]) - (float(a[k]) if k != "latency_estimate_ms" else 0.0)
        for k in ("skipped_actions", "chunks"):
            if k in b and k not in out:
                out[k + "_total"] = float(b[k])
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
