"""Safety filter for joint commands: NaN/Inf rejection (hold, never zeros), joint
limits and per-step delta clamps, with counts of what was clipped."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .robot import RobotSpec


@dataclass
class FilterResult:
    points: np.ndarray | None  # [N, dof] safe targets, None = reject (hold)
    limit_clips: int = 0
    delta_clips: int = 0
    reason: str = ""


class SafetyFilter:
    def __init__(self, spec: RobotSpec) -> None:
        self.spec = spec

    def filter(self, points: np.ndarray, start: np.ndarray) -> FilterResult:
        """Make a sequence of targets safe to execute from `start` (one control step
        between consecutive points)."""
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != self.spec.dof:
            return FilterResult(None, reason=f"bad command shape {pts.shape}")
        if not np.all(np.isfinite(pts)):
            return FilterResult(None, reason="non-finite values in the policy output")
        if not np.all(np.isfinite(start)):
            return FilterResult(None, reason="non-finite start position")
        lo, hi, md = self.spec.lower, self.spec.upper, self.spec.max_delta
        clipped = np.clip(pts, lo, hi)
        limit_clips = int(np.sum(clipped != pts))
        out = np.empty_like(clipped)
        prev = np.clip(np.asarray(start, dtype=np.float64), lo, hi)
        delta_clips = 0
        for i, p in enumerate(clipped):
            d = np.clip(p - prev, -md, md)
            delta_clips += int(np.sum(d != p - prev))
            prev = prev + d
            out[i] = prev
        return FilterResult(out, limit_clips, delta_clips)
