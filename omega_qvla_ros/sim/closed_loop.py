"""Closed-loop evaluation: the policy runtime (preprocessing, chunk scheduler, safety
limits) drives the simulator. Inference is synchronous in sim time (the simulator
waits for the policy, as openpi's ALOHA evaluation does), so results do not depend on
this machine's speed; the chunk is executed open loop for `execute_horizon` steps."""
from __future__ import annotations

import math

import numpy as np
import torch

from omega_qvla_ros.runtime.preprocess import RawObservation
from omega_qvla_ros.runtime.safety import SafetyFilter
from omega_qvla_ros.runtime.scheduler import ChunkScheduler

from .aloha import DT, INSTRUCTIONS, JOINT_NAMES, AlohaSim
from .expert import EPISODE_STEPS


def run_policy_episode(policy, sim: AlohaSim, seed: int, execute_horizon: int = 25,
                       steps: int = EPISODE_STEPS, noise_seed: int | None = None,
                       replan_every: int | None = None, blend: str = "none", new_weight: float = 0.7) -> dict:
    """One episode. A new chunk is inferred when the timeline runs out, or every
    `replan_every` steps (< execute_horizon: chunks overlap and `blend` merges them, as
    the node does when inference runs ahead of the timeline)."""
    obs = sim.reset(seed)
    sched = ChunkScheduler(DT, execute_horizon, blend=blend, new_weight=new_weight)
    every = replan_every or execute_horizon
    since = 0  # steps since the last inference

    def due(now: float) -> bool:
        return sched.remaining(now) == 0 or since >= every

    safety = SafetyFilter(policy.robot)
    g = torch.Generator().manual_seed(seed if noise_seed is None else noise_seed)
    cfg = policy.model.config
    last = obs.qpos.astype(np.float64)
    chunks = 0
    for t in range(steps):
        now = t * DT
        if due(now):
            since = 0
            raw = RawObservation(obs.images, list(JOINT_NAMES), obs.qpos.astype(np.float64),
                                 INSTRUCTIONS[sim.task], now)
            noise = torch.randn(1, cfg.action_horizon, cfg.action_dim, generator=g)
            sched.add(policy.infer(raw, noise=noise), now)
            chunks += 1
        target = sched.current(now)
        res = safety.filter(target[None], last)
        if res.points is None:  # never happens with a healthy model; hold if it does
            res.points = last[None]
        last = res.points[0]
        # the cameras are rendered only for the observations the policy will read
        since += 1
        obs = sim.step(last, render=due(now + DT))
    return {"success": sim.success, "max_reward": sim.max_reward_seen, "chunks": chunks}


def wilson_ci95(k: int, n: int) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    z = 1.96
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, c - h), min(1.0, c + h)]
