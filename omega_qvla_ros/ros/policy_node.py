"""`policy_node`: the rclpy node around the runtime.

Subscribes to cameras, joint states, instruction, teleop commands, operator heartbeat
and e-stop; runs inference on worker threads (the executor never waits for them); a
fixed-rate timer runs the shared controller (runtime/controller.py: time-aligned chunk
schedule, supervisor, safety filter, fallback) and publishes JointTrajectory commands —
only when actuation is enabled (dry run by default). Status and diagnostics say what
drives the arm and why, per tick: "starved" (WARN) when the policy has no fresh action.
Before its first tick it warms the policy up on a synthetic observation: a policy that
cannot run stops the node there, a latency it cannot use is said at start-up.
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

from omega_qvla_ros.runtime.controller import ControlConfig, Controller, Tick
from omega_qvla_ros.runtime.preprocess import ObservationError, RawObservation, order_joints
from omega_qvla_ros.runtime.robot import ALOHA_CAMERAS, ALOHA_JOINTS, RobotSpec
from omega_qvla_ros.runtime.supervisor import Inputs, Supervisor

from .conversions import image_to_rgb, joint_trajectory
from .spinner import shutdown_executor

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)

# name -> default; every YAML key and launch argument must be one of these (tested)
PARAMETERS: dict[str, object] = {
    "pack_path": "",
    "device": "auto",
    "kernel_weights": "auto",
    "cuda_graphs": True,
    "precision": "float32",
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
    "replan_period_s": 0.5,
    "request_margin_s": 0.1,
    "max_inflight": 1,
    "latency_prior_s": 0.5,
    "trajectory_points": 10,
    "blend": "crossfade",
    "blend_new_weight": 0.7,
    "blend_window_s": 0.2,
    "joint_limit_tolerance": 0.1,
    "stale_timeout_s": 0.5,
    "heartbeat_timeout_s": 0.0,
    "inference_deadline_s": 2.0,
    "fallback_to_teleop": True,
    "num_steps": 0,
    "diagnostics_rate_hz": 2.0,
    "warm_up": True,
    "inference_process": True,
}


@dataclass
class Stamped:
    value: object
    t: float


@dataclass
class Request:
    """One observation sent to inference: the newest messages (decoded on the worker)."""

    stamp: float  # observation time: the oldest of the inputs used
    images: dict
    joints: np.ndarray
    instruction: str


class PolicyNode(Node):
    def __init__(self, policy=None, parameter_overrides: list[Parameter] | None = None,
                 context=None) -> None:
        self._stop = threading.Event()  # set before anything can fail: destroy_node needs it
        self.workers: list[threading.Thread] = []
        super().__init__("omega_qvla_policy", parameter_overrides=parameter_overrides or [], context=context)
        for name, default in PARAMETERS.items():
            self.declare_parameter(name, default)
        p = self._p
        self.robot = RobotSpec(joint_names=list(p("joint_names")), lower=p("joint_lower"),
                               upper=p("joint_upper"), max_delta=p("max_delta"),
                               cameras=list(p("camera_names")))
        if len(p("camera_topics")) != len(p("camera_names")):
            raise ValueError("camera_topics and camera_names must have the same length")
        rate = float(p("control_rate_hz"))
        if not rate > 0:
            raise ValueError(f"control_rate_hz must be > 0, got {rate}")
        self.dt = 1.0 / rate
        # static parameters read once (the tick runs at control rate)
        self._expected_size = (int(p("expected_image_width")), int(p("expected_image_height")))
        self._deadline = float(p("inference_deadline_s"))
        self._num_steps = int(p("num_steps")) or None
        self._tolerance = float(p("joint_limit_tolerance"))
        self._owns_policy = policy is None
        self.policy = None
        if policy is None:
            if not p("pack_path"):
                raise ValueError("parameter pack_path is empty: point it at a model pack directory")
            kw = dict(device=p("device"), control_dt=self.dt, kernel_weights=p("kernel_weights"),
                      cuda_graphs=None if p("cuda_graphs") else False, precision=p("precision"))
            if p("inference_process"):  # its own interpreter: no GIL shared with the executor
                from omega_qvla_ros.runtime.policy_process import PolicyProcess
                policy = PolicyProcess(p("pack_path"), **kw)
            else:
                from omega_qvla_ros.runtime.policy import Policy
                policy = Policy.from_pack(p("pack_path"), **kw)
        self.policy = policy
        try:
            self._start(p, policy)
        except BaseException:
            self._close_policy()  # a half-started node leaves no inference process behind
            raise

    def _start(self, p, policy) -> None:
        """Everything after the policy is there: checks against it, warm-up, controller,
        topics, services, workers and timers."""
        # the pack's processor keeps its normalisation (the model was trained with it); the
        # node's own limits drive the safety filter. Both must name the same joints.
        if list(policy.joint_names) != list(self.robot.joint_names):
            raise ValueError(f"pack joints {policy.joint_names} differ from joint_names "
                             f"{self.robot.joint_names}")
        # the model's cameras this robot has (the others are missing cameras to the model)
        self.cameras = [c for c in policy.cameras if c in self.robot.cameras]
        if not self.cameras:
            raise ValueError(f"none of the model's cameras {policy.cameras} is in camera_names "
                             f"{self.robot.cameras}")
        self.policy.control_dt = self.dt
        self.stats = {"chunks": 0, "deadline_misses": 0, "inference_errors": 0, "published": 0, "dry_run_ticks": 0,
                      "inference_ms": 0.0, "observation_age_ms": 0.0, "latency_estimate_ms": 0.0,
                      "divergence_max": 0.0, "divergence_mean": 0.0}
        self.startup_warning = ""
        warm = self._warm_up(str(p("instruction"))) if p("warm_up") else None
        supervisor = Supervisor(mode=p("mode"), dry_run=bool(p("dry_run")),
                                stale_after=float(p("stale_timeout_s")),
                                heartbeat_timeout=float(p("heartbeat_timeout_s")),
                                fallback_to_teleop=bool(p("fallback_to_teleop")))
        self.controller = Controller(self.robot, ControlConfig(
            dt=self.dt, blend=p("blend"), blend_new_weight=float(p("blend_new_weight")),
            blend_window_s=float(p("blend_window_s")), trajectory_points=int(p("trajectory_points")),
            replan_period_s=float(p("replan_period_s")), request_margin_s=float(p("request_margin_s")),
            max_inflight=int(p("max_inflight")),
            latency_prior_s=max(float(p("latency_prior_s")), warm or 0.0),
            horizon=policy.horizon), supervisor)
        self.supervisor = supervisor
        self.lock = threading.Lock()
        self.images: dict[str, Stamped] = {}
        self.joints: Stamped | None = None
        self.teleop: Stamped | None = None
        self.heartbeat: float | None = None
        self.instruction: str = p("instruction")
        self.input_fault: dict[str, str] = {}
        self.results: list[tuple[float, object, str]] = []  # (obs stamp, chunk or None, fault)
        self._asked: dict[float, float] = {}  # obs stamp -> when it went to inference (monotonic)
        self.latencies: list[tuple[float, float]] = []  # (obs receipt time, first publish time)
        self.tick_log: list[Tick] = []  # the recent ticks (for tests and diagnostics)
        self._last_status = None
        self._status_t = 0.0
        self._tick: Tick | None = None
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
        # inference workers + timers
        self._queue: list[Request] = []
        self._work_ready = threading.Condition()
        for i in range(self.controller.config.max_inflight):
            w = threading.Thread(target=self._work, name=f"omega_qvla_inference_{i}", daemon=True)
            w.start()
            self.workers.append(w)
        self.create_timer(self.dt, self._tick_cb)
        self.create_timer(1.0 / float(p("diagnostics_rate_hz")), self._publish_diagnostics)
        self.get_logger().info(
            f"policy loaded (recipe {getattr(policy, 'recipe', '?')}, horizon {policy.horizon}, cameras "
            f"{self.cameras}); mode {self.supervisor.mode}, dry_run {self.supervisor.dry_run}")

    # ---------------------------------------------------------------- helpers
    def _warm_up(self, instruction: str) -> float:
        """Synthetic chunks before the first tick (Policy.synthetic_observation), through
        the same policy call as real chunks: the first real chunk then runs at its steady
        speed (on CUDA: replays the captured graphs), a pack that loads but cannot run stops
        the node here instead of on the robot, and a latency the node cannot use is said
        now, loudly, not found at the first deadline miss. The first chunk pays one-time
        costs, so a slow one is measured again before anything is said. Returns the call's
        wall time (the latency prior); the deadline is checked on the chunk's inference
        time, as for real chunks."""
        log = self.get_logger()
        span = self.policy.horizon * self.dt
        raw = self.policy.synthetic_observation(instruction, self.cameras)
        walls, chunk = [], None
        for _ in range(2):
            t0 = time.perf_counter()
            chunk = self.policy.infer(raw, num_steps=self._num_steps)
            walls.append(time.perf_counter() - t0)
            if not np.all(np.isfinite(chunk.positions)):
                raise ValueError("the policy's chunk for a synthetic observation (black images, joints at "
                                 "mid-range) has NaN/Inf: the pack is broken")
            if getattr(self.policy, "captures_graphs", False) and len(walls) == 1:
                log.info(f"CUDA graphs captured in {walls[0]:.1f} s")
            if chunk.inference_s <= self._deadline and walls[-1] <= span:
                break
        lat, inference = walls[-1], chunk.inference_s
        self.stats["warm_up_ms"] = round(1e3 * lat, 1)
        log.info(f"warm-up: {', '.join(f'{1e3 * t:.0f}' for t in walls)} ms per chunk on a synthetic observation "
                 f"(chunk covers {span:.2f} s, inference_deadline_s {self._deadline:g})")
        if inference > self._deadline:
            self.startup_warning = (f"inference takes {inference:.2f} s, over inference_deadline_s "
                                    f"{self._deadline:g}: every chunk will be dropped as a deadline miss and the "
                                    "arm held; raise inference_deadline_s or use a faster device or pack")
            log.error(self.startup_warning)
        elif lat > span:
            self.startup_warning = (f"a chunk takes {lat:.2f} s but covers {span:.2f} s "
                                    f"({self.policy.horizon} actions at {1 / self.dt:g} Hz): the arm will be "
                                    "starved (held) between chunks")
            log.warning(self.startup_warning)
        return lat

    def _p(self, name):
        return self.get_parameter(name).value

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def destroy_node(self):
        """Stop the workers; safe on a node whose construction failed half way."""
        self._stop.set()
        cond = getattr(self, "_work_ready", None)
        if cond is not None:
            with cond:
                cond.notify_all()
        for w in self.workers:
            w.join(timeout=5)
        self._close_policy()
        return super().destroy_node()

    def _close_policy(self) -> None:
        """End the inference process, where the node started one (a policy handed in is
        its caller's to close)."""
        if getattr(self, "_owns_policy", False) and hasattr(self.policy, "close"):
            self.policy.close()

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

    def _joint_state(self, msg: JointState) -> np.ndarray:
        """Positions in robot order; malformed or out-of-limit states raise ObservationError."""
        q = order_joints(self.robot.joint_names, list(msg.name), np.asarray(msg.position, dtype=np.float64))
        tol = self._tolerance
        bad = [(n, v, lo, hi) for n, v, lo, hi in zip(self.robot.joint_names, q, self.robot.lower, self.robot.upper)
               if v < lo - tol or v > hi + tol]
        if bad:
            n, v, lo, hi = bad[0]
            raise ObservationError(f"joint state out of limits: {n}={v:.3f} (limits [{lo:.3f}, {hi:.3f}]"
                                   + (f", +{len(bad) - 1} more joints)" if len(bad) > 1 else ")"))
        return q

    def _on_joints(self, msg: JointState) -> None:
        try:
            q = self._joint_state(msg)
        except ObservationError as e:
            with self.lock:
                self.input_fault["joints"] = f"joints: {e}"
            return
        with self.lock:
            self.joints = Stamped(q, self.now())
            self.input_fault.pop("joints", None)

    def _on_teleop(self, msg: JointState) -> None:
        try:
            q = self._joint_state(msg)
        except ObservationError as e:
            with self.lock:
                self.input_fault["teleop"] = f"teleop: {e}"
                self.teleop = None
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
        self.controller.reset()
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

    # ---------------------------------------------------------------- inference workers
    def _snapshot(self) -> Request | None:
        """The newest inputs, if complete (called on the tick, under no lock)."""
        with self.lock:
            if self.joints is None or not any(c in self.images for c in self.cameras):
                return None
            msgs = {c: self.images[c] for c in self.cameras if c in self.images}
            stamp = min([self.joints.t] + [s.t for s in msgs.values()])
            return Request(stamp, {c: s.value for c, s in msgs.items()}, self.joints.value.copy(), self.instruction)

    def _infer(self, req: Request) -> tuple[object, str]:
        imgs = {}
        for cam, msg in req.images.items():
            try:
                imgs[cam] = self._decode(cam, msg)
                with self.lock:
                    self.input_fault.pop(cam, None)
            except ValueError as e:
                reason = f"camera {cam}: {e}" if str(e) else f"camera {cam}: undecodable image"
                with self.lock:
                    self.input_fault[cam] = reason
                return None, reason
        raw = RawObservation(imgs, list(self.robot.joint_names), req.joints, req.instruction, req.stamp)
        try:
            chunk = self.policy.infer(raw, num_steps=self._num_steps)
        except ObservationError as e:
            return None, f"observation rejected: {e}"
        except Exception as e:  # noqa: BLE001 - any failure must fall back, not kill the node
            self.stats["inference_errors"] += 1
            return None, f"inference error: {type(e).__name__}: {e}"
        if not np.all(np.isfinite(chunk.positions)):
            return None, "policy output has NaN/Inf"
        if chunk.inference_s > self._deadline:
            self.stats["deadline_misses"] += 1
            return None, f"deadline miss ({1e3 * chunk.inference_s:.0f} ms > {1e3 * self._deadline:.0f} ms)"
        chunk.stamp = req.stamp
        return chunk, ""

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._work_ready:
                while not self._queue and not self._stop.is_set():
                    self._work_ready.wait(timeout=0.1)
                if self._stop.is_set():
                    return
                req = self._queue.pop(0)
            chunk, fault = self._infer(req)
            with self.lock:
                self.results.append((req.stamp, chunk, fault))
                self._asked.pop(req.stamp, None)

    def _request_inference(self) -> None:
        req = self._snapshot()
        if req is None:
            return
        self.controller.request_sent(req.stamp)
        with self.lock:
            self._asked[req.stamp] = time.monotonic()
        with self._work_ready:
            self._queue.append(req)
            self._work_ready.notify()

    # ---------------------------------------------------------------- control tick
    def _age(self, s: Stamped | None, now: float) -> float | None:
        return None if s is None else now - s.t

    def _tick_cb(self) -> None:
        now = self.now()
        with self.lock:
            cams = [self.images.get(c) for c in self.cameras]
            cam_age = None if any(c is None for c in cams) else max(now - c.t for c in cams)
            joint_age, teleop_age = self._age(self.joints, now), self._age(self.teleop, now)
            results, self.results = self.results, []
            # a malformed teleop stream takes the fallback away (self.teleop is None then); it
            # does not stop the policy, so it is not a fault of the policy's inputs
            input_fault = "; ".join(v for k, v in self.input_fault.items() if k != "teleop")
            waited = time.monotonic() - min(self._asked.values()) if self._asked else 0.0
            measured = None if self.joints is None else self.joints.value
            teleop = None if self.teleop is None else self.teleop.value
        if waited > 2 * self._deadline:  # a call that hangs (not one that fails) holds loudly too
            input_fault = "; ".join(x for x in (input_fault, f"inference stuck: no answer for {waited:.1f} s "
                                                f"(twice inference_deadline_s is {2 * self._deadline:g} s)") if x)
        ctl = self.controller
        for stamp, chunk, fault in results:
            if chunk is None:
                ctl.inference_failed(stamp, fault)
                continue
            rec = ctl.add_chunk(chunk, now)
            self.stats["chunks"] += 1
            self.stats["inference_ms"] = 1e3 * chunk.inference_s
            self.stats["observation_age_ms"] = 1e3 * rec.latency_s
            self._publish_chunk(chunk)
            if rec.fresh:
                self._first_point_pending = stamp
        hb_age = None if self.heartbeat is None else now - self.heartbeat
        tick = ctl.step(now, Inputs(now, cam_age, joint_age, teleop_age, hb_age), measured=measured,
                        teleop=teleop, input_fault=input_fault)
        self._tick = tick
        self.tick_log.append(tick)
        del self.tick_log[:-2000]
        self.stats["latency_estimate_ms"] = 1e3 * ctl.latency.estimate
        if tick.divergence is not None and self.supervisor.mode == "shadow":
            self.stats["divergence_max"] = float(tick.divergence.max())
            self.stats["divergence_mean"] = float(tick.divergence.mean())
        if self.supervisor.mode in ("policy", "shadow") and not self.supervisor.estop and ctl.want_inference(now):
            self._request_inference()
        if tick.points is not None and tick.actuate:
            for pub, idx in self.cmd_pubs:
                pub.publish(joint_trajectory([self.robot.joint_names[i] for i in idx], tick.times,
                                             tick.points[:, idx]))
            self.stats["published"] += 1
            if tick.source == "policy" and self._first_point_pending is not None:
                self.latencies.append((self._first_point_pending, self.now()))
                self._first_point_pending = None
        elif not tick.actuate:
            self.stats["dry_run_ticks"] += 1
        self._update_status()

    # ---------------------------------------------------------------- outputs
    def _publish_chunk(self, chunk) -> None:
        m = Float32MultiArray()
        h, n = chunk.positions.shape
        m.layout.dim = [MultiArrayDimension(label="horizon", size=h, stride=h * n),
                        MultiArrayDimension(label="joint", size=n, stride=n)]
        m.data = [float(x) for x in chunk.positions.reshape(-1)]
        self.chunk_pub.publish(m)

    def status_dict(self) -> dict:
        t = self._tick
        return {"mode": self.supervisor.mode, "source": t.source if t else "none",
                "state": t.state if t else "starting", "level": t.level if t else "warn",
                "actuating": bool(t and t.actuate), "dry_run": self.supervisor.dry_run,
                "estop": self.supervisor.estop, "reason": t.reason if t else "starting"}

    def _update_status(self) -> None:
        """Publish the status when it changes: at once when what drives the arm changes,
        at most twice a second when only the reason's numbers move (ages, latency)."""
        s = self.status_dict()
        last = self._last_status
        if s == last:
            return
        key = ("mode", "source", "state", "level", "actuating", "dry_run", "estop")
        now = time.monotonic()
        if last is not None and all(s[k] == last[k] for k in key) and now - self._status_t < 0.5:
            return
        self._last_status, self._status_t = s, now
        self.status_pub.publish(String(data=json.dumps(s)))

    def _publish_diagnostics(self) -> None:
        s = self.status_dict()
        st = DiagnosticStatus(name="omega_qvla_policy", hardware_id="policy")
        st.level = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN}.get(s["level"], DiagnosticStatus.ERROR)
        st.message = s["reason"] or f"{s['source']} driving" + (" (dry run)" if s["dry_run"] else "")
        vals = {**s, **self.stats, **self.controller.stats, "recipe": getattr(self.policy, "recipe", "?"),
                "teleop_fault": self.input_fault.get("teleop", ""), "startup_warning": self.startup_warning}
        st.values = [KeyValue(key=k, value=str(v)) for k, v in vals.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)


def main(argv: list[str] | None = None) -> int:
    """Run the node; a node that cannot start logs one line and exits 1."""
    # inference on a worker thread (inference_process false) runs thousands of short torch
    # ops, each re-taking the GIL; a short switch interval keeps the executor from stalling
    # it (convoy effect)
    sys.setswitchinterval(0.0005)
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = ex = None
    code = 0
    try:
        try:
            node = PolicyNode()
        except Exception as e:  # noqa: BLE001 - a bad pack / parameter: one clear line, exit 1
            rclpy.logging.get_logger("omega_qvla_policy").error(f"cannot start: {type(e).__name__}: {e}")
            return 1
        from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

        # one thread: every callback is short (inference runs on the node's own workers),
        # and rclpy's MultiThreadedExecutor spent ~80% of a core in its dispatch loop with the
        # node fed at 30/50 Hz (this one ~15%), which cost the tick 10 of its 50 Hz on 2 cores
        ex = SingleThreadedExecutor()
        ex.add_node(node)
        try:
            ex.spin()
        except ExternalShutdownException:  # the context shut down from outside (e.g. by a signal)
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if ex is not None:  # callbacks still queued run before the node they use is destroyed
            shutdown_executor(ex)
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
