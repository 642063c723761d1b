"""Synthetic quantization suites (layers and inputs) shared by the benchmark and tests."""
from __future__ import annotations

import torch
from torch import nn

from omega_qvla_ros.quant.context import denoising_step

STEPS = 10


class OneLayer(nn.Module):
    """A single linear `lin`; `scoped()` points a recipe's backbone or action-head side at it."""

    def __init__(self, n_in: int, n_out: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(n_in, n_out)

    def forward(self, x):
        return self.lin(x)


def scoped(recipe, head: bool):
    return recipe.with_scopes(action_head=[r"^lin$"]) if head else recipe.with_scopes(backbone=[r"^lin$"])


def stepped_forward(steps: int = STEPS):
    """forward(model, batch) running every denoising step; batch = [steps, N, in] or [N, in]."""
    def fwd(model, batch):
        for t in range(steps):
            with denoising_step(t, steps):
                model(batch[t] if batch.dim() == 3 else batch)
    return fwd


def outlier_inputs(n: int, n_in: int, gen: torch.Generator,
                   channels=(5, 330, 700, 1011), mult=(50.0, 70.0, 85.0, 100.0)) -> torch.Tensor:
    """Gaussian tokens with a few massive channels (×50…×100), random sign per token."""
    x = torch.randn(n, n_in, generator=gen)
    ch = torch.tensor(channels)
    m = torch.tensor(mult)
    x[:, ch] = torch.sign(x[:, ch]) * (1 + 0.2 * torch.rand(n, len(ch), generator=gen)) * m
    return x


def drift_inputs(n: int, n_in: int, gen: torch.Generator, steps: int = STEPS,
                 drift: float = 0.4) -> torch.Tensor:
    """[steps, n, n_in]: AdaLN-like inputs whose range drifts across denoising steps.

    Channel scales are log-normal; every channel's range is multiplied by a step factor
    running linearly from 1 - drift to 1 + drift (the timestep modulation), and half the
    channels drift a further ±drift/2 in opposite directions.
    """
    base = torch.exp(0.5 * torch.randn(n_in, generator=gen))
    sign = torch.where(torch.arange(n_in) % 2 == 0, 1.0, -1.0)
    out = []
    for t in range(steps):
        u = 2 * t / (steps - 1) - 1
        f = (1 + drift * u) * (1 + 0.5 * drift * sign * u)
        out.append(torch.randn(n, n_in, generator=gen) * base * f)
    return torch.stack(out)


def rel_mse(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((y - ref) ** 2).mean() / (ref ** 2).mean())


def eval_stepped(model, ref_model, xs: torch.Tensor, steps: int = STEPS) -> float:
    """Relative output MSE averaged over steps; xs is [steps, N, in] or [N, in]."""
    errs = []
    with torch.no_grad():
        for t in range(steps):
            x = xs[t] if xs.dim() == 3 else xs
            with denoising_step(t, steps):
                errs.append(rel_mse(model(x), ref_model(x)))
    return sum(errs) / len(errs)
