"""One control step with explicit time: the logic the robot runs, shared by the ROS node
and the simulator's closed loop (so every closed-loop number measures it).

Per tick (`step(now, …)`): the supervisor picks the source (policy / teleop / hold)
from mode, e-stop, heartbeat, input staleness and faults; the policy source takes the
time-aligned timeline's action for `now` — when there is none, the policy is *starved*
(a distinct state, reported with the observation age and latency, at WARN) and the
configured fallback drives (teleop when fresh and allowed, else hold); the safety
filter clamps limits and per-step deltas from the last command; shadow mode measures
policy-vs-teleop divergence. Hold repeats the last command (or the measured position),
never zeros.

When to infer (`want_inference(now)`): the next chunk is requested so that it arrives
before the timeline runs out — when the time covered by the timeline and the chunks
already in flight, minus now, drops below the estimated latency plus a margin — and
so that a chunk lands about every `replan_period_s`, so that fresh observations keep
steering (with `max_inflight` > 1 requests are spread evenly over the latency, which
pipelines a slow or remote policy). The latency is estimated online (a high quantile of the recent
observation → chunk times), so the request moves earlier on slow hardware.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .robot import RobotSpec
from .safety import SafetyFilter
from .scheduler import ActionChunk, ChunkScheduler
from .supervisor import Decision, Inputs, Supervisor


@dataclass
class ControlConfig:
    dt: float  # control period (s)
    blend: str = "crossfade"
    blend_new_weight: float = 0.7
    blend_window_s: float = 0.2
    trajectory_points: int = 10  # points per published trajectory
    replan_period_s: float = 0.5  # a fresh observation at least this often (0: only on need)
    request_margin_s: float = 0.1  # ask this much earlier than the latency estimate needs
    max_inflight: int = 1  # inference requests in flight at once
    latency_prior_s: float = 0.5  # latency assumed before the first chunk
    chunk_limit: int | None = None  # use only the first N actions of a chunk (None: all)
    horizon: int | None = None  # actions per chunk (the policy's), for planning before the first one

    def __post_init__(self) -> None:
        if self.dt <= 0:
            raise ValueError("dt must be > 0")
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        if self.trajectory_points < 1:
            raise ValueError("trajectory_points must be >= 1")
        for name in ("replan_period_s", "request_margin_s", "latency_prior_s", "blend_window_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


class LatencyEstimator:
    """Observation → chunk-ready latency, estimated from the recent chunks: the given
    quantile of the last `window` samples (a prior until the first one)."""

    def __init__(self, prior: float, window: int = 20, quantile: float = 0.9) -> None:
        self.prior, self.quantile = prior, quantile
        self.samples: deque[float] = deque(maxlen=window)

    def add(self, seconds: float) -> None:
        if np.isfinite(seconds) and seconds >= 0:
            self.samples.append(float(seconds))

    @property
    def estimate(self) -> float:
        return float(np.quantile(self.samples, self.quantile)) if self.samples else self.prior

    @property
    def last(self) -> float | None:
        return self.samples[-1] if self.samples else None


@dataclass
class Tick:
    """What one control step decided."""

    now: float
    source: str  # "policy" | "teleop" | "hold"
    actuate: bool
    reason: str  # "" when the requested source drives as intended
    level: str  # "ok" | "warn" | "error"
    state: str  # "driving" | "starved" | "waiting" | "fallback" | "hold" | "teleop" | "shadow"
    times: np.ndarray | None = None  # time_from_start of the points (s)
    points: np.ndarray | None = None  # [N, dof] safe targets (None: nothing to send yet)
    fresh_action: bool = False  # the timeline had an action for now
    limit_clips: int = 0
    delta_clips: int = 0
    divergence: np.ndarray | None = None  # |policy action − teleop| per joint (when both exist)


@dataclass
class ChunkReceipt:
    fresh: int
    skipped: int
    latency_s: float


@dataclass
class Controller:
    robot: RobotSpec
    config: ControlConfig
    supervisor: Supervisor = field(default_factory=Supervisor)

    def __post_init__(self) -> None:
        c = self.config
        self.timeline = ChunkScheduler(c.dt, c.blend, c.blend_new_weight, c.blend_window_s)
        self.safety = SafetyFilter(self.robot)
        self.latency = LatencyEstimator(c.latency_prior_s)
        self.inflight: list[float] = []  # observation stamps of requests in flight
        self.last_command: np.ndarray | None = None
        self.newest_obs: float | None = None  # observation stamp of the newest chunk
        n = min(x for x in (c.horizon, c.chunk_limit) if x is not None) if (c.horizon or c.chunk_limit) else 0
        self.chunk_span = n * c.dt  # duration a chunk covers (s): known from the policy, then measured
        self.chunks = 0
        self.policy_fault = ""
        self.stats = {"ticks": 0, "policy_ticks": 0, "starved_ticks": 0, "teleop_ticks": 0, "hold_ticks": 0,
                      "skipped_actions": 0, "limit_clips": 0, "delta_clips": 0, "useless_chunks": 0}

    # ---------------------------------------------------------------- inference bookkeeping
    def want_inference(self, now: float) -> bool:
        """True when a new observation should be sent to the policy now."""
        if len(self.inflight) >= self.config.max_inflight:
            return False
        lat = self.latency.estimate
        covered = max([self.timeline.covered_until(now)] + [t + self.chunk_span for t in self.inflight])
        if covered - now <= lat + self.config.request_margin_s:
            return True
        newest = max([self.newest_obs if self.newest_obs is not None else float("-inf")] + self.inflight)
        period = self.config.replan_period_s
        # fresh observations: the next chunk should land `period` after the newest one; with
        # several requests in flight they are spread evenly over the latency. With one at a
        # time the free worker is the pacing: waiting for the (high-quantile) estimate after a
        # chunk that came faster would only age the next observation
        k = self.config.max_inflight
        spacing = max(period - lat - self.config.request_margin_s, lat / k if k > 1 else 0.0)
        return period > 0 and now - newest >= spacing - 1e-9

    def request_sent(self, obs_stamp: float) -> None:
        self.inflight.append(obs_stamp)

    def request_done(self, obs_stamp: float) -> None:
        if obs_stamp in self.inflight:
            self.inflight.remove(obs_stamp)

    def add_chunk(self, chunk: ActionChunk, now: float) -> ChunkReceipt:
        """A chunk is ready at `now`: merge its fresh actions into the timeline."""
        self.request_done(chunk.stamp)
        lat = now - chunk.stamp
        self.latency.add(lat)
        self.chunk_span = (len(chunk.positions) if self.config.chunk_limit is None
                           else min(len(chunk.positions), self.config.chunk_limit)) * chunk.dt
        skipped = self.timeline.add(chunk, now, self.config.chunk_limit)
        n = len(chunk.positions) if self.config.chunk_limit is None else min(len(chunk.positions),
                                                                              self.config.chunk_limit)
        self.stats["skipped_actions"] += skipped
        if skipped >= n:
            self.stats["useless_chunks"] += 1
        self.newest_obs = chunk.stamp if self.newest_obs is None else max(self.newest_obs, chunk.stamp)
        self.chunks += 1
        self.policy_fault = ""
        return ChunkReceipt(n - skipped, skipped, lat)

    def inference_failed(self, obs_stamp: float, reason: str) -> None:
        self.request_done(obs_stamp)
        self.policy_fault = reason

    def reset(self) -> None:
        """After an e-stop reset: forget the plan (the arm did not follow it)."""
        self.timeline.clear()
        self.policy_fault = ""

    # ---------------------------------------------------------------- the control step
    def starved_reason(self, now: float) -> str:
        age = "none yet" if self.newest_obs is None else f"{1e3 * (now - self.newest_obs):.0f} ms"
        last = self.latency.last
        lat = "none yet" if last is None else f"{1e3 * last:.0f} ms"
        span = f"{1e3 * self.chunk_span:.0f} ms" if self.chunk_span else "unknown"
        return (f"starved: no fresh policy action (newest observation age {age}, inference latency {lat}, "
                f"chunk covers {span})")

    def step(self, now: float, inputs: Inputs, measured: np.ndarray | None = None,
             teleop: np.ndarray | None = None, input_fault: str = "") -> Tick:
        """One control tick at time `now`. `measured`: the joint positions (robot order);
        `teleop`: the leader arms' command; `input_fault`: a reason the inputs must not be
        trusted (malformed joints, images…), which counts as a policy fault."""
        sup = self.supervisor
        fault = "; ".join(x for x in (self.policy_fault, input_fault) if x)
        d: Decision = sup.decide(Inputs(inputs.now, inputs.camera_age, inputs.joint_age, inputs.teleop_age,
                                        inputs.heartbeat_age, fault))
        ts, ps = self.timeline.window_at(now, self.config.trajectory_points)
        fresh = len(ts) > 0
        source, reason, state = d.source, d.reason, {"policy": "driving", "teleop": "teleop",
                                                     "hold": "hold"}[d.source]
        level = "ok" if not reason else ("error" if source == "hold" else "warn")
        if sup.mode == "shadow" and source != "hold":
            state = "shadow"
        times = points = None
        divergence = (np.abs(ps[0] - np.asarray(teleop, dtype=np.float64))
                      if fresh and teleop is not None else None)
        if source == "policy":
            if fresh:
                times, points = np.maximum(ts - now, 0.0) + self.config.dt, ps
            else:
                state = "waiting" if self.chunks == 0 else "starved"
                reason = ("waiting for the first action chunk" if self.chunks == 0
                          else self.starved_reason(now))
                level = "warn"
                teleop_ok = teleop is not None and not sup._stale(inputs.teleop_age)
                if sup.fallback_to_teleop and teleop_ok:
                    source, reason = "teleop", f"fallback to teleop: {reason}"
                else:
                    source = "hold"
        if source == "teleop" and teleop is not None:
            times, points = np.array([self.config.dt]), np.asarray(teleop, dtype=np.float64)[None]
        start = self.last_command if self.last_command is not None else measured
        if points is None:  # hold: the last command (or the measured position), never zeros
            if start is None:
                return self._count(Tick(now, source, d.actuate, reason, level, state, fresh_action=fresh,
                                        divergence=divergence))
            times, points = np.array([self.config.dt]), np.asarray(start, dtype=np.float64)[None]
        if start is None:
            start = points[0]
        res = self.safety.filter(points, start)
        if res.points is None:
            self.policy_fault = f"unsafe command rejected: {res.reason}"
            source, reason, level, state = "hold", self.policy_fault, "error", "hold"
            res = self.safety.filter(np.asarray(start)[None], start)
            times = np.array([self.config.dt])
        times = np.maximum.accumulate(times + np.arange(len(times)) * 1e-6)  # strictly increasing
        if d.actuate:
            self.last_command = res.points[0]
        tick = Tick(now, source, d.actuate, reason, level, state, times, res.points, fresh,
                    res.limit_clips, res.delta_clips, divergence)
        return self._count(tick)

    def _count(self, t: Tick) -> Tick:
        s = self.stats
        s["ticks"] += 1
        s[{"policy": "policy_ticks", "teleop": "teleop_ticks", "hold": "hold_ticks"}[t.source]] += 1
        s["starved_ticks"] += t.state == "starved" or "starved" in t.reason
        s["limit_clips"] += t.limit_clips
        s["delta_clips"] += t.delta_clips
        return t
