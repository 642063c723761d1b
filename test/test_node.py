"""The policy node with real rclpy over loopback DDS, loaded with a random-init tiny
pack made by the CLI. Control rate 10 Hz here so that the tiny model's CPU inference
(~0.1–0.3 s) fits inside its 10-step chunk."""
from __future__ import annotations

import ast
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")

from std_srvs.srv import SetBool, Trigger  # noqa: E402

from omega_qvla_ros.ros.policy_node import PARAMETERS  # noqa: E402
from omega_qvla_ros.runtime.robot import ALOHA_JOINTS, RobotSpec  # noqa: E402

from omega_qvla_ros.ros.rig import HOME, Harness  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    from omega_qvla_ros.tools.cli import main
    out = tmp_path_factory.mktemp("pack") / "tiny"
    assert main(["quantize", "--model", "random:pi05:tiny", "--recipe",
                 "omega_qvla", "--calib", "synthetic", "--out", str(out), "--json"]) == 0
    return out


@pytest.fixture
def harness(pack, request):
    params = getattr(request, "param", {})
    h = Harness(pack, **params)
    yield h
    h.close()


def enable(h, on=True):
    r = h.call(SetBool, "/omega_qvla_policy/enable", SetBool.Request(data=on))
    assert r.success


def _positions(msgs):
    return [np.array(p.positions) for m in msgs for p in m.points]


def test_end_to_end_chunks_latency_and_limits(harness):
    h = harness
    h.wait(lambda: h.chunks, 20, "first action chunk")
    enable(h)
    h.wait(lambda: len(h.node.latencies) >= 8, 30, "8 chunks executed")
    msgs = [m for _, m in list(h.traj)]
    assert msgs
    spec = RobotSpec()
    for m in msgs:
        assert list(m.joint_names) == ALOHA_JOINTS
        t = [p.time_from_start.sec + 1e-9 * p.time_from_start.nanosec for p in m.points]
        assert all(b > a for a, b in zip(t, t[1:])) and t[0] > 0
        for p in m.points:
            q = np.array(p.positions)
            assert np.all(np.isfinite(q)) and np.all(q >= spec.lower) and np.all(q <= spec.upper)
            assert len(p.velocities) == 14 and np.all(np.isfinite(p.velocities))
    allp = _positions(msgs)
    steps = np.abs(np.diff(np.stack([m.points[0].positions for m in msgs]), axis=0))
    assert np.all(steps <= spec.max_delta + 1e-9)  # executed commands never jump
    lat = np.array([b - a for a, b in h.node.latencies])
    p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
    print(f"\nnode latency observation receipt → first published point: p50 {1e3 * p50:.0f} ms, "
          f"p99 {1e3 * p99:.0f} ms over {len(lat)} chunks")
    assert p99 < 1.5  # tiny pack on 2 CPU cores: measured p50 ≈ 0.25 s, p99 ≈ 0.4 s
    assert len(allp) > 10
    c = h.chunks[-1]
    assert [d.label for d in c.layout.dim] == ["horizon", "joint"] and c.layout.dim[1].size == 14


def test_dry_run_gating_and_enable_service(harness):
    h = harness
    h.wait(lambda: len(h.chunks) >= 2, 20, "chunks in dry run")
    time.sleep(0.5)
    assert not h.traj, "dry run published to the controller"
    assert h.last_status()["dry_run"] is True
    enable(h)
    h.wait(lambda: h.traj, 10, "commands after enable")
    enable(h, False)
    time.sleep(0.3)
    n = len(h.traj)
    time.sleep(1.0)
    assert len(h.traj) == n


def test_estop_latches_holds_and_resets(harness):
    h = harness
    enable(h)
    h.wait(lambda: len(h.traj) > 3, 20, "commands")
    h.pub_estop.publish(__import__("std_msgs.msg", fromlist=["Bool"]).Bool(data=True))
    h.wait(lambda: h.last_status().get("estop"), 5, "e-stop status")
    time.sleep(0.3)
    t0 = time.monotonic()
    time.sleep(1.0)
    held = h.traj_since(t0)
    assert held and all(len(m.points) == 1 for m in held)
    pos = np.stack([m.points[0].positions for m in held])
    assert np.allclose(pos, pos[0]) and np.any(np.abs(pos[0]) > 0.1)  # hold, never zeros
    assert "e-stop" in h.last_status()["reason"]
    time.sleep(0.5)
    assert h.last_status()["estop"]  # latched: still held without a reset
    r = h.call(Trigger, "/omega_qvla_policy/reset_estop", Trigger.Request())
    assert r.success
    h.wait(lambda: h.last_status().get("source") == "policy", 20, "policy after reset")


@pytest.mark.parametrize("harness", [{"heartbeat_timeout_s": 0.5}], indirect=True)
def test_heartbeat_loss_holds(harness):
    h = harness
    h.feed_on["heartbeat"] = True
    enable(h)
    h.wait(lambda: h.last_status().get("source") == "policy", 20, "policy with heartbeat")
    h.feed_on["heartbeat"] = False
    h.wait(lambda: h.last_status().get("reason") == "operator heartbeat lost", 5, "heartbeat loss")
    t0 = time.monotonic()
    time.sleep(0.6)
    pos = np.stack([m.points[0].positions for m in h.traj_since(t0)])
    assert np.allclose(pos, pos[0])
    h.feed_on["heartbeat"] = True
    h.wait(lambda: h.last_status().get("source") == "policy", 10, "recovery")


@pytest.mark.parametrize("harness", [{"fallback_to_teleop": False, "expected_image_width": 64}], indirect=True)
def test_trouble_cases_hold_and_recover(harness):
    h = harness
    enable(h)
    h.wait(lambda: h.last_status().get("source") == "policy", 20, "policy")

    def trouble(break_fn, fix_fn, reason):
        break_fn()
        h.wait(lambda: reason in h.last_status().get("reason", ""), 8, reason)
        assert h.last_status()["source"] == "hold"
        t0 = time.monotonic()
        time.sleep(0.5)
        pos = np.stack([m.points[0].positions for m in h.traj_since(t0)])
        assert np.allclose(pos, pos[0]) and np.all(np.isfinite(pos))
        diag = h.diag[-1]
        assert reason in diag["_message"] and diag["_level"] == 2
        fix_fn()
        h.wait(lambda: h.last_status().get("source") == "policy", 20, f"recovery from {reason}")

    trouble(lambda: h.feed_on.update(images=False), lambda: h.feed_on.update(images=True), "camera stale")
    trouble(lambda: h.feed_on.update(joints=False), lambda: h.feed_on.update(joints=True), "joint states stale")
    names = list(h.joint_names)
    trouble(lambda: setattr(h, "joint_names", names[:-1] + ["mystery_joint"]),
            lambda: setattr(h, "joint_names", names), "lacks joints")
    trouble(lambda: setattr(h, "image_encoding", "16UC1"), lambda: setattr(h, "image_encoding", "rgb8"),
            "cannot decode")
    img = h.image
    trouble(lambda: setattr(h, "image", np.zeros((64, 48, 3), np.uint8)), lambda: setattr(h, "image", img),
            "expected 64")


class _Faulty:
    """Wraps a Policy; misbehaves on demand."""

    def __init__(self, policy, kind):
        self.p, self.kind, self.on = policy, kind, False

    def __getattr__(self, name):
        return getattr(self.p, name)

    def infer(self, raw, **kw):
        chunk = self.p.infer(raw, **kw)
        if self.on and self.kind == "raise":
            raise RuntimeError("boom")
        if self.on and self.kind == "nan":
            chunk.positions[3, 2] = np.nan
        return chunk


@pytest.mark.parametrize("kind,reason", [("raise", "inference error: RuntimeError: boom"),
                                         ("nan", "NaN")])
def test_policy_faults_fall_back_to_teleop(pack, kind, reason):
    holder = {}
    h = Harness(pack, policy_wrapper=lambda p: holder.setdefault("w", _Faulty(p, kind)))
    try:
        h.teleop = HOME + 0.01
        h.feed_on["teleop"] = True
        enable(h)
        h.wait(lambda: h.last_status().get("source") == "policy", 20, "policy")
        holder["w"].on = True
        h.wait(lambda: reason in h.last_status().get("reason", ""), 10, reason)
        assert h.last_status()["source"] == "teleop"
        # teleop passes through; the per-step delta clamp may take a few ticks to get there
        h.wait(lambda: np.allclose(h.traj[-1][1].points[0].positions, h.teleop, atol=1e-6), 15,
               "commands reaching the teleop position")
        holder["w"].on = False
        h.wait(lambda: h.last_status().get("source") == "policy", 20, "recovery")
    finally:
        h.close()


@pytest.mark.parametrize("harness", [{"inference_deadline_s": 0.001}], indirect=True)
def test_deadline_miss_holds(harness):
    h = harness
    # the warm-up measured it before the first tick: said at start-up, and on /diagnostics
    assert "over inference_deadline_s 0.001" in h.node.startup_warning
    enable(h)
    h.wait(lambda: "deadline miss" in h.last_status().get("reason", ""), 20, "deadline miss")
    assert h.last_status()["source"] == "hold"
    h.wait(lambda: h.diag and int(h.diag[-1]["deadline_misses"]) >= 1, 5, "deadline misses in diagnostics")
    assert "deadline miss" in h.diag[-1]["startup_warning"] and float(h.diag[-1]["warm_up_ms"]) > 1


class _Counted(_Faulty):
    def __init__(self, policy, kind, on=False):
        super().__init__(policy, kind)
        self.on, self.calls = on, []

    def infer(self, raw, **kw):
        self.calls.append((raw, kw))
        return super().infer(raw, **kw)


@pytest.mark.parametrize("kind,match", [("nan", "NaN/Inf: the pack is broken"), ("raise", "boom")])
def test_a_policy_that_cannot_run_stops_the_node_at_start_up(pack, kind, match):
    """A pack that loads but gives NaN or raises is found by the warm-up, before the node
    exists (main() turns this into one 'cannot start' line and exit 1)."""
    from rclpy.parameter import Parameter

    from omega_qvla_ros.ros.policy_node import PolicyNode
    from omega_qvla_ros.runtime.policy import Policy
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        bad = _Counted(Policy.from_pack(pack), kind, on=True)
        with pytest.raises((ValueError, RuntimeError), match=match):
            PolicyNode(policy=bad, parameter_overrides=[Parameter("pack_path", value=str(pack))], context=ctx)
        assert len(bad.calls) == 1
        # with the warm-up off the same policy starts (and its fault shows per chunk, as before)
        off = _Counted(Policy.from_pack(pack), kind, on=True)
        node = PolicyNode(policy=off, parameter_overrides=[Parameter("pack_path", value=str(pack)),
                                                           Parameter("warm_up", value=False)], context=ctx)
        assert off.calls == [] and node.startup_warning == "" and "warm_up_ms" not in node.stats
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


class _Hanging(_Faulty):
    """Wraps a Policy; once `hang` is set, a call waits until it is cleared."""

    def __init__(self, policy):
        super().__init__(policy, "hang")
        self.hang, self.free = False, threading.Event()

    def infer(self, raw, **kw):
        if self.hang:
            self.free.wait(30)
        return self.p.infer(raw, **kw)


def test_an_inference_call_that_hangs_holds_with_its_reason(pack):
    """A call that never answers (a hung driver, a deadlocked child) is not a silent
    'starved': past twice the deadline it is a fault, ERROR, that says how long it waited;
    when the call returns, the policy drives again."""
    holder = {}
    h = Harness(pack, policy_wrapper=lambda p: holder.setdefault("w", _Hanging(p)), inference_deadline_s=0.5)
    try:
        enable(h)
        h.wait(lambda: h.last_status().get("source") == "policy", 20, "policy driving")
        holder["w"].hang = True
        h.wait(lambda: "inference stuck: no answer for" in h.last_status().get("reason", ""), 20, "stuck reason")
        st = h.last_status()
        assert st["source"] == "hold" and st["level"] == "error" and "twice inference_deadline_s is 1 s" in st["reason"]
        holder["w"].hang = False
        holder["w"].free.set()
        h.wait(lambda: h.last_status().get("source") == "policy", 20, "driving again")
    finally:
        holder["w"].free.set()
        h.close()


def test_inference_process_that_dies_holds_with_its_reason(pack):
    """The node's policy runs in its own process (default): the node starts it, a child
    that dies turns every later chunk into a held tick that says how it ended, and
    closing the node ends the child."""
    import os
    import signal

    from omega_qvla_ros.runtime.policy_process import PolicyProcess
    h = Harness(pack)
    try:
        proc = h.node.policy
        assert isinstance(proc, PolicyProcess) and proc.is_alive()
        enable(h)
        h.wait(lambda: h.last_status().get("source") == "policy", 20, "policy driving")
        os.kill(proc.pid, signal.SIGKILL)
        h.wait(lambda: "the inference process ended during inference (killed by signal 9)"
               in h.last_status().get("reason", ""), 20, "the dead child's reason")
        st = h.last_status()
        assert st["source"] == "hold" and st["level"] == "error", st
        h.wait(lambda: h.diag and int(h.diag[-1]["inference_errors"]) >= 1, 5, "inference errors counted")
    finally:
        h.close()
    assert not proc.is_alive()
    h2 = Harness(pack)
    child = h2.node.policy
    h2.close()
    assert not child.is_alive() and child.exitcode == 0  # asked to stop, not terminated


def test_warm_up_runs_the_real_call_once_when_fast(pack):
    """A policy fast enough for its deadline and chunk is warmed up once, with the node's
    own cameras, denoising steps and instruction; the latency it measured is the prior."""
    holder = {}
    h = Harness(pack, policy_wrapper=lambda p: holder.setdefault("w", _Counted(p, "nan")), num_steps=3,
                instruction="fold the towel")
    try:
        (raw, kw), = holder["w"].calls
        assert kw == {"num_steps": 3} and raw.instruction == "fold the towel"
        assert sorted(raw.images) == sorted(h.node.cameras)
        assert all(not img.any() for img in raw.images.values())
        assert h.node.startup_warning == "" and 0 < h.node.stats["warm_up_ms"] < 2000
        assert h.node.controller.config.latency_prior_s == PARAMETERS["latency_prior_s"]  # the larger one
    finally:
        h.close()


@pytest.mark.parametrize("harness", [{"mode": "shadow"}], indirect=True)
def test_shadow_mode_teleop_drives_and_divergence_published(harness):
    h = harness
    h.teleop = HOME + 0.02
    h.feed_on["teleop"] = True
    enable(h)
    h.wait(lambda: h.last_status().get("source") == "teleop" and len(h.chunks) >= 2, 20, "shadow running")
    time.sleep(1.0)
    last = np.array(h.traj[-1][1].points[0].positions)
    assert np.allclose(last, h.teleop, atol=1e-6)
    h.wait(lambda: h.diag and float(h.diag[-1]["divergence_max"]) > 0, 5, "divergence in diagnostics")
    assert h.diag[-1]["mode"] == "shadow"


def test_launch_arguments_and_yaml_keys_are_node_parameters():
    tree = ast.parse((REPO / "launch" / "omega_qvla.launch.py").read_text())
    declared = {n.args[0].value for n in ast.walk(tree)
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"}
    passed = {k.value for n in ast.walk(tree) if isinstance(n, ast.Dict) for k in n.keys
              if isinstance(k, ast.Constant)}
    not_params = {"config_file", "namespace", "use_sim_time"}  # handled by launch itself
    assert declared - not_params <= set(PARAMETERS), declared - not_params - set(PARAMETERS)
    assert passed - {"use_sim_time"} <= set(PARAMETERS)
    cfg = yaml.safe_load((REPO / "config" / "aloha_bimanual.yaml").read_text())
    keys = set(cfg["omega_qvla_policy"]["ros__parameters"])
    assert keys <= set(PARAMETERS), keys - set(PARAMETERS)
    p = cfg["omega_qvla_policy"]["ros__parameters"]
    assert p["dry_run"] is True and p["joint_names"] == ALOHA_JOINTS
    assert p["camera_topics"] == ["/cam_high/image_raw", "/cam_left_wrist/image_raw", "/cam_right_wrist/image_raw"]
    assert p["output_topic"] == "/bimanual_controller/joint_trajectory"
    assert p["teleop_topic"] == "/teleop/joint_states" and p["instruction_topic"] == "/instruction"
    for k, v in p.items():  # types match the declared defaults (ROS rejects mismatches)
        assert type(v) is type(PARAMETERS[k]) or (isinstance(v, float) and isinstance(PARAMETERS[k], float)), k


def test_executable_with_yaml_params_file(pack, tmp_path):
    """`policy_node --ros-args --params-file config/aloha_bimanual.yaml -p pack_path:=…` starts,
    reads the YAML, and reports its status (dry run) on the latched status topic."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from std_msgs.msg import String

    from omega_qvla_ros.ros.rig import LATCHED

    proc = subprocess.Popen([sys.executable, "-m", "omega_qvla_ros.ros.policy_node", "--ros-args",
                             "--params-file", str(REPO / "config" / "aloha_bimanual.yaml"),
                             "-p", f"pack_path:={pack}", "-p", "control_rate_hz:=10.0"],
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node("status_reader", context=ctx)
        got = []
        node.create_subscription(String, "/omega_qvla_policy/status", lambda m: got.append(json.loads(m.data)), LATCHED)
        from rclpy.executors import SingleThreadedExecutor
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        t0 = time.monotonic()
        while not got and time.monotonic() - t0 < 30 and proc.poll() is None:
            ex.spin_once(timeout_sec=0.1)
        assert got, proc.stdout.read() if proc.poll() is not None else "no status from the node"
        assert got[-1]["dry_run"] is True and got[-1]["mode"] == "policy"
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    # Ctrl-C stops it cleanly: exit 0, no traceback, no failed callbacks left behind
    out = proc.stdout.read()
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out and "never retrieved" not in out, out[-3000:]


@pytest.mark.parametrize("harness", [{"output_layout": "per_arm"}], indirect=True)
def test_per_arm_output_layout(harness):
    from trajectory_msgs.msg import JointTrajectory
    h = harness
    got = {"left": [], "right": []}
    for side in got:
        h.io.create_subscription(JointTrajectory, f"/{side}_arm_controller/joint_trajectory", got[side].append, 10)
    enable(h)
    h.wait(lambda: got["left"] and got["right"], 20, "per-arm commands")
    assert list(got["left"][-1].joint_names) == ALOHA_JOINTS[:7]
    assert list(got["right"][-1].joint_names) == ALOHA_JOINTS[7:]
    assert not h.traj  # nothing on the single-controller topic


def test_pack_normalisation_is_used(pack):
    from omega_qvla_ros.quant.pack import read_manifest
    from omega_qvla_ros.runtime.policy import Policy
    m = read_manifest(pack)
    assert m["extra"]["robot"]["joint_names"] == ALOHA_JOINTS
    p = Policy.from_pack(pack)
    assert p.robot.joint_names == ALOHA_JOINTS and p.cameras == ["cam_high", "cam_left_wrist", "cam_right_wrist"]
