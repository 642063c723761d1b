"""The node on a real control loop (real rclpy, loopback DDS): at 50 Hz, with an
injected inference latency (a policy wrapper that sleeps, so the latency costs no CPU),
the node executes policy actions on nearly every tick once the first chunk is in,
never holds or repeats a command while a fresh action exists, and reports `starved`
(WARN, with the observation age and latency) when the latency exceeds the chunk.
Where the machine stretches the injected latency, the share target scales by what the
shared controller reaches on a simulated clock with the latencies the node actually saw."""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from omega_qvla_ros.ros.rig import Harness  # noqa: E402

from omega_qvla_ros.models import build_model, get_config, model_info  # noqa: E402
from omega_qvla_ros.models.processor import legacy_processor_config  # noqa: E402
from omega_qvla_ros.quant.pack import save_pack  # noqa: E402
from omega_qvla_ros.quant.recipes import RECIPES  # noqa: E402
from omega_qvla_ros.runtime.controller import Controller  # noqa: E402
from omega_qvla_ros.runtime.robot import RobotSpec  # noqa: E402
from omega_qvla_ros.runtime.supervisor import Supervisor  # noqa: E402
from test_controller import policy_share, simulate  # noqa: E402


def _pack(tmp_path_factory, horizon: int):
    cfg = dataclasses.replace(get_config("pi05", "tiny"), action_horizon=horizon)
    m = build_model("pi05", config=cfg).eval()
    out = tmp_path_factory.mktemp(f"h{horizon}") / "pack"
    proc = legacy_processor_config(cfg, {}, RobotSpec().to_dict())
    save_pack(m, out, model_info(m), recipe=RECIPES["fp16"].to_dict(), processor=proc.to_dict())
    return out


class Sleepy:
    """A Policy whose chunks arrive `latency` after the observation (sleep, no CPU)."""

    def __init__(self, policy, latency: float) -> None:
        self.p, self.latency, self.calls = policy, latency, 0

    def __getattr__(self, name):
        return getattr(self.p, name)

    def infer(self, raw, **kw):
        t0 = time.monotonic()
        self.calls += 1
        chunk = self.p.infer(raw, **kw)
        time.sleep(max(0.0, self.latency - (time.monotonic() - t0)))
        return chunk


def _simulated_share(h, latencies: list[float], horizon: int, after: int) -> float:
    """The share the node's own controller logic reaches on a simulated clock when its
    requests take `latencies`, in order."""
    ctl = Controller(RobotSpec(), h.node.controller.config,
                     Supervisor(mode="policy", dry_run=False, stale_after=math.inf, fallback_to_teleop=False))
    return policy_share(simulate(ctl, latencies, 12.0, horizon), after)


def _run(pack, latency: float, seconds: float, after_chunks: int = 1, **params):
    held = {}
    h = Harness(pack, policy_wrapper=lambda p: held.setdefault("p", Sleepy(p, latency)), feed_hz=50.0,
                control_rate_hz=50.0, fallback_to_teleop=False, **params)
    h.warm_up_calls = held["p"].calls  # the node's start-up calls, before it is enabled
    realised = []  # observation → chunk-in-the-controller times, as the node saw them
    add = h.node.controller.add_chunk
    h.node.controller.add_chunk = lambda chunk, now: realised.append(now - chunk.stamp) or add(chunk, now)
    h.realised = realised
    try:
        h.call(__import__("std_srvs.srv", fromlist=["SetBool"]).SetBool, "/omega_qvla_policy/enable",
               __import__("std_srvs.srv", fromlist=["SetBool"]).SetBool.Request(data=True))
        h.wait(lambda: h.node.controller.chunks >= after_chunks, 20, f"chunk {after_chunks}")
        t0 = len(h.node.tick_log)
        time.sleep(seconds)
        ticks = list(h.node.tick_log[t0:])
        return h, ticks
    except Exception:
        h.close()
        raise


# (injected latency s, chunk actions at 50 Hz, requests in flight, chunks before the window,
# least share of policy ticks). One request at a time gives each chunk (chunk − latency) of use
# per latency, so the chunk must outlast ~1.9× the latency for 90%; the third case pipelines a
# 2 s chunk at 1.5 s (one request at a time could reach 33% at best there). Pipelining starts
# once the first chunk has taught the controller the latency: the first chunk's own gap (its
# 0.5 s of use, then up to 1 s until the next arrives) is not steady state, so that case's
# window opens at the second chunk. Its steady state measured 80–91% policy ticks (each chunk
# leaves only ~0.45 s beyond a 1.55 s latency: jitter shows); 70% still needs the pipelining,
# one request at a time reaches 33% at best.
@pytest.mark.parametrize("latency,horizon,inflight,after,least", [(0.8, 100, 1, 1, 0.9), (1.5, 150, 1, 1, 0.9),
                                                                   (1.5, 100, 4, 2, 0.7)])
def test_policy_drives_nearly_every_tick_under_latency(tmp_path_factory, latency, horizon, inflight, after, least):
    pack = _pack(tmp_path_factory, horizon)
    h, ticks = _run(pack, latency, 5.0, after_chunks=after, max_inflight=inflight)
    try:
        share = sum(t.source == "policy" for t in ticks) / len(ticks)
        # a loaded machine stretches the injected latency (CI once saw 0.8 s become up to
        # 1.45 s, where no one-at-a-time schedule covers 2 s chunks): the target scales by
        # what the controller reaches on a simulated clock with the latencies the node saw,
        # against what it reaches with the injected one
        planned = _simulated_share(h, [latency], horizon, after)
        allowed = _simulated_share(h, list(h.realised), horizon, after)
        target = least * min(1.0, allowed / planned)
        print(f"\nlatency {latency} s, chunk {horizon * 0.02:.1f} s, {inflight} in flight: policy on "
              f"{100 * share:.1f}% of {len(ticks)} ticks (target {100 * target:.1f}%: simulated clock "
              f"{100 * planned:.1f}% at the injected latency, {100 * allowed:.1f}% at the realised ones "
              f"{', '.join(f'{x:.2f}' for x in h.realised)}), latency estimate {h.node.controller.latency.estimate:.2f} s")
        assert len(ticks) > 150  # the timer keeps its 50 Hz roughly (≥ 60% of 250 ticks)
        assert share >= target, (share, target)
        # a fresh action always drives; holds only where none existed
        assert all(t.source == "policy" for t in ticks if t.fresh_action)
        # and the executed command moves with the timeline, it is not a repeat of the last one
        firsts = [t.points[0] for t in ticks if t.source == "policy"]
        repeats = sum(np.array_equal(a, b) for a, b in zip(firsts, firsts[1:]))
        assert repeats == 0, repeats
        assert h.node.controller.latency.estimate >= latency
    finally:
        h.close()


def test_latency_beyond_the_chunk_reports_starved(tmp_path_factory):
    pack = _pack(tmp_path_factory, 50)  # 1 s chunks at 50 Hz
    h, ticks = _run(pack, 1.5, 3.0)
    try:
        # said at start-up: the warm-up's first chunk was slower than the chunk, so it was
        # measured once more, and that latency became the controller's prior
        assert "but covers 1.00 s (50 actions at 50 Hz): the arm will be starved" in h.node.startup_warning
        assert h.node.stats["warm_up_ms"] >= 1500 and h.node.controller.config.latency_prior_s >= 1.5
        assert h.warm_up_calls == 2
        h.wait(lambda: h.last_status().get("state") == "starved", 5, "starved status")
        st = h.last_status()
        assert st["level"] == "warn" and st["source"] == "hold"
        assert "inference latency" in st["reason"] and "observation age" in st["reason"]
        h.wait(lambda: h.diag and h.diag[-1]["state"] == "starved", 5, "starved diagnostics")
        d = h.diag[-1]
        assert d["_level"] == 1 and "starved" in d["_message"]  # WARN, with the reason
        assert sum(t.state == "starved" for t in ticks) > 0.5 * len(ticks)
        assert int(d["useless_chunks"]) >= 1
        assert d["startup_warning"] == h.node.startup_warning
    finally:
        h.close()
