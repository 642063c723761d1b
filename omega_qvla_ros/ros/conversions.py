"""Message conversions (no math beyond unit bookkeeping)."""
from __future__ import annotations

import numpy as np

_CV_BRIDGE = None


def _bridge():
    """cv_bridge when it imports and works (robots), else None. It breaks under NumPy 2
    on Humble (vision_opencv#535), so any failure means falling back."""
    global _CV_BRIDGE
    if _CV_BRIDGE is None:
        try:
            from cv_bridge import CvBridge
            _CV_BRIDGE = CvBridge()
        except Exception:  # noqa: BLE001 - any import/ABI failure → fallback
            _CV_BRIDGE = False
    return _CV_BRIDGE or None


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs Image or CompressedImage → uint8 H×W×3 RGB (raises ValueError)."""
    compressed = hasattr(msg, "format") and not hasattr(msg, "encoding")
    bridge = _bridge()
    if bridge is not None:
        try:
            if compressed:
                return np.ascontiguousarray(bridge.compressed_imgmsg_to_cv2(msg, "rgb8"))
            return np.ascontiguousarray(bridge.imgmsg_to_cv2(msg, "rgb8"))
        except Exception:  # noqa: BLE001 - fall through to rosbags-image
            pass
    from rosbags.image import message_to_cvimage

    try:
        img = message_to_cvimage(msg, "rgb8")
    except Exception as e:  # noqa: BLE001
        enc = getattr(msg, "format", None) if compressed else getattr(msg, "encoding", None)
        raise ValueError(f"cannot decode image (encoding {enc!r}): {e}") from None
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"decoded image has shape {img.shape}, expected H×W×3")
    return np.ascontiguousarray(img)


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
