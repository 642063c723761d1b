"""Message conversions (no math beyond unit bookkeeping)."""
from __future__ import annotations

import numpy as np

# encoding -> (channels, dtype, how to make RGB). Colour and grey camera encodings only:
# generic ones (8UC3, 16UC1 — often depth) do not say what their channels mean.
ENCODINGS = {
    "rgb8": (3, np.uint8, "rgb"), "bgr8": (3, np.uint8, "bgr"),
    "rgba8": (4, np.uint8, "rgba"), "bgra8": (4, np.uint8, "bgra"),
    "mono8": (1, np.uint8, "mono"), "mono16": (1, np.uint16, "mono"),
    "rgb16": (3, np.uint16, "rgb"), "bgr16": (3, np.uint16, "bgr"),
}


def raw_image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image → uint8 H×W×3 RGB. Checks the encoding, the sizes, `step`
    (row padding is skipped, never read as pixels) and that `data` holds exactly
    height·step bytes; raises ValueError saying what is wrong."""
    try:
        return _raw_image_to_rgb(msg)
    except ValueError as e:
        raise ValueError(f"cannot decode image: {e}") from None


def _raw_image_to_rgb(msg) -> np.ndarray:
    enc = str(msg.encoding).lower()
    if enc not in ENCODINGS:
        raise ValueError(f"unsupported encoding {msg.encoding!r} (supported: {', '.join(sorted(ENCODINGS))})")
    ch, dtype, kind = ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ValueError(f"empty image ({w}×{h})")
    row = w * ch * np.dtype(dtype).itemsize
    if step < row:
        raise ValueError(f"step {step} is shorter than a row of {w} {enc} pixels ({row} bytes)")
    data = np.frombuffer(msg.data, dtype=np.uint8) if len(msg.data) else np.zeros(0, np.uint8)
    if data.size != h * step:
        raise ValueError(f"data has {data.size} bytes, height·step is {h * step} ({h}×{step})")
    px = np.ascontiguousarray(data.reshape(h, step)[:, :row])
    if np.dtype(dtype).itemsize > 1:
        px = px.view(np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<"))
        px = (px >> 8).astype(np.uint8)
    px = px.reshape(h, w, ch)
    if kind == "rgb":
        return px
    if kind == "bgr":
        return np.ascontiguousarray(px[..., ::-1])
    if kind == "rgba":
        return np.ascontiguousarray(px[..., :3])
    if kind == "bgra":
        return np.ascontiguousarray(px[..., 2::-1])
    return np.ascontiguousarray(np.repeat(px, 3, axis=2))


def compressed_image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG / PNG) → uint8 H×W×3 RGB (raises ValueError)."""
    import cv2

    data = np.frombuffer(msg.data, dtype=np.uint8) if len(msg.data) else np.zeros(0, np.uint8)
    if data.size == 0:
        raise ValueError(f"empty compressed image (format {msg.format!r})")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot decode compressed image (format {msg.format!r}, {data.size} bytes): "
                         "corrupt or unsupported data")
    return np.ascontiguousarray(img[..., ::-1])


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs Image or CompressedImage → uint8 H×W×3 RGB (raises ValueError with
    the reason). Our own decoding (numpy / OpenCV), the same on every ROS distribution:
    cv_bridge breaks under NumPy 2 on Humble (vision_opencv#535)."""
    compressed = hasattr(msg, "format") and not hasattr(msg, "encoding")
    return compressed_image_to_rgb(msg) if compressed else raw_image_to_rgb(msg)


def duration_msg(seconds: float):
    from builtin_interfaces.msg import Duration

    ns = int(round(seconds * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def joint_trajectory(names: list[str], times: np.ndarray, points: np.ndarray):
    """JointTrajectory starting now (header stamp 0) with strictly increasing
    time_from_start, positions and finite-difference velocities (0 at the end)."""
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    msg = JointTrajectory()
    msg.joint_names = list(names)
    vel = np.zeros_like(points)
    if len(points) > 1:
        dt = np.diff(times)[:, None]
        vel[:-1] = np.diff(points, axis=0) / np.maximum(dt, 1e-6)
    for t, p, v in zip(times, points, vel):
        pt = JointTrajectoryPoint()
        pt.positions = [float(x) for x in p]
        pt.velocities = [float(x) for x in v]
        pt.time_from_start = duration_msg(float(t))
        msg.points.append(pt)
    return msg
