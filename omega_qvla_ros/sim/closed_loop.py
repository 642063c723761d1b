"""Closed-loop evaluation: the robot's controller (runtime/controller.py — the same
scheduling, supervision, safety filter and fallback the ROS node runs) drives the
simulator with a policy.

Time is simulated: the physics steps at the control rate whatever this machine's speed.
With `latency_s` = 0 inference is synchronous (the simulator waits for the policy, as
openpi's ALOHA evaluation does); with `latency_s` > 0 the chunk computed from the
observation at time t is handed to the controller only at t + latency, while the arm
keeps executing the timeline (or starves and holds) — success under a given inference
latency. Cameras are rendered only for the observations the policy reads."""
from __future__ import annotations

import math

import numpy as np
import torch

from omega_qvla_ros.runtime.controller import ControlConfig, Controller
from omega_qvla_ros.runtime.preprocess import RawObservation
from omega_qvla_ros.runtime.supervisor import Inputs, Supervisor

from .aloha import DT, INSTRUCTIONS, JOINT_NAMES, AlohaSim
from .expert import EPISODE_STEPS


def episode_controller(policy, execute_horizon: int = 25, replan_every: int | None = None, blend: str = "none",
                       new_weight: float = 0.7, latency_s: float = 0.0, max_inflight: int = 1,
                       blend_window_s: float = 0.2) -> Controller:
    """The controller an episode runs: chunks cut to `execute_horizon` actions, a new
    observation every `replan_every` steps (default: execute_horizon) or when the
    timeline would run out before the next chunk arrives."""
    every = replan_every or execute_horizon
    cfg = ControlConfig(dt=DT, blend=blend, blend_new_weight=new_weight, blend_window_s=blend_window_s,
                        trajectory_points=1, replan_period_s=every * DT, request_margin_s=0.0,
                        max_inflight=max_inflight, latency_prior_s=latency_s, chunk_limit=execute_horizon,
                        horizon=policy.horizon)
    return Controller(policy.robot, cfg, Supervisor(mode="policy", dry_run=False, stale_after=math.inf,
                                                    fallback_to_teleop=False))


def run_policy_episode(policy, sim: AlohaSim, seed: int, execute_horizon: int = 25,
                       steps: int = EPISODE_STEPS, noise_seed: int | None = None,
                       replan_every: int | None = None, blend: str = "none", new_weight: float = 0.7,
                       latency_s: float = 0.0, max_inflight: int = 1, noise_scale: float = 1.0) -> dict:
    """One episode through the shared controller; returns success, reward level, chunks
    and how many ticks the policy drove / starved. `noise_scale` multiplies the flow's
    starting noise (0: every chunk starts from the prior's mean, no sampling noise)."""
    sim.reset(seed)
    ctl = episode_controller(policy, execute_horizon, replan_every, blend, new_weight, latency_s, max_inflight)
    g = torch.Generator().manual_seed(seed if noise_seed is None else noise_seed)
    cfg = policy.model.config
    pending: list[tuple[float, object]] = []  # (ready time, chunk)
    chunks = 0
    for t in range(steps):
        now = t * DT
        for item in [p for p in pending if p[0] <= now + 1e-9]:
            pending.remove(item)
            ctl.add_chunk(item[1], now)
        if ctl.want_inference(now):
            obs = sim.observe(render=True)
            raw = RawObservation(obs.images, list(JOINT_NAMES), obs.qpos.astype(np.float64),
                                 INSTRUCTIONS[sim.task], now)
            noise = torch.randn(1, cfg.action_horizon, cfg.action_dim, generator=g) * noise_scale
            chunk = policy.infer(raw, noise=noise)
            chunk.stamp = now
            ctl.request_sent(now)
            chunks += 1
            if latency_s > 0:
                pending.append((now + latency_s, chunk))
            else:
                ctl.add_chunk(chunk, now)
        tick = ctl.step(now, Inputs(now, 0.0, 0.0, None, None), measured=sim.qpos())
        if tick.points is None:  # nothing decided yet: keep the arm where it is
            target = sim.qpos()
        else:
            target = tick.points[0]
        sim.step(target, render=False)
    s = ctl.stats
    return {"success": sim.success, "max_reward": sim.max_reward_seen, "chunks": chunks,
            "policy_ticks": s["policy_ticks"], "starved_ticks": s["starved_ticks"],
            "useless_chunks": s["useless_chunks"]}


def on_policy_observations(policy, task: str, seeds: list[int], execute_horizon: int = 25,
                           **controller) -> list[list[tuple]]:
    """Per episode, (raw observation, noise) for every chunk `policy` inferred in its own
    closed-loop rollouts on `seeds`: the states the policy visits, not the expert's.
    `controller`: run_policy_episode's scheduling arguments (replan_every, blend, …)."""
    episodes: list[list[tuple]] = []

    class Recorder:
        def __getattr__(self, name):
            return getattr(policy, name)

        def infer(self, raw, noise=None):
            episodes[-1].append((raw, noise.clone()))
            return policy.infer(raw, noise=noise)

    with AlohaSim(task, image_size=policy.model.config.vision.image_size, cameras=tuple(policy.cameras)) as sim:
        for s in seeds:
            episodes.append([])
            run_policy_episode(Recorder(), sim, s, execute_horizon, **controller)
    return episodes


def summarize(runs: list[dict]) -> dict:
    """A task's result over episodes (run_policy_episode outputs): successes with their
    95% Wilson interval, each episode's highest reward, the share of starved ticks."""
    n, ok = len(runs), sum(r["success"] for r in runs)
    ticks = sum(r["policy_ticks"] + r["starved_ticks"] for r in runs)
    return {"episodes": n, "successes": ok, "success_rate": ok / n if n else 0.0, "ci95": wilson_ci95(ok, n),
            "max_rewards": [int(r["max_reward"]) for r in runs],
            "starved_tick_share": float(sum(r["starved_ticks"] for r in runs) / max(1, ticks))}


def wilson_ci95(k: int, n: int) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    z = 1.96
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, c - h), min(1.0, c + h)]
