"""Robot description the runtime needs: joint names and order, limits, per-step delta
limits, cameras. Defaults are the ALOHA bimanual arm (ViperX 300 S joint ranges as in
the simulator scene; grippers normalised 0 = closed … 1 = open)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")
ALOHA_JOINTS = [f"{s}_{j}" for s in ("left", "right") for j in ARM_JOINTS]
_ARM_LOW = [-3.14158, -1.85005, -1.76278, -3.14158, -1.8675, -3.14158, 0.0]
_ARM_HIGH = [3.14158, 1.25664, 1.6057, 3.14158, 2.23402, 3.14158, 1.0]
ALOHA_CAMERAS = ["cam_high", "cam_left_wrist", "cam_right_wrist"]


@dataclass
class RobotSpec:
    joint_names: list[str] = field(default_factory=lambda: list(ALOHA_JOINTS))
    lower: np.ndarray = field(default_factory=lambda: np.array(_ARM_LOW * 2))
    upper: np.ndarray = field(default_factory=lambda: np.array(_ARM_HIGH * 2))
    max_delta: np.ndarray = field(default_factory=lambda: np.array([0.05] * 6 + [0.1] + [0.05] * 6 + [0.1]))
    cameras: list[str] = field(default_factory=lambda: list(ALOHA_CAMERAS))
    # the model's normalisation range per joint (from the training data); None → the joint
    # limits. Kept apart from the limits: a range fitted to the data gives the model fine
    # resolution where the task happens, the limits stay what the safety filter enforces.
    norm_lower: np.ndarray | None = None
    norm_upper: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        self.lower = np.asarray(self.lower, dtype=np.float64)
        self.upper = np.asarray(self.upper, dtype=np.float64)
        self.max_delta = np.asarray(self.max_delta, dtype=np.float64)
        self.norm_lower = np.asarray(self.lower if self.norm_lower is None else self.norm_lower, dtype=np.float64)
        self.norm_upper = np.asarray(self.upper if self.norm_upper is None else self.norm_upper, dtype=np.float64)
        for name, a in (("lower", self.lower), ("upper", self.upper), ("max_delta", self.max_delta),
                        ("norm_lower", self.norm_lower), ("norm_upper", self.norm_upper)):
            if a.shape != (n,):
                raise ValueError(f"{name} has {a.shape[0] if a.ndim else 0} values for {n} joints")
        if len(set(self.joint_names)) != n:
            raise ValueError("joint names must be unique")
        if np.any(self.lower >= self.upper):
            raise ValueError("every joint needs lower < upper")
        if np.any(self.max_delta <= 0):
            raise ValueError("max_delta must be positive")
        if np.any(self.norm_lower >= self.norm_upper) or not np.all(np.isfinite(self.norm_lower + self.norm_upper)):
            raise ValueError("every joint needs finite norm_lower < norm_upper")

    @property
    def dof(self) -> int:
        return len(self.joint_names)

    def normalize(self, q: np.ndarray) -> np.ndarray:
        """Joint units → [-1, 1] over the normalisation range (the models' state/action space)."""
        return 2 * (np.asarray(q) - self.norm_lower) / (self.norm_upper - self.norm_lower) - 1

    def denormalize(self, a: np.ndarray) -> np.ndarray:
        return (np.asarray(a) + 1) / 2 * (self.norm_upper - self.norm_lower) + self.norm_lower

    def with_data_range(self, q: np.ndarray, quantile: float = 0.01, margin: float = 0.1,
                        min_span: float = 0.1) -> "RobotSpec":
        """A copy normalising over the range the joints take in `q` [N, dof] (quantiles
        q..1-q, widened by `margin` of the span each side, at least `min_span` wide,
        never beyond the joint limits)."""
        q = np.asarray(q, dtype=np.float64)
        if q.ndim != 2 or q.shape[1] != self.dof or len(q) == 0:
            raise ValueError(f"need [N, {self.dof}] joint values, got {q.shape}")
        lo, hi = np.quantile(q, quantile, axis=0), np.quantile(q, 1 - quantile, axis=0)
        mid, half = (lo + hi) / 2, np.maximum((hi - lo) * (0.5 + margin), min_span / 2)
        lo, hi = np.maximum(mid - half, self.lower), np.minimum(mid + half, self.upper)
        return RobotSpec(list(self.joint_names), self.lower.copy(), self.upper.copy(), self.max_delta.copy(),
                         list(self.cameras), lo, hi)

    def to_dict(self) -> dict:
        return {"joint_names": self.joint_names, "lower": self.lower.tolist(), "upper": self.upper.tolist(),
                "max_delta": self.max_delta.tolist(), "cameras": self.cameras,
                "norm_lower": self.norm_lower.tolist(), "norm_upper": self.norm_upper.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "RobotSpec":
        return cls(**d)
