"""Time-aligned action timeline. Every action of a chunk has a time: its observation's
stamp + i·dt. The timeline keeps the actions whose time is now or later, across whole
chunks (never a window counted from the observation), and merges a new chunk where it
overlaps the old one in time:

- "none": the new chunk replaces the old from its first fresh action on;
- "average": old·(1−w) + new·w on the overlap (LeRobot async inference's default);
- "crossfade": the new chunk's weight ramps linearly from 0 at `now` to 1 at
  now + window, so the command continues smoothly from what was being executed and the
  fresher chunk takes over within `window` seconds (beyond it, the new chunk alone).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLEND_MODES = ("none", "average", "crossfade")


@dataclass
class ActionChunk:
    positions: np.ndarray  # [H, dof] joint targets; action i is for time stamp + i·dt
    stamp: float
    dt: float
    inference_s: float = 0.0

    def time_of(self, i: int) -> float:
        return self.stamp + i * self.dt

    @property
    def end(self) -> float:
        """The time of the chunk's last action."""
        return self.time_of(len(self.positions) - 1)


class ChunkScheduler:
    def __init__(self, dt: float, blend: str = "crossfade", new_weight: float = 0.7,
                 window_s: float = 0.2) -> None:
        if blend not in BLEND_MODES:
            raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
        if not 0 < new_weight <= 1:
            raise ValueError("new_weight must be in (0, 1]")
        if dt <= 0 or window_s < 0:
            raise ValueError("dt must be > 0 and the blend window >= 0")
        self.dt, self.blend, self.w, self.window = dt, blend, new_weight, window_s
        self.times = np.zeros(0)
        self.points = np.zeros((0, 0))

    def clear(self) -> None:
        self.times, self.points = np.zeros(0), np.zeros((0, 0))

    def _fresh(self, now: float) -> np.ndarray:
        return self.times >= now - self.dt / 2

    def add(self, chunk: ActionChunk, now: float, limit: int | None = None) -> int:
        """Merge `chunk` (its first `limit` actions, all by default) into the timeline;
        returns how many of them were already in the past and were skipped."""
        pos = np.asarray(chunk.positions, dtype=np.float64)[:limit]
        t = chunk.stamp + np.arange(len(pos)) * chunk.dt
        fresh = t >= now - self.dt / 2
        skipped = int((~fresh).sum())
        t, pos = t[fresh], pos[fresh]
        keep = self._fresh(now)
        old_t, old_p = self.times[keep], self.points[keep] if len(self.points) else self.points
        if not len(t):
            self.times, self.points = old_t, old_p
            return skipped
        if self.blend == "none" or not len(old_t):
            before = old_t < t[0] - self.dt / 2
            self.times = np.concatenate([old_t[before], t])
            self.points = np.concatenate([old_p[before], pos]) if before.any() else pos
            return skipped
        # match the new actions to old ones at the same time (within dt/2)
        j = np.searchsorted(old_t, t)
        merged = pos.copy()
        for k, tk in enumerate(t):
            for cand in (j[k] - 1, j[k]):
                if 0 <= cand < len(old_t) and abs(old_t[cand] - tk) < self.dt / 2:
                    if self.blend == "average":
                        w = self.w
                    else:
                        w = 1.0 if self.window == 0 else min(1.0, max(0.0, (tk - now) / self.window))
                    merged[k] = (1 - w) * old_p[cand] + w * pos[k]
                    break
        before = old_t < t[0] - self.dt / 2
        after = old_t > t[-1] + self.dt / 2  # an old chunk reaching beyond the new one
        self.times = np.concatenate([old_t[before], t, old_t[after]])
        self.points = np.concatenate([old_p[before], merged, old_p[after]])
        return skipped

    def window_at(self, now: float, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Upcoming (times, positions) from `now` on (at most n); drops the past."""
        keep = self._fresh(now)
        if not keep.all():
            self.times, self.points = self.times[keep], self.points[keep]
        return self.times[:n], self.points[:n]

    def current(self, now: float) -> np.ndarray | None:
        ts, ps = self.window_at(now, 1)
        return ps[0] if len(ts) else None

    def remaining(self, now: float) -> int:
        return len(self.window_at(now)[0])

    def covered_until(self, now: float) -> float:
        """The end of the period the timeline's actions cover (its last action's time +
        dt; −inf when empty)."""
        ts, _ = self.window_at(now)
        return float(ts[-1]) + self.dt if len(ts) else float("-inf")
