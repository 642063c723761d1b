"""Real rclpy over Fast DDS, confined to loopback: JointState and Image round trips."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from omega_qvla_ros.ros.dds import is_localhost_dds

rclpy = pytest.importorskip("rclpy")
from sensor_msgs.msg import Image, JointState  # noqa: E402


def test_environment_is_localhost_only():
    assert is_localhost_dds()
    assert 1 <= int(os.environ["ROS_DOMAIN_ID"]) <= 100


def _spin_until(executor, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def test_joint_state_and_image_exchange():
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node("dds_roundtrip", context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        got_js, got_img = [], []
        node.create_subscription(JointState, "rt/joint_states", got_js.append, 10)
        node.create_subscription(Image, "rt/image", got_img.append, qos_profile_sensor_data)
        pub_js = node.create_publisher(JointState, "rt/joint_states", 10)
        pub_img = node.create_publisher(Image, "rt/image", qos_profile_sensor_data)

        js = JointState()
        js.name = [f"j{i}" for i in range(14)]
        js.position = [0.1 * i for i in range(14)]
        rgb = np.arange(24 * 32 * 3, dtype=np.uint8).reshape(24, 32, 3)
        img = Image(height=24, width=32, encoding="rgb8", step=32 * 3, data=rgb.tobytes())

        def publish_until_received():
            pub_js.publish(js)
            pub_img.publish(img)
            ex.spin_once(timeout_sec=0.05)
            return bool(got_js) and bool(got_img)

        deadline = time.monotonic() + 10.0
        while not publish_until_received() and time.monotonic() < deadline:
            pass
        assert got_js and got_img, "no message made the round trip over loopback DDS"
        assert list(got_js[0].name) == js.name
        np.testing.assert_allclose(got_js[0].position, js.position)
        back = np.frombuffer(bytes(got_img[0].data), np.uint8).reshape(24, 32, 3)
        assert np.array_equal(back, rgb)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_cross_process_joint_state():
    """A subprocess (inheriting the localhost env) publishes; this process receives."""
    from rclpy.executors import SingleThreadedExecutor

    code = (
        "import rclpy,time\n"
        "from sensor_msgs.msg import JointState\n"
        "rclpy.init(); n=rclpy.create_node('xp_pub')\n"
        "p=n.create_publisher(JointState,'xp/joint_states',10)\n"
        "m=JointState(); m.name=['a','b']; m.position=[1.5,-2.5]\n"
        "t=time.monotonic()\n"
        "while time.monotonic()-t<8: p.publish(m); rclpy.spin_once(n,timeout_sec=0.05)\n"
        "rclpy.shutdown()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ))
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node("xp_sub", context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        got = []
        node.create_subscription(JointState, "xp/joint_states", got.append, 10)
        assert _spin_until(ex, lambda: bool(got), timeout=8.0)
        assert list(got[0].name) == ["a", "b"]
        assert list(got[0].position) == [1.5, -2.5]
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
        proc.terminate()
        proc.wait(timeout=10)
