"""Observation checks and preprocessing: per-camera RGB resize-with-pad, joint order,
normalisation. Every rejection says exactly what is wrong."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from omega_qvla_ros.models.common import Observation

from .robot import RobotSpec


class ObservationError(ValueError):
    """An observation that must not reach the model (the reason is in the message)."""


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
    import cv2

    h, w = img.shape[:2]
    s = size / max(h, w)
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    r = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    y, x = (size - nh) // 2, (size - nw) // 2
    out[y:y + nh, x:x + nw] = r
    return out


def check_image(name: str, img: np.ndarray, min_side: int = 8, max_side: int = 8192) -> None:
    if not isinstance(img, np.ndarray):
        raise ObservationError(f"camera {name}: image is {type(img).__name__}, not an array")
    if img.dtype != np.uint8:
        raise ObservationError(f"camera {name}: dtype {img.dtype}, expected uint8")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ObservationError(f"camera {name}: shape {img.shape}, expected H×W×3 RGB")
    if not (min_side <= img.shape[0] <= max_side and min_side <= img.shape[1] <= max_side):
        raise ObservationError(f"camera {name}: size {img.shape[1]}×{img.shape[0]} outside "
                               f"[{min_side}, {max_side}]")


def order_joints(spec: RobotSpec, names: list[str], positions: np.ndarray) -> np.ndarray:
    """Positions in the spec's joint order; unknown/missing names and NaN are rejected."""
    pos = np.asarray(positions, dtype=np.float64)
    if len(names) != len(pos):
        raise ObservationError(f"joint state has {len(names)} names but {len(pos)} positions")
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in spec.joint_names if n not in index]
    if missing:
        raise ObservationError(f"joint state lacks joints {missing}")
    q = np.array([pos[index[n]] for n in spec.joint_names])
    bad = [n for n, v in zip(spec.joint_names, q) if not math.isfinite(v)]
    if bad:
        raise ObservationError(f"joint state has non-finite values for {bad}")
    return q


def to_model_observation(raw: RawObservation, spec: RobotSpec, cameras: list[str], image_size: int,
                         tokenizer, max_tokens: int) -> tuple[Observation, np.ndarray]:
    """(model-ready batch of one, joint positions in spec order)."""
    q = order_joints(spec, raw.joint_names, raw.joint_positions)
    imgs, present = [], []
    for cam in cameras:
        img = raw.images.get(cam)
        if img is None:
            imgs.append(np.zeros((image_size, image_size, 3), np.uint8))
            present.append(False)
            continue
        check_image(cam, img)
        imgs.append(resize_with_pad(img, image_size))
        present.append(True)
    if not any(present):
        raise ObservationError(f"no camera image among {cameras}")
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1
    tokens, mask = tokenizer.encode(raw.instruction, max_tokens)
    state = torch.from_numpy(np.clip(spec.normalize(q), -1.5, 1.5)).float()
    return Observation(x[None], tokens[None], mask[None], state[None], torch.tensor([present])), q
