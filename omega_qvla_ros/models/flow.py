"""Flow-matching sampling with the step context set around every denoising step."""
from __future__ import annotations

from typing import Callable

import torch

from omega_qvla_ros.quant.context import denoising_step

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def euler_sample(velocity: Velocity, noise: torch.Tensor, num_steps: int, t_start: float,
                 t_end: float) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from t_start to t_end in `num_steps` Euler steps.

    Pi0.5 runs t: 1 → 0 (noise at t = 1); GR00T runs t: 0 → 1 (noise at t = 0). Each step
    runs inside `denoising_step(i, num_steps)` so quantized action-head layers pick their
    per-step activation scales.
    """
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    x = noise
    dt = (t_end - t_start) / num_steps
    B = noise.shape[0]
    for i in range(num_steps):
        t = torch.full((B,), t_start + i * dt, device=noise.device, dtype=torch.float32)
        with denoising_step(i, num_steps):
            x = x + dt * velocity(x, t)
    return x
