"""`policy_node`: the rclpy node around the runtime.

Subscribes to cameras, joint states, instruction, teleop commands, operator heartbeat
and e-stop; runs inference on a worker thread (the executor never waits for it); a
fixed-rate timer schedules chunks, applies the safety filter, and publishes
JointTrajectory commands — only when actuation is enabled (dry run by default).
Diagnostics and status say what drives the arm and why.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float32MultiArray, MultiArrayDimension, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from omega_qvla_ros.runtime.preprocess import ObservationError, RawObservation, order_joints
from omega_qvla_ros.runtime.robot import ALOHA_CAMERAS, ALOHA_JOINTS, RobotSpec
from omega_qvla_ros.runtime.safety import SafetyFilter
from omega_qvla_ros.runtime.scheduler import ChunkScheduler
from omega_qvla_ros.runtime.supervisor import Inputs, Supervisor

from .conversions import image_to_rgb, joint_trajectory

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)

# name -> default; every YAML key and launch argument must be one of these (tested)
PARAMETERS: dict[str, object] = {
    "pack_path": "",
    "device": "auto",
    "mode": "policy",
    "dry_run": True,
    "joint_names": list(ALOHA_JOINTS),
    "joint_lower": [-3.14158, -1.85005, -1.76278, -3.14158, -1.8675, -3.14158, 0.0] * 2,
    "joint_upper": [3.14158, 1.25664, 1.6057, 3.14158, 2.23402, 3.14158, 1.0] * 2,
    "max_delta": [0.05] * 6 + [0.1] + [0.05] * 6 + [0.1],
    "camera_names": list(ALOHA_CAMERAS),
    "camera_topics": [f"/{c}/image_raw" for c in ALOHA_CAMERAS],
    "expected_image_width": 0,
    "expected_image_height": 0,
    "joint_state_topic": "/joint_states",
    "instruction_topic": "/instruction",
    "instruction": "",
    "teleop_topic": "/teleop/joint_states",
    "output_layout": "single",
    "output_topic": "/bimanual_controller/joint_trajectory",
    "left_output_topic": "/left_arm_controller/joint_trajectory",
    "right_output_topic": "/right_arm_controller/joint_trajectory",
    "control_rate_hz": 50.0,
    "execute_horizon": 25,
    "refill_below": 10,
    "trajectory_points": 10,
    "blend": "average",
    "blend_new_weight": 0.7,
    "stale_timeout_s": 0.5,
    "heartbeat_timeout_s": 0.0,
    "inference_deadline_s": 2.0,
    "fallback_to_teleop": True,
    "num_steps": 0,
    "diagnostics_rate_hz": 2.0,
}


@dataclass
class Stamped:
    value: object
    t: float


class PolicyNode(Node):
    def __init__(self, policy=None, parameter_overrides: list[Parameter] | None = None,
                 context=None) -> None:
        super().__init__("omega_qvla_policy", parameter_overrides=parameter_overrides or [], context=context)
        for name, default in PARAMETERS.items():
            self.declare_parameter(name, default)
        p = self._p
        self.robot = RobotSpec(joint_names=list(p("joint_names")), lower=p("joint_lower"),
                               upper=p("joint_upper"), max_delta=p("max_delta"),
                               cameras=list(p("camera_names")))
        if len(p("camera_topics")) != len(p("camera_names")):
            raise ValueError("camera_topics and camera_names must have the same length")
        self.dt = 1.0 / float(p("control_rate_hz"))
        # static parameters read once (the tick runs at control rate)
        self._expected_size = (int(p("expected_image_width")), int(p("expected_image_height")))
        self._refill_below = int(p("refill_below"))
        self._traj_points = int(p("trajectory_points"))
        self._deadline = float(p("inference_deadline_s"))
        self._num_steps = int(p("num_steps")) or None
        if policy is None:
            from omega_qvla_ros.runtime.policy import Policy
            if not p("pack_path"):
                raise ValueError("parameter pack_path is empty: point it at a model pack directory")
            policy = Policy.from_pack(p("pack_path"), device=p("device"), control_dt=self.dt)
        self.policy = policy
        # the pack's processor keeps its normalisation (the model was trained with it); the
        # node's own limits drive the safety filter. Both must name the same joints.
        if list(policy.processor.joint_names) != list(self.robot.joint_names):
            raise ValueError(f"pack joints {policy.processor.joint_names} differ from joint_names "
                             f"{self.robot.joint_names}")
        unknown = [c for c in policy.cameras if c not in self.robot.cameras]
        if len(unknown) == len(policy.cameras):
            raise ValueError(f"none of the model's cameras {policy.cameras} is in camera_names "
                             f"{self.robot.cameras}")
        self.policy.control_dt = self.dt
        self.supervisor = Supervisor(mode=p("mode"), dry_run=bool(p("dry_run")),
                                     stale_after=float(p("stale_timeout_s")),
                                     heartbeat_timeout=float(p("heartbeat_timeout_s")),
                                     fallback_to_teleop=bool(p("fallback_to_teleop")))
        self.scheduler = ChunkScheduler(self.dt, int(p("execute_horizon")), p("blend"), float(p("blend_new_weight")))
        self.safety = SafetyFilter(self.robot)
        self.lock = threading.Lock()
        self.images: dict[str, Stamped] = {}
        self.joints: Stamped | None = None
        self.teleop: Stamped | None = None
        self.heartbeat: float | None = None
        self.instruction: str = p("instruction")
        self.input_fault: dict[str, str] = {}
        self.policy_fault = ""
        self.pending = None
        self.last_command: np.ndarray | None = None
        self.stats = {"chunks": 0, "skipped_actions": 0, "limit_clips": 0, "delta_clips": 0,
                      "deadline_misses": 0, "inference_errors": 0, "published": 0, "dry_run_ticks": 0,
                      "inference_ms": 0.0, "observation_age_ms": 0.0, "divergence_max": 0.0,
                      "divergence_mean": 0.0}
        self.latencies: list[tuple[float, float]] = []  # (obs receipt time, first publish time)
        self._last_status = None
        self._decision = None
        self._first_point_pending: float | None = None
        # subscriptions
        for cam, topic in zip(p("camera_names"), p("camera_topics")):
            kind = CompressedImage if topic.endswith("/compressed") else Image
            self.create_subscription(kind, topic, lambda m, c=cam: self._on_image(c, m), qos_profile_sensor_data)
        self.create_subscription(JointState, p("joint_state_topic"), self._on_joints, RELIABLE)
        self.create_subscription(JointState, p("teleop_topic"), self._on_teleop, RELIABLE)
        self.create_subscription(String, p("instruction_topic"), self._on_instruction, LATCHED)
        self.create_subscription(Bool, "~/heartbeat", self._on_heartbeat, RELIABLE)
        self.create_subscription(Bool, "~/estop", self._on_estop, RELIABLE)
        # publications
        if p("output_layout") == "single":
            self.cmd_pubs = [(self.create_publisher(JointTrajectory, p("output_topic"), RELIABLE),
                              list(range(self.robot.dof)))]
        elif p("output_layout") == "per_arm":
            half = self.robot.dof // 2
            self.cmd_pubs = [(self.create_publisher(JointTrajectory, p("left_output_topic"), RELIABLE),
                              list(range(half))),
                             (self.create_publisher(JointTrajectory, p("right_output_topic"), RELIABLE),
                              list(range(half, self.robot.dof)))]
        else:
            raise ValueError("output_layout must be 'single' or 'per_arm'")
        self.chunk_pub = self.create_publisher(Float32MultiArray, "~/action_chunk", RELIABLE)
        self.status_pub = self.create_publisher(String, "~/status", LATCHED)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE)
        # services
        self.create_service(SetBool, "~/enable", self._srv_enable)
        self.create_service(Trigger, "~/reset_estop", self._srv_reset_estop)
        for mode in ("policy", "teleop", "shadow"):
            self.create_service(Trigger, f"~/mode/{mode}", lambda req, res, m=mode: self._srv_mode(m, res))
        self.add_on_set_parameters_callback(self._on_params)
        # worker + timers
        self._want = threading.Event()
        self._stop = threading.Event()
        self._busy = False
        self.worker = threading.Thread(target=self._work, name="omega_qvla_inference", daemon=True)
        self.worker.start()
        self.create_timer(self.dt, self._tick)
        self.create_timer(1.0 / float(p("diagnostics_rate_hz")), self._publish_diagnostics)
        self.get_logger().info(
            f"policy loaded (recipe {getattr(policy, 'recipe', '?')}, horizon {policy.horizon}); "
            f"mode {self.supervisor.mode}, dry_run {self.supervisor.dry_run}")

    # ---------------------------------------------------------------- helpers
    def _p(self, name):
        return self.get_parameter(name).value

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def destroy_node(self):
        self._stop.set()
        self._want.set()
        self.worker.join(timeout=5)
        return super().destroy_node()

    # ---------------------------------------------------------------- callbacks
    def _on_image(self, cam: str, msg) -> None:
        """Keep the newest message; decoding happens on the inference thread, for the few
        frames the policy uses (callbacks stay short, so the GIL stays free for inference)."""
        with self.lock:
            self.images[cam] = Stamped(msg, self.now())

    def _decode(self, cam: str, msg):
        rgb = image_to_rgb(msg)
        w, h = self._expected_size
        if (w and rgb.shape[1] != w) or (h and rgb.shape[0] != h):
            raise ValueError(f"size {rgb.shape[1]}×{rgb.shape[0]}, expected {w}×{h}")
        return rgb

    def _on_joints(self, msg: JointState) -> None:
        try:
            q = order_joints(self.robot.joint_names, list(msg.name), np.array(msg.position))
        except ObservationError as e:
            with self.lock:
                self.input_fault["joints"] = str(e)
            return
        with self.lock:
            self.joints = Stamped(q, self.now())
            self.input_fault.pop("joints", None)

    def _on_teleop(self, msg: JointState) -> None:
        try:
            q = order_joints(self.robot.joint_names, list(msg.name), np.array(msg.position))
        except ObservationError as e:
            with self.lock:
                self.input_fault["teleop"] = f"teleop: {e}"
            return
        with self.lock:
            self.teleop = Stamped(q, self.now())
            self.input_fault.pop("teleop", None)

    def _on_instruction(self, msg: String) -> None:
        with self.lock:
            self.instruction = msg.data

    def _on_heartbeat(self, msg: Bool) -> None:
        if msg.data:
            self.heartbeat = self.now()

    def _on_estop(self, msg: Bool) -> None:
        if msg.data:
            self.supervisor.trigger_estop("e-stop topic")
            self.get_logger().warning("e-stop latched")

    def _srv_enable(self, req, res):
        self.supervisor.dry_run = not req.data
        res.success, res.message = True, "actuation enabled" if req.data else "actuation disabled (dry run)"
        return res

    def _srv_reset_estop(self, req, res):
        self.supervisor.reset_estop()
        self.scheduler.clear()
        res.success, res.message = True, "e-stop reset"
        return res

    def _srv_mode(self, mode: str, res):
        self.supervisor.set_mode(mode)
        res.success, res.message = True, f"mode {mode}"
        return res

    def _on_params(self, params):
        from rcl_interfaces.msg import SetParametersResult
        for prm in params:
            if prm.name == "mode":
                if prm.value not in ("policy", "teleop", "shadow"):
                    return SetParametersResult(successful=False, reason="mode: policy | teleop | shadow")
                self.supervisor.set_mode(prm.value)
            elif prm.name == "dry_run":
                self.supervisor.dry_run = bool(prm.value)
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------- inference worker
    def _snapshot(self) -> RawObservation | None:
        with self.lock:
            if self.joints is None or not self.images:
                return None
            msgs = {c: s.value for c, s in self.images.items()}
            stamp = min([self.joints.t] + [s.t for s in self.images.values()])
            q = self.joints.value.copy()
        imgs = {}
        for cam, msg in msgs.items():
            try:
                imgs[cam] = self._decode(cam, msg)
                with self.lock:
                    self.input_fault.pop(cam, None)
            except ValueError as e:
                with self.lock:
                    self.input_fault[cam] = f"camera {cam}: {e}"
        if len(imgs) < len(msgs):
            return None
        return RawObservation(imgs, list(self.robot.joint_names), q, self.instruction, stamp)

    def _work(self) -> None:
        while not self._stop.is_set():
            if not self._want.wait(timeout=0.1):
                continue
            self._want.clear()
            if self._stop.is_set():
                break
            raw = self._snapshot()
            if raw is None:
                self._busy = False
                continue
            try:
                chunk = self.policy.infer(raw, num_steps=self._num_steps)
                if not np.all(np.isfinite(chunk.positions)):
                    fault = "policy output has NaN/Inf"
                    chunk = None
                elif chunk.inference_s > self._deadline:
                    fault = f"deadline miss ({1e3 * chunk.inference_s:.0f} ms > {1e3 * self._deadline:.0f} ms)"
                    self.stats["deadline_misses"] += 1
                    chunk = None
                else:
                    fault = ""
            except Exception as e:  # noqa: BLE001 - any failure must fall back, not kill the node
                chunk, fault = None, f"inference error: {type(e).__name__}: {e}"
                self.stats["inference_errors"] += 1
            with self.lock:
                self.pending = (chunk, raw.stamp) if chunk is not None else None
                self.policy_fault = fault
            self._busy = False

    def _request_inference(self) -> None:
        if not self._busy:
            self._busy = True
            self._want.set()

    # ---------------------------------------------------------------- control tick
    def _age(self, s: Stamped | None, now: float) -> float | None:
        return None if s is None else now - s.t

    def _tick(self) -> None:
        now = self.now()
        with self.lock:
            cams = [self.images.get(c) for c in self.policy.cameras if c in self.robot.cameras]
            cam_age = None if any(c is None for c in cams) else max(now - c.t for c in cams)
            joint_age, teleop_age = self._age(self.joints, now), self._age(self.teleop, now)
            pending, self.pending = self.pending, None
            policy_fault = self.policy_fault
            input_fault = "; ".join(self.input_fault.values())
        hb_age = None if self.heartbeat is None else now - self.heartbeat
        if pending is not None:
            chunk, obs_t = pending
            self.stats["skipped_actions"] += self.scheduler.add(chunk, now)
            self.stats["chunks"] += 1
            self.stats["inference_ms"] = 1e3 * chunk.inference_s
            self.stats["observation_age_ms"] = 1e3 * (now - obs_t)
            self._publish_chunk(chunk)
            self._first_point_pending = obs_t
        fault = policy_fault or input_fault
        d = self.supervisor.decide(Inputs(now, cam_age, joint_age, teleop_age, hb_age, fault))
        self._decision = d
        if d.run_policy and self.scheduler.remaining(now) <= self._refill_below:
            self._request_inference()
        start = self.last_command if self.last_command is not None else (
            self.joints.value if self.joints is not None else None)
        points, times = None, None
        if d.source == "policy":
            ts, ps = self.scheduler.window(now, self._traj_points)
            if len(ts):
                times, points = np.maximum(ts - now, 0.0) + self.dt, ps
        elif d.source == "teleop" and self.teleop is not None:
            times, points = np.array([self.dt]), self.teleop.value[None]
        if self.supervisor.mode == "shadow" and self.teleop is not None:
            cur = self.scheduler.current(now)
            if cur is not None:
                div = np.abs(cur - self.teleop.value)
                self.stats["divergence_max"] = float(div.max())
                self.stats["divergence_mean"] = float(div.mean())
        if points is None:  # hold: the last command (or the measured position), never zeros
            if start is None:
                self._update_status(d)
                return
            times, points = np.array([self.dt]), np.asarray(start)[None]
        if start is None:
            start = points[0]
        res = self.safety.filter(points, start)
        if res.points is None:
            with self.lock:
                self.policy_fault = f"unsafe command rejected: {res.reason}"
            res = self.safety.filter(np.asarray(start)[None], start)
            times = np.array([self.dt])
        self.stats["limit_clips"] += res.limit_clips
        self.stats["delta_clips"] += res.delta_clips
        times = np.maximum.accumulate(times + np.arange(len(times)) * 1e-6)  # strictly increasing
        if d.actuate:
            for pub, idx in self.cmd_pubs:
                pub.publish(joint_trajectory([self.robot.joint_names[i] for i in idx], times, res.points[:, idx]))
            self.last_command = res.points[0]
            self.stats["published"] += 1
            if d.source == "policy" and getattr(self, "_first_point_pending", None) is not None:
                self.latencies.append((self._first_point_pending, self.now()))
                self._first_point_pending = None
        else:
            self.stats["dry_run_ticks"] += 1
        self._update_status(d)

    # ---------------------------------------------------------------- outputs
    def _publish_chunk(self, chunk) -> None:
        m = Float32MultiArray()
        h, n = chunk.positions.shape
        m.layout.dim = [MultiArrayDimension(label="horizon", size=h, stride=h * n),
                        MultiArrayDimension(label="joint", size=n, stride=n)]
        m.data = [float(x) for x in chunk.positions.reshape(-1)]
        self.chunk_pub.publish(m)

    def status_dict(self) -> dict:
        d = self._decision
        return {"mode": self.supervisor.mode, "source": d.source if d else "none",
                "actuating": bool(d and d.actuate), "dry_run": self.supervisor.dry_run,
                "estop": self.supervisor.estop, "reason": d.reason if d else "starting"}

    def _update_status(self, d) -> None:
        s = self.status_dict()
        if s != self._last_status:
            self._last_status = s
            self.status_pub.publish(String(data=json.dumps(s)))

    def _publish_diagnostics(self) -> None:
        s = self.status_dict()
        st = DiagnosticStatus(name="omega_qvla_policy", hardware_id="policy")
        st.level = DiagnosticStatus.OK if not s["reason"] else (
            DiagnosticStatus.ERROR if s["source"] == "hold" else DiagnosticStatus.WARN)
        st.message = s["reason"] or f"{s['source']} driving" + (" (dry run)" if s["dry_run"] else "")
        vals = {**s, **self.stats, "recipe": getattr(self.policy, "recipe", "?")}
        st.values = [KeyValue(key=k, value=str(v)) for k, v in vals.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)


def main(argv: list[str] | None = None) -> int:
    # inference runs thousands of short torch ops on the worker thread, each re-taking the
    # GIL; a short switch interval keeps executor threads from stalling it (convoy effect)
    sys.setswitchinterval(0.0005)
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    try:
        node = PolicyNode()
        from rclpy.executors import MultiThreadedExecutor
        ex = MultiThreadedExecutor(num_threads=2)
        ex.add_node(node)
        ex.spin()
    except KeyboardInterrupt:
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
