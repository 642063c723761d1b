"""A loopback rig around PolicyNode (real rclpy): publishers of synthetic robot inputs
and recorders of everything the node says, on one executor spinning in a background
thread. The tests and the node-scheduling benchmark drive the node through it. DDS must
be on loopback before it is used (ros/dds.py; the tests' conftest and the benchmark set
it)."""
from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float32MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from omega_qvla_ros.ros.policy_node import PolicyNode
from omega_qvla_ros.ros.spinner import BackgroundSpin
from omega_qvla_ros.runtime.robot import ALOHA_CAMERAS, ALOHA_JOINTS

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)


class Harness:
    def __init__(self, pack: str, policy_wrapper=None, feed_hz: float = 30.0, **params) -> None:
        self.feed_hz = feed_hz
        # as policy_node.main() does: short GIL slices keep the executor threads responsive
        # while the inference thread runs torch (all of this shares one process here)
        sys.setswitchinterval(0.0005)
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        params.setdefault("control_rate_hz", 10.0)
        overrides = [Parameter("pack_path", value=str(pack))] + [Parameter(k, value=v) for k, v in params.items()]
        policy = None
        if policy_wrapper is not None:
            from omega_qvla_ros.runtime.policy import Policy
            policy = policy_wrapper(Policy.from_pack(pack))
        self.node = PolicyNode(policy=policy, parameter_overrides=overrides, context=self.ctx)
        self.io = rclpy.create_node("harness", context=self.ctx)
        io = self.io
        self.pub_img = {c: io.create_publisher(Image, f"/{c}/image_raw", qos_profile_sensor_data) for c in ALOHA_CAMERAS}
        self.pub_js = io.create_publisher(JointState, "/joint_states", 10)
        self.pub_teleop = io.create_publisher(JointState, "/teleop/joint_states", 10)
        self.pub_instr = io.create_publisher(String, "/instruction", LATCHED)
        self.pub_hb = io.create_publisher(Bool, "/omega_qvla_policy/heartbeat", 10)
        self.pub_estop = io.create_publisher(Bool, "/omega_qvla_policy/estop", 10)
        self.traj: list[tuple[float, JointTrajectory]] = []
        self.chunks: list[Float32MultiArray] = []
        self.status: list[dict] = []
        self.diag: list[dict] = []
        self.sent_obs: list[float] = []
        io.create_subscription(JointTrajectory, "/bimanual_controller/joint_trajectory",
                               lambda m: self.traj.append((time.monotonic(), m)), 10)
        io.create_subscription(Float32MultiArray, "/omega_qvla_policy/action_chunk", self.chunks.append, 10)
        io.create_subscription(String, "/omega_qvla_policy/status", lambda m: self.status.append(json.loads(m.data)), LATCHED)
        io.create_subscription(DiagnosticArray, "/diagnostics",
                               lambda m: self.diag.append({kv.key: kv.value for kv in m.status[0].values}
                                                          | {"_message": m.status[0].message,
                                                             "_level": int.from_bytes(m.status[0].level, "little")
                                                             if isinstance(m.status[0].level, bytes) else int(m.status[0].level)}), 10)
        self.ex = SingleThreadedExecutor(context=self.ctx)  # as policy_node.main() spins the node
        self.ex.add_node(self.node)
        self.ex.add_node(io)
        self.spin = BackgroundSpin(self.ex).start()
        self.feed_on = {"images": True, "joints": True, "teleop": False, "heartbeat": False}
        self.image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        self.image_encoding = "rgb8"
        self.joints = HOME.copy()
        self.joint_names = list(ALOHA_JOINTS)
        self.teleop = HOME.copy()
        self._stop = threading.Event()
        self.feeder = threading.Thread(target=self._feed, daemon=True)
        self.feeder.start()
        self.pub_instr.publish(String(data="transfer the cube"))

    def _feed(self) -> None:
        while not self._stop.is_set():
            stamp = self.io.get_clock().now().to_msg()
            if self.feed_on["images"]:
                img = self.image
                for c, pub in self.pub_img.items():
                    pub.publish(Image(height=img.shape[0], width=img.shape[1], encoding=self.image_encoding,
                                      step=img.shape[1] * 3, data=img.tobytes()))
            if self.feed_on["joints"]:
                js = JointState(name=list(self.joint_names), position=[float(x) for x in self.joints])
                js.header.stamp = stamp
                self.pub_js.publish(js)
                self.sent_obs.append(time.monotonic())
            if self.feed_on["teleop"]:
                self.pub_teleop.publish(JointState(name=list(ALOHA_JOINTS), position=[float(x) for x in self.teleop]))
            if self.feed_on["heartbeat"]:
                self.pub_hb.publish(Bool(data=True))
            time.sleep(1 / self.feed_hz)

    def call(self, srv_type, name: str, request, timeout: float = 5.0):
        cli = self.io.create_client(srv_type, name)
        assert cli.wait_for_service(timeout_sec=timeout), name
        fut = cli.call_async(request)
        t0 = time.monotonic()
        while not fut.done() and time.monotonic() - t0 < timeout:
            time.sleep(0.01)
        assert fut.done(), name
        return fut.result()

    def wait(self, pred, timeout: float = 10.0, what: str = "condition") -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if pred():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; last status {self.status[-1:]}, "
                             f"last diag message {self.diag[-1]['_message'] if self.diag else None}")

    def close(self) -> None:
        self._stop.set()
        self.feeder.join(timeout=2)
        self.spin.stop()
        self.node.destroy_node()
        self.io.destroy_node()
        rclpy.shutdown(context=self.ctx)

    def last_status(self) -> dict:
        return self.status[-1] if self.status else {}

    def traj_since(self, t0: float) -> list[JointTrajectory]:
        return [m for t, m in list(self.traj) if t >= t0]
