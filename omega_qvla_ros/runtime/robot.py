"""Robot description the runtime needs: joint names and order, limits, per-step delta
limits, cameras. Defaults are the ALOHA bimanual arm (ViperX 300 S joint ranges as in
the simulator scene; grippers normalised 0 = closed … 1 = open). The model's own
normalisation is not here: it belongs to the model's processor (models/processor.py),
saved in its pack; these limits are what the safety filter enforces."""
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

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        self.lower = np.asarray(self.lower, dtype=np.float64)
        self.upper = np.asarray(self.upper, dtype=np.float64)
        self.max_delta = np.asarray(self.max_delta, dtype=np.float64)
        for name, a in (("lower", self.lower), ("upper", self.upper), ("max_delta", self.max_delta)):
            if a.shape != (n,):
                raise ValueError(f"{name} has {a.shape[0] if a.ndim else 0} values for {n} joints")
        if len(set(self.joint_names)) != n:
            raise ValueError("joint names must be unique")
        if np.any(self.lower >= self.upper):
            raise ValueError("every joint needs lower < upper")
        if np.any(self.max_delta <= 0):
            raise ValueError("max_delta must be positive")

    @property
    def dof(self) -> int:
        return len(self.joint_names)

    def to_dict(self) -> dict:
        return {"joint_names": self.joint_names, "lower": self.lower.tolist(), "upper": self.upper.tolist(),
                "max_delta": self.max_delta.tolist(), "cameras": self.cameras}

    @classmethod
    def from_dict(cls, d: dict) -> "RobotSpec":
        """From to_dict() output; the normalisation range older packs kept here
        (norm_lower / norm_upper) is the processor's business and is skipped."""
        return cls(**{k: v for k, v in d.items() if k not in ("norm_lower", "norm_upper")})

    def limits_for(self, joint_names: list[str]) -> "RobotSpec":
        """This robot's limits for `joint_names` (the same joints, in that order)."""
        missing = [n for n in joint_names if n not in self.joint_names]
        if missing:
            raise ValueError(f"robot has no joints {missing}")
        idx = [self.joint_names.index(n) for n in joint_names]
        return RobotSpec(list(joint_names), self.lower[idx], self.upper[idx], self.max_delta[idx], list(self.cameras))
