"""Action-chunk scheduling: chunks are anchored at their observation stamp; actions
whose time passed while inference ran are skipped; overlapping chunks are blended
(none: the new chunk replaces the rest of the old one; average: old·(1−w) + new·w);
a fixed-rate consumer reads the timeline."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLEND_MODES = ("none", "average")


@dataclass
class ActionChunk:
    positions: np.ndarray  # [H, dof] joint targets; action i is for time stamp + i·dt
    stamp: float
    dt: float
    inference_s: float = 0.0

    def time_of(self, i: int) -> float:
        return self.stamp + i * self.dt


class ChunkScheduler:
    def __init__(self, dt: float, execute_horizon: int, blend: str = "average", new_weight: float = 0.7) -> None:
        if blend not in BLEND_MODES:
            raise ValueError(f"blend must be one of {BLEND_MODES}")
        if not 0 < new_weight <= 1:
            raise ValueError("new_weight must be in (0, 1]")
        self.dt, self.execute_horizon, self.blend, self.w = dt, execute_horizon, blend, new_weight
        self.times: list[float] = []
        self.points: list[np.ndarray] = []

    def clear(self) -> None:
        self.times, self.points = [], []

    def add(self, chunk: ActionChunk, now: float) -> int:
        """Merge `chunk` into the timeline; returns how many of its actions were already
        in the past (consumed while inference ran) and were skipped."""
        n = min(len(chunk.positions), self.execute_horizon)
        new = [(chunk.time_of(i), np.asarray(chunk.positions[i], dtype=np.float64)) for i in range(n)]
        fresh = [(t, p) for t, p in new if t >= now - self.dt / 2]
        skipped = len(new) - len(fresh)
        self._drop_past(now)
        if not fresh:
            return skipped
        if self.blend == "none" or not self.times:
            keep = [i for i, t in enumerate(self.times) if t < fresh[0][0] - self.dt / 2]
            self.times = [self.times[i] for i in keep] + [t for t, _ in fresh]
            self.points = [self.points[i] for i in keep] + [p for _, p in fresh]
            return skipped
        merged_t, merged_p = list(self.times), list(self.points)
        for t, p in fresh:
            j = int(np.argmin([abs(t - mt) for mt in merged_t])) if merged_t else -1
            if j >= 0 and abs(merged_t[j] - t) < self.dt / 2:
                merged_p[j] = (1 - self.w) * merged_p[j] + self.w * p
            else:
                merged_t.append(t)
                merged_p.append(p)
        order = np.argsort(merged_t)
        self.times = [merged_t[i] for i in order]
        self.points = [merged_p[i] for i in order]
        return skipped

    def _drop_past(self, now: float) -> None:
        k = 0
        while k < len(self.times) and self.times[k] < now - self.dt / 2:
            k += 1
        if k:
            self.times, self.points = self.times[k:], self.points[k:]

    def window(self, now: float, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Upcoming (times, positions) from `now` on (at most n)."""
        self._drop_past(now)
        ts = self.times[:n] if n else self.times
        ps = self.points[:n] if n else self.points
        return np.array(ts), (np.stack(ps) if ps else np.zeros((0, 0)))

    def current(self, now: float) -> np.ndarray | None:
        ts, ps = self.window(now, 1)
        return ps[0] if len(ts) else None

    def remaining(self, now: float) -> int:
        self._drop_past(now)
        return len(self.times)
