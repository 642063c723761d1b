"""What the runtime receives from a robot, and the checks on it. Turning an observation
into model input is the model's processor (models/processor.py, saved in its pack)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from omega_qvla_ros.models.processor import ObservationError, check_image, letterbox_uint8, order_joints

__all__ = ["RawObservation", "ObservationError", "check_image", "order_joints", "resize_with_pad"]


@dataclass
class RawObservation:
    images: dict[str, np.ndarray]  # camera -> uint8 HxWx3 RGB
    joint_names: list[str]
    joint_positions: np.ndarray
    instruction: str
    stamp: float  # seconds (observation time: the oldest input's stamp)
    image_stamps: dict[str, float] = field(default_factory=dict)


def resize_with_pad(img: np.ndarray, size: int) -> np.ndarray:
    """Letterbox an RGB image into size×size (aspect kept, black padding), uint8."""
    return letterbox_uint8(img, size)
