"""The shared controller (runtime/controller.py) with explicit time: time-aligned
execution across whole chunks, requests timed by the measured latency, starvation as
its own state, blending in time. No ROS: the node and the simulator drive this class."""
from __future__ import annotations

import math

import numpy as np
import pytest

from omega_qvla_ros.runtime.controller import ControlConfig, Controller, LatencyEstimator
from omega_qvla_ros.runtime.robot import RobotSpec
from omega_qvla_ros.runtime.scheduler import ActionChunk, ChunkScheduler
from omega_qvla_ros.runtime.supervisor import Inputs, Supervisor

DT = 0.02
HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)


def controller(**kw) -> Controller:
    kw.setdefault("horizon", 50)
    sup = Supervisor(mode="policy", dry_run=False, stale_after=math.inf, fallback_to_teleop=kw.pop("teleop", False))
    return Controller(RobotSpec(), ControlConfig(dt=DT, **kw), sup)


def ramp_chunk(stamp: float, n: int = 50, start: float = 0.0) -> ActionChunk:
    """Actions whose first joint encodes their own time (to see which one runs)."""
    pos = np.tile(HOME, (n, 1))
    pos[:, 0] = start + stamp + np.arange(n) * DT
    return ActionChunk(pos, stamp, DT)


def fresh_inputs(now):
    return Inputs(now, 0.0, 0.0, None, None)


def test_late_chunk_executes_its_remaining_actions_in_time():
    ctl = controller(blend="none")
    rec = ctl.add_chunk(ramp_chunk(0.0), now=0.8)
    assert (rec.skipped, rec.fresh) == (40, 10) and abs(rec.latency_s - 0.8) < 1e-12
    tick = ctl.step(0.8, fresh_inputs(0.8), measured=HOME)
    assert tick.source == "policy" and tick.state == "driving" and tick.fresh_action
    # the action for t = 0.8 (index 40), not the chunk's first one; later points are later actions
    assert tick.points is not None and abs(tick.times[0] - DT) < 1e-9
    ts = tick.times
    assert np.all(np.diff(ts) > 0)


def test_starved_is_its_own_state_with_age_and_latency():
    ctl = controller(blend="none")
    tick = ctl.step(0.0, fresh_inputs(0.0), measured=HOME)
    assert tick.state == "waiting" and tick.source == "hold" and tick.level == "warn"
    ctl.add_chunk(ramp_chunk(0.0, n=10), now=0.1)  # covers [0, 0.2)
    assert ctl.step(0.12, fresh_inputs(0.12), measured=HOME).state == "driving"
    t = ctl.step(0.5, fresh_inputs(0.5), measured=HOME)
    assert t.state == "starved" and t.level == "warn" and t.source == "hold"
    assert "observation age 500 ms" in t.reason and "inference latency 100 ms" in t.reason
    assert "chunk covers 200 ms" in t.reason
    # the hold repeats the last command, never zeros
    assert np.allclose(t.points[0], ctl.last_command) and np.abs(t.points[0]).max() > 0.1
    # with fresh teleop and the fallback allowed, teleop drives while starved
    ctl2 = controller(blend="none", teleop=True)
    ctl2.add_chunk(ramp_chunk(0.0, n=10), now=0.1)
    t2 = ctl2.step(0.5, Inputs(0.5, 0.0, 0.0, 0.0, None), measured=HOME, teleop=HOME + 0.01)
    assert t2.source == "teleop" and "starved" in t2.reason and t2.level == "warn"


def test_requests_follow_the_measured_latency():
    ctl = controller(replan_period_s=0.0, request_margin_s=0.1, latency_prior_s=0.5)
    assert ctl.want_inference(0.0)  # nothing yet
    ctl.request_sent(0.0)
    assert not ctl.want_inference(0.05)  # one in flight (max_inflight 1)
    ctl.add_chunk(ramp_chunk(0.0), now=0.3)  # 1 s chunk, latency 0.3 s
    assert ctl.latency.estimate == pytest.approx(0.3)
    # covered until 1.0: ask when 1.0 - now <= 0.3 + 0.1
    assert not ctl.want_inference(0.55)
    assert ctl.want_inference(0.61)
    # in flight requests count as coverage: with two allowed, the second waits for need
    ctl2 = controller(replan_period_s=0.0, request_margin_s=0.1, latency_prior_s=0.5, max_inflight=2)
    ctl2.add_chunk(ramp_chunk(0.0), now=0.3)
    ctl2.request_sent(0.61)
    assert not ctl2.want_inference(0.7)  # the in-flight chunk will cover until 1.61
    assert ctl2.want_inference(1.25)


def test_replan_period_asks_for_fresh_observations():
    ctl = controller(replan_period_s=0.5, request_margin_s=0.0, latency_prior_s=0.0)
    ctl.add_chunk(ramp_chunk(0.0), now=0.0)
    ctl.latency = LatencyEstimator(0.2)
    ctl.latency.add(0.2)
    assert not ctl.want_inference(0.25)
    assert ctl.want_inference(0.3)  # 0.5 - 0.2: the next chunk lands 0.5 s after the last observation


def simulate(ctl: Controller, latencies, seconds: float, horizon: int) -> list:
    """Simulated time at 50 Hz, a policy whose k-th answer arrives `latencies[k]` after its
    request (the last value repeats): the ticks, from the first one."""
    pending, log = [], []
    for k in range(int(seconds / DT)):
        now = k * DT
        for item in [p for p in pending if p[0] <= now + 1e-9]:
            pending.remove(item)
            ctl.add_chunk(item[1], now)
        if ctl.want_inference(now):
            ctl.request_sent(now)
            lat = latencies[min(ctl.chunks + len(pending), len(latencies) - 1)]
            pending.append((now + lat, ramp_chunk(now, horizon)))
        log.append(ctl.step(now, fresh_inputs(now), measured=HOME))
    return log


def policy_share(log: list, after_chunks: int = 1) -> float:
    """Share of policy ticks from the tick the `after_chunks`-th chunk first drove."""
    starts = [i for i, (a, b) in enumerate(zip([None] + log, log)) if b.fresh_action and (a is None or not a.fresh_action)]
    after = log[starts[min(after_chunks, len(starts)) - 1]:] if starts else []
    return sum(t.source == "policy" for t in after) / max(len(after), 1)


@pytest.mark.parametrize("latency,horizon,inflight,min_share", [(0.8, 100, 1, 0.9), (1.5, 150, 1, 0.9),
                                                                 (1.5, 100, 4, 0.9), (0.18, 50, 1, 0.99)])
def test_simulated_clock_keeps_the_policy_driving(latency, horizon, inflight, min_share):
    """Simulated time, a policy that answers after `latency`: after the first chunk the
    policy drives on ≥ min_share of the ticks when the chunk outlasts the latency."""
    ctl = controller(blend="crossfade", max_inflight=inflight, replan_period_s=0.5, horizon=horizon)
    log = simulate(ctl, [latency], 12.0, horizon)
    first = next(i for i, t in enumerate(log) if t.fresh_action)
    after = log[first:]
    share = sum(t.source == "policy" for t in after) / len(after)
    assert share >= min_share, share
    assert all(t.fresh_action == (t.source == "policy") for t in after)


def test_one_request_at_a_time_goes_out_as_soon_as_the_answer_is_in():
    """With one request in flight and a latency above the replan period, the next
    observation goes out on the tick the previous chunk lands, even when that chunk came
    faster than the (high-quantile) estimate: waiting for the estimate would only age the
    next observation and, with a chunk under twice the latency, starve the arm."""
    ctl = controller(replan_period_s=0.5, request_margin_s=0.1, latency_prior_s=1.0, horizon=100)
    for t, lat in ((0.0, 1.0), (1.0, 1.0), (2.0, 1.0)):
        ctl.request_sent(t)
        ctl.add_chunk(ramp_chunk(t, 100), now=t + lat)
    ctl.request_sent(3.0)
    ctl.add_chunk(ramp_chunk(3.0, 100), now=3.6)  # faster than the 1.0 s estimate
    assert ctl.latency.estimate > 0.9
    assert ctl.want_inference(3.62)
    # over 10 s, latencies 1.0 ×3 then 0.6 / 1.0 alternating: requests back to back land at
    # 1, 2, 3, 3.6, 4.6, 5.2, 6.2, 6.8, 7.8, 8.4, 9.4 (waiting for the estimate: 10 chunks)
    ctl = controller(blend="crossfade", replan_period_s=0.5, horizon=100, latency_prior_s=1.0)
    log = simulate(ctl, [1.0, 1.0, 1.0] + [0.6, 1.0] * 8, 10.0, 100)
    assert ctl.chunks == 11 and policy_share(log) == 1.0, (ctl.chunks, policy_share(log))


def test_latency_beyond_the_chunk_starves_and_says_so():
    ctl = controller(blend="none", replan_period_s=0.5)
    states = simulate(ctl, [1.5], 6.0, 50)  # 1 s chunks, 1.5 s latency
    assert ctl.stats["useless_chunks"] == ctl.chunks >= 3  # every chunk arrived stale
    assert {t.state for t in states[100:]} == {"starved"}
    assert "inference latency 1500 ms" in states[-1].reason and "chunk covers 1000 ms" in states[-1].reason


def test_crossfade_continues_from_the_executing_action():
    s = ChunkScheduler(DT, "crossfade", window_s=0.2)
    s.add(ActionChunk(np.zeros((50, 2)), 0.0, DT), 0.0)
    s.add(ActionChunk(np.ones((50, 2)), 0.2, DT), 0.2)
    ts, ps = s.window_at(0.2)
    assert ps[0, 0] == pytest.approx(0.0)  # at now: still the old command (weight 0)
    assert ps[5, 0] == pytest.approx(0.5)  # halfway through the window
    assert np.all(ps[10:, 0] == 1.0)  # after it: the new chunk alone
    assert np.all(np.diff(ps[:11, 0]) > 0)  # a ramp, no jump
    # average keeps LeRobot's fixed weights; none replaces
    a = ChunkScheduler(DT, "average", new_weight=0.7)
    a.add(ActionChunk(np.zeros((50, 2)), 0.0, DT), 0.0)
    a.add(ActionChunk(np.ones((50, 2)), 0.2, DT), 0.2)
    assert a.window_at(0.2)[1][0, 0] == pytest.approx(0.7)
    with pytest.raises(ValueError):
        ChunkScheduler(DT, "fancy")


def test_config_is_checked():
    with pytest.raises(ValueError, match="max_inflight"):
        ControlConfig(dt=DT, max_inflight=0)
    with pytest.raises(ValueError, match="dt"):
        ControlConfig(dt=0.0)
