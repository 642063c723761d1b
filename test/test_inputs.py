"""Input validation: images (encoding, step, length, row padding, corrupt compression),
joint states (duplicates, out of limits), camera staleness on the policy's own
cameras, and a fuzz run of malformed inputs through the real node: it keeps running,
every command it sends is finite, inside the limits and delta-clamped, and every hold
says why."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool

from omega_qvla_ros.ros.conversions import image_to_rgb
from omega_qvla_ros.ros.rig import HOME, Harness
from omega_qvla_ros.runtime.robot import ALOHA_JOINTS, RobotSpec


def _img(h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _msg(arr, encoding="rgb8", pad=0, data=None):
    h, w = arr.shape[:2]
    ch = arr.shape[2] if arr.ndim == 3 else 1
    rows = arr.reshape(h, w * ch * arr.dtype.itemsize // arr.dtype.itemsize)
    buf = np.zeros((h, w * ch * arr.dtype.itemsize + pad), np.uint8)
    buf[:, :w * ch * arr.dtype.itemsize] = np.frombuffer(rows.tobytes(), np.uint8).reshape(h, -1)
    return Image(height=h, width=w, encoding=encoding, step=buf.shape[1],
                 data=buf.tobytes() if data is None else data)


def test_raw_images_decode_with_row_padding_and_encodings():
    a = _img()
    assert np.array_equal(image_to_rgb(_msg(a)), a)
    assert np.array_equal(image_to_rgb(_msg(a, pad=7)), a)  # padded rows: padding never read
    assert np.array_equal(image_to_rgb(_msg(a[..., ::-1].copy(), "bgr8", pad=3)), a)
    rgba = np.concatenate([a, np.full(a.shape[:2] + (1,), 9, np.uint8)], axis=2)
    assert np.array_equal(image_to_rgb(_msg(rgba, "rgba8")), a)
    g = a[..., 0].copy()
    assert np.array_equal(image_to_rgb(_msg(g[..., None], "mono8", pad=2)), np.repeat(g[..., None], 3, 2))
    g16 = (g.astype(np.uint16) << 8) | 0x55
    m = Image(height=6, width=5, encoding="mono16", step=10, is_bigendian=0,
              data=g16.astype("<u2").tobytes())
    assert np.array_equal(image_to_rgb(m)[..., 0], g)


@pytest.mark.parametrize("make,reason", [
    (lambda a: _msg(a, data=_msg(a).data[:-1]), "data has 89 bytes, height·step is 90"),
    (lambda a: _msg(a, data=bytes(_msg(a).data) + b"\0"), "data has 91 bytes"),
    (lambda a: Image(height=6, width=5, encoding="rgb8", step=14, data=bytes(84)), "step 14 is shorter"),
    (lambda a: Image(height=0, width=5, encoding="rgb8", step=15, data=b""), "empty image"),
    (lambda a: _msg(a, encoding="16UC1"), "unsupported encoding '16UC1'"),
    (lambda a: _msg(a, encoding="bayer_rggb8"), "unsupported encoding"),
    (lambda a: CompressedImage(format="jpeg", data=b"\xff\xd8\xff garbage"), "corrupt or unsupported"),
    (lambda a: CompressedImage(format="jpeg", data=b""), "empty compressed image"),
])
def test_malformed_images_say_why(make, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        image_to_rgb(make(_img()))


def test_compressed_images_decode():
    a = _img(16, 20)
    ok, png = cv2.imencode(".png", a[..., ::-1])
    assert ok and np.array_equal(image_to_rgb(CompressedImage(format="png", data=png.tobytes())), a)


@pytest.fixture(scope="module")
def one_camera_pack(tmp_path_factory):
    """A tiny model reading cam_high only."""
    import dataclasses

    from omega_qvla_ros.models import build_model, get_config, model_info
    from omega_qvla_ros.models.processor import legacy_processor_config
    from omega_qvla_ros.quant.pack import save_pack
    from omega_qvla_ros.quant.recipes import RECIPES

    cfg = dataclasses.replace(get_config("pi05", "tiny"), cameras=1)
    m = build_model("pi05", config=cfg).eval()
    out = tmp_path_factory.mktemp("cam") / "pack"
    proc = legacy_processor_config(cfg, {"cameras": ["cam_high"]}, RobotSpec().to_dict())
    save_pack(m, out, model_info(m), recipe=RECIPES["fp16"].to_dict(), processor=proc.to_dict())
    return out


def test_camera_staleness_watches_the_policy_cameras(one_camera_pack):
    """camera_names in another order than the pack's: losing the camera the model reads is
    detected (the wrist cameras keep streaming)."""
    h = Harness(one_camera_pack, fallback_to_teleop=False,
                camera_names=["cam_right_wrist", "cam_left_wrist", "cam_high"],
                camera_topics=["/cam_right_wrist/image_raw", "/cam_left_wrist/image_raw", "/cam_high/image_raw"])
    try:
        h.wait(lambda: h.last_status().get("state") == "driving", 20, "driving")
        assert h.node.cameras == ["cam_high"]
        real_pub = h.pub_img["cam_high"]

        class Mute:
            def publish(self, msg):
                pass
        h.pub_img["cam_high"] = Mute()
        h.wait(lambda: "camera stale" in h.last_status().get("reason", ""), 5, "camera stale")
        assert h.last_status()["source"] == "hold"
        h.pub_img["cam_high"] = real_pub
        h.wait(lambda: h.last_status().get("state") == "driving", 20, "recovery")
    finally:
        h.close()


def test_joint_states_out_of_limits_or_duplicated_are_faults(one_camera_pack):
    h = Harness(one_camera_pack, fallback_to_teleop=False)
    try:
        h.wait(lambda: h.last_status().get("state") == "driving", 20, "driving")
        h.joints = HOME.copy()
        h.joints[2] = 3.0  # left_elbow far beyond 1.6057
        h.wait(lambda: "out of limits: left_elbow=3.000" in h.last_status().get("reason", ""), 5, "out of limits")
        h.joints = HOME.copy()
        h.wait(lambda: h.last_status().get("state") == "driving", 20, "recovery")
        h.joint_names = list(ALOHA_JOINTS[:-1]) + ["left_waist"]
        h.wait(lambda: "more than once: ['left_waist']" in h.last_status().get("reason", ""), 5, "duplicate")
    finally:
        h.close()


def _fuzz_messages():
    """(what, topic kind, message) — malformed and extreme inputs of every kind."""
    a = _img(64, 64)
    good = _msg(a)
    js = lambda names, pos: JointState(name=list(names), position=[float(x) for x in pos])  # noqa: E731
    return [
        ("short data", "img", _msg(a, data=good.data[:-10])),
        ("long data", "img", _msg(a, data=bytes(good.data) + b"12")),
        ("step too small", "img", Image(height=64, width=64, encoding="rgb8", step=100, data=bytes(6400))),
        ("zero size", "img", Image(height=0, width=0, encoding="rgb8", step=0, data=b"")),
        ("16UC1", "img", _msg(a, encoding="16UC1")),
        ("empty encoding", "img", _msg(a, encoding="")),
        ("tiny image", "img", _msg(_img(2, 2))),
        ("huge width claim", "img", Image(height=1, width=10**7, encoding="rgb8", step=3 * 10**7, data=bytes(30))),
        ("row padded", "img", _msg(a, pad=5)),
        ("NaN joint", "js", js(ALOHA_JOINTS, np.r_[HOME[:13], np.nan])),
        ("inf joint", "js", js(ALOHA_JOINTS, np.r_[np.inf, HOME[1:]])),
        ("duplicate names", "js", js(ALOHA_JOINTS + ["left_waist"], np.r_[HOME, 0.0])),
        ("missing joint", "js", js(ALOHA_JOINTS[:-1], HOME[:-1])),
        ("names/positions mismatch", "js", js(ALOHA_JOINTS, HOME[:10])),
        ("empty joint state", "js", JointState()),
        ("out of limits", "js", js(ALOHA_JOINTS, np.r_[HOME[:2], 9.0, HOME[3:]])),
        ("huge values", "js", js(ALOHA_JOINTS, np.full(14, 1e300))),
        ("teleop NaN", "teleop", js(ALOHA_JOINTS, np.full(14, np.nan))),
        ("teleop out of limits", "teleop", js(ALOHA_JOINTS, np.full(14, 5.0))),
        ("empty instruction", "instr", String(data="")),
        ("long instruction", "instr", String(data="pick " * 5000)),
        ("unicode instruction", "instr", String(data="greif den Würfel 🤖\u0000\n")),
    ]


def test_fuzzed_inputs_never_crash_or_command_outside_the_limits(one_camera_pack):
    h = Harness(one_camera_pack, feed_hz=50.0, fallback_to_teleop=True)
    spec = RobotSpec()
    try:
        h.call(SetBool, "/omega_qvla_policy/enable", SetBool.Request(data=True))
        h.wait(lambda: h.last_status().get("state") == "driving", 20, "driving")
        pubs = {"img": h.pub_img["cam_high"], "js": h.pub_js, "teleop": h.pub_teleop, "instr": h.pub_instr}
        for what, kind, msg in _fuzz_messages():
            for _ in range(20):  # a burst
                pubs[kind].publish(msg)
            time.sleep(0.15)
            assert h.node.context.ok(), what
        for _ in range(3):  # camera loss, heartbeat and e-stop flapping
            h.feed_on["images"] = False
            time.sleep(0.3)
            h.feed_on["images"] = True
            h.pub_estop.publish(Bool(data=False))
            h.pub_hb.publish(Bool(data=False))
        time.sleep(0.5)
        h.pub_instr.publish(String(data="transfer the cube"))
        h.wait(lambda: h.last_status().get("state") == "driving", 20, "driving again after the fuzz")
    finally:
        h.close()
    cmds = [np.array(p.positions) for _, m in h.traj for p in m.points]
    assert cmds
    q = np.stack(cmds)
    assert np.all(np.isfinite(q)) and np.all(q >= spec.lower - 1e-9) and np.all(q <= spec.upper + 1e-9)
    firsts = np.stack([np.array(m.points[0].positions) for _, m in h.traj])
    assert np.all(np.abs(np.diff(firsts, axis=0)) <= spec.max_delta + 1e-9)
    holds = [t for t in h.node.tick_log if t.source != "policy"]
    assert holds and all(t.reason for t in holds)  # every hold / fallback says why
