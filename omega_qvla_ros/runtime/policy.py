"""Policy: a loaded pack plus preprocessing, returning action chunks in joint units."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from omega_qvla_ros.models import Observation  # noqa: F401  (registers model families)
from omega_qvla_ros.models.tokenizer import load_tokenizer
from omega_qvla_ros.quant.pack import load_pack
from omega_qvla_ros.quant.qlinear import QuantLinear

from .preprocess import RawObservation, to_model_observation
from .robot import RobotSpec
from .scheduler import ActionChunk


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    return d


class Policy:
    def __init__(self, model, manifest: dict, device: torch.device, robot: RobotSpec | None = None,
                 cameras: list[str] | None = None, control_dt: float = 0.02,
                 tokenizer_path: str | None = None) -> None:
        self.model, self.manifest, self.device = model, manifest, device
        extra = manifest.get("extra", {})
        # joint order and normalisation the model was trained with (from the pack)
        self.robot = robot or (RobotSpec.from_dict(extra["robot"]) if "robot" in extra else RobotSpec())
        cfg = model.config
        # the cameras the model was trained on (pack) when the robot has them, else the
        # first of the configured ones
        trained = list(extra.get("cameras") or [])
        if trained and (cameras is None or all(c in cameras for c in trained)):
            self.cameras = trained[: cfg.cameras]
        else:
            self.cameras = list(cameras or self.robot.cameras)[: cfg.cameras]
        if len(self.cameras) < cfg.cameras:
            raise ValueError(f"the model takes {cfg.cameras} cameras, {len(self.cameras)} configured")
        if self.robot.dof > cfg.action_dim:
            raise ValueError(f"robot has {self.robot.dof} joints, the model outputs {cfg.action_dim}")
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.control_dt = control_dt
        self.recipe = (manifest.get("recipe") or {}).get("name", "unknown")

    @classmethod
    def from_pack(cls, path: str | Path, device: str = "auto", **kw) -> "Policy":
        dev = pick_device(device)
        model, manifest = load_pack(path, device=dev)
        return cls(model, manifest, dev, **kw)

    @property
    def horizon(self) -> int:
        return self.model.config.action_horizon

    def integer_layers(self) -> int:
        return sum(1 for m in self.model.modules() if isinstance(m, QuantLinear) and m.uses_integer_path())

    def infer(self, raw: RawObservation, noise: torch.Tensor | None = None,
              num_steps: int | None = None) -> ActionChunk:
        """Action chunk in joint units for `raw` (raises ObservationError on bad input)."""
        cfg = self.model.config
        obs, _ = to_model_observation(raw, self.robot, self.cameras, cfg.vision.image_size,
                                      self.tokenizer, cfg.max_tokens)
        t0 = time.perf_counter()
        with torch.inference_mode():
            a = self.model.sample_actions(obs.to(self.device), num_steps=num_steps,
                                          noise=None if noise is None else noise.to(self.device))
        a = a[0, :, : self.robot.dof].float().cpu().numpy().astype(np.float64)
        return ActionChunk(self.robot.denormalize(a), raw.stamp, self.control_dt,
                           time.perf_counter() - t0)
