"""Runtime pieces without ROS: scheduler, safety filter, supervisor, preprocessing."""
from __future__ import annotations

import numpy as np
import pytest

from omega_qvla_ros.runtime.preprocess import (ObservationError, check_image, order_joints,
                                               resize_with_pad)
from omega_qvla_ros.runtime.robot import ALOHA_JOINTS, RobotSpec
from omega_qvla_ros.runtime.safety import SafetyFilter
from omega_qvla_ros.runtime.scheduler import ActionChunk, ChunkScheduler
from omega_qvla_ros.runtime.supervisor import Inputs, Supervisor

DT = 0.02


def _chunk(stamp, start, n=50, slope=0.01):
    pos = start + slope * np.arange(n)[:, None] * np.ones((1, 14))
    return ActionChunk(pos, stamp, DT)


def test_scheduler_skips_actions_consumed_during_inference():
    s = ChunkScheduler(DT, blend="none")
    skipped = s.add(_chunk(0.0, np.zeros(14)), now=0.2, limit=25)  # 200 ms of inference: 10 actions gone
    assert skipped == 10
    ts, ps = s.window_at(0.2)
    assert len(ts) == 15 and ts[0] == pytest.approx(0.2)
    assert ps[0][0] == pytest.approx(0.10)  # the action planned for t = 0.2
    s.add(_chunk(0.0, np.zeros(14)), now=0.2)  # the whole chunk (no limit): its tail too
    assert len(s.window_at(0.2)[0]) == 40 and s.covered_until(0.2) == pytest.approx(1.0)


def test_scheduler_fixed_rate_output():
    s = ChunkScheduler(DT)
    s.add(_chunk(1.0, np.zeros(14)), now=1.0)
    seen = []
    for k in range(30):
        now = 1.0 + k * DT
        seen.append(s.current(now)[0])
    np.testing.assert_allclose(np.diff(seen), 0.01, atol=1e-9)  # one action per tick, none twice
    ts, _ = s.window_at(1.0 + 30 * DT, 5)
    np.testing.assert_allclose(np.diff(ts), DT, atol=1e-9)


@pytest.mark.parametrize("blend,bound", [("average", 0.0701), ("none", 0.1001), ("crossfade", 0.0101)])
def test_blending_bounds_the_jump_at_chunk_boundaries(blend, bound):
    s = ChunkScheduler(DT, blend=blend, new_weight=0.7, window_s=0.2)
    s.add(_chunk(0.0, np.zeros(14), slope=0.0), now=0.0)
    s.add(_chunk(0.1, np.full(14, 0.1), slope=0.0), now=0.1)  # the new chunk disagrees by 0.1
    traj = [s.current(0.1 + k * DT)[0] for k in range(10)]
    jumps = np.abs(np.diff([0.0] + traj))
    # average: 0.3·old + 0.7·new → first step 0.07 …, then flat; none: the full 0.1 at once
    assert jumps.max() <= bound
    if blend == "average":
        assert traj[0] == pytest.approx(0.07)


def test_safety_filter_limits_deltas_and_nan():
    spec = RobotSpec()
    f = SafetyFilter(spec)
    start = np.zeros(14)
    far = np.full((3, 14), 10.0)
    r = f.filter(far, start)
    assert r.points is not None and r.limit_clips > 0 and r.delta_clips > 0
    assert np.all(np.abs(np.diff(np.vstack([start, r.points]), axis=0)) <= spec.max_delta + 1e-12)
    assert np.all(r.points <= spec.upper) and np.all(r.points >= spec.lower)
    bad = np.zeros((2, 14))
    bad[1, 3] = np.nan
    r = f.filter(bad, start)
    assert r.points is None and "non-finite" in r.reason


def test_supervisor_rules():
    s = Supervisor(mode="policy", dry_run=True, stale_after=0.5)
    ok = Inputs(now=10, camera_age=0.05, joint_age=0.02, teleop_age=None, heartbeat_age=None)
    d = s.decide(ok)
    assert (d.source, d.actuate, d.reason) == ("policy", False, "")
    s.dry_run = False
    assert s.decide(ok).actuate
    d = s.decide(Inputs(10, 0.9, 0.02, None, None))
    assert d.source == "hold" and "camera stale" in d.reason
    d = s.decide(Inputs(10, 0.9, 0.02, 0.01, None))
    assert d.source == "teleop" and "fallback" in d.reason
    s.trigger_estop("test")
    d = s.decide(ok)
    assert d.source == "hold" and "e-stop" in d.reason and not d.run_policy
    s.reset_estop()
    s.heartbeat_timeout = 0.3
    assert s.decide(ok).reason == "operator heartbeat lost"
    s.heartbeat_timeout = 0
    s.set_mode("shadow")
    d = s.decide(Inputs(10, 0.05, 0.02, 0.01, None))
    assert d.source == "teleop" and d.run_policy and d.reason == ""
    d = s.decide(Inputs(10, 0.05, 0.02, 0.01, None, policy_fault="inference error: x"))
    assert d.source == "teleop" and d.reason == "shadow policy: inference error: x"
    with pytest.raises(ValueError):
        s.set_mode("autopilot")


def test_preprocessing_checks():
    q = order_joints(ALOHA_JOINTS, list(reversed(ALOHA_JOINTS)), np.arange(14.0)[::-1])
    np.testing.assert_allclose(q, np.arange(14.0))
    with pytest.raises(ObservationError, match="lacks joints"):
        order_joints(ALOHA_JOINTS, ALOHA_JOINTS[:-1] + ["elbow_x"], np.zeros(14))
    with pytest.raises(ObservationError, match="non-finite"):
        order_joints(ALOHA_JOINTS, ALOHA_JOINTS, np.r_[np.zeros(13), np.nan])
    with pytest.raises(ObservationError, match=r"more than once: \['left_waist'\]"):
        order_joints(ALOHA_JOINTS, ALOHA_JOINTS + ["left_waist"], np.zeros(15))
    with pytest.raises(ObservationError, match="uint8"):
        check_image("cam_high", np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ObservationError, match="H×W×3"):
        check_image("cam_high", np.zeros((10, 10), np.uint8))
    img = np.full((48, 96, 3), 200, np.uint8)
    out = resize_with_pad(img, 64)
    assert out.shape == (64, 64, 3)
    assert out[:16].max() == 0 and out[32, 32, 0] == 200  # letterboxed top/bottom


def test_data_range_normalisation_is_separate_from_the_limits():
    """Normalising over the data's range (our small models' processor): the data maps
    into [-1, 1] with margin, a joint that never moves still gets a usable span, the
    limits (safety) stay apart, and the range survives the processor's to_dict/from_dict
    (the pack's manifest)."""
    import torch

    from omega_qvla_ros.models.processor import Normalizer, ProcessorConfig, data_range_normalizer

    rng = np.random.default_rng(0)
    spec = RobotSpec()
    q = np.zeros((1000, 14))
    q[:, 0] = rng.uniform(-0.3, 0.2, 1000)   # waist: a fraction of its ±π range
    q[:, 6] = rng.uniform(0.0, 1.0, 1000)    # gripper: its whole range
    q[:, 1] = -0.9                           # never moves
    d = data_range_normalizer(q, spec.lower, spec.upper)
    z = d.normalize(torch.from_numpy(q)).numpy()
    assert np.all(np.abs(z[:, 0]) < 1.0) and np.abs(z[:, 0]).max() > 0.75
    assert abs(d.high[1] - d.low[1] - 0.1) < 1e-9  # min_span
    assert d.low[6] >= 0.0 and d.high[6] <= 1.0    # never beyond the limits
    assert np.allclose(d.unnormalize(torch.from_numpy(z)).numpy(), q)
    # one radian of waist is ≈ 6× more normalised units than over the joint limits
    limits = Normalizer("min_max", spec.lower, spec.upper, dtype="float64")
    e = torch.from_numpy(np.eye(14))
    assert float(d.normalize(e)[0, 0] - d.normalize(0 * e)[0, 0]) > 5 * float(
        limits.normalize(e)[0, 0] - limits.normalize(0 * e)[0, 0])
    pc = ProcessorConfig(["cam_high"], list(ALOHA_JOINTS), 96, 48, state_norm=d, action_norm=d)
    back = ProcessorConfig.from_dict(pc.to_dict())
    assert back.state_norm == d and back.action_norm == d
    with pytest.raises(ValueError, match="lower bound above"):
        Normalizer("min_max", [1.0], [0.0])
    with pytest.raises(ValueError, match="covers 1 dims"):
        ProcessorConfig(["cam_high"], list(ALOHA_JOINTS), 96, 48, state_norm=Normalizer("min_max", [0.0], [1.0]))
    # legacy packs kept the range in extra.robot: RobotSpec reads them and drops it
    legacy = {**spec.to_dict(), "norm_lower": d.low, "norm_upper": d.high}
    assert RobotSpec.from_dict(legacy).to_dict() == spec.to_dict()


def test_relative_actions_follow_lerobots_mask():
    """LeRobot's use_relative_actions: actions are offsets from the observed state on every
    joint but the excluded ones (a name token match); targets invert it."""
    import torch

    from omega_qvla_ros.models.pi05.checkpoint import relative_mask
    from omega_qvla_ros.models.processor import Normalizer, Processor, ProcessorConfig

    names = ["left_waist", "left_gripper", "right_elbow"]
    mask = relative_mask(names, ["gripper"])
    assert mask == [True, False, True]
    norm = Normalizer("quantiles", [-1.0, 0.0, -2.0], [1.0, 1.0, 2.0])
    proc = Processor(ProcessorConfig(["top"], names, 56, 16, state_norm=norm, action_norm=norm,
                                     relative_actions=mask), action_width=4)
    q = np.array([[0.5, 0.3, -1.0]])
    model_out = torch.zeros(1, 2, 4)  # normalised 0 = the middle of each range
    a = proc.actions(model_out, q)
    np.testing.assert_allclose(a[0, 0], [0.0 + 0.5, 0.5, 0.0 - 1.0], atol=1e-6)
    back = proc.action_targets(a, q)
    assert back.shape == (1, 2, 4) and float(back.abs().max()) < 1e-6
