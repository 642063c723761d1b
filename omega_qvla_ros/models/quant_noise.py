"""Quantization-noise fine-tuning: int4 rounding of weights and activations in some of
the training forward passes, so the floating-point policy learns to tolerate the error
its W4A4 pack will carry.

Why (issue 18): the shipped cam_table policy hands over in 90% of episodes in FP and
tolerates white action noise of 0.002 rel-MSE, but W4A4's error (0.006–0.007, three
quarters of it a fixed function of the scene) halves its success whatever the
calibration. Training the FP model with quantization noise (Fan et al. 2020, "Training
with Quantization Noise"; QAT's straight-through estimator) is meant to make it a policy
worth quantizing; what ships is still an FP model, quantized afterwards by the unchanged
post-training recipe.

The noise imitates what the default recipe does at run time without copying its
calibration: each linear in the family's W4A4 scope computes, when the noise is on,
Q(x·H)·Q(W·H)ᵀ with H a 64-wide block Hadamard (orthogonal, so without rounding the
product is x·Wᵀ), symmetric int4 with one scale per sample for the activations (the
max over its tokens and channels: as coarse as a static per-tensor scale) and one per
output channel for the weights (the MSE-best of a few clipping ratios), rounding passed
straight through in the backward pass. On the cam_table policy this noise moves the
actions by 0.031 rel-MSE (weights alone 0.009, activations alone 0.019), 3.6× the
deployed W4A4 pack's 0.0087 (its GPTQ weights and calibrated scales are finer).

Measured (issue 18, 1200 fine-tuning steps from the cam_table pack, model card): the
model learns to shrug off this noise (0.030 → 0.008–0.010) and its real W4A4 pack's error
falls by 40–50% against a plain fine-tune's (0.0089 → 0.0045–0.0054), but the FP policy
loses hand-overs and its W4A4 pack's do not rise above those of the pack it started from
with half the batches noisy; with a quarter (lr 3e-5) FP kept 43/50 and W4A4 handed over in
16–33 of 50 over six calibration draws (mean 24.8; the starting pack 21.3 on the same draws).
A tool for that experiment; training leaves it off. `calibrated_noise` trains through
the deployed recipe's own calibrated forward instead of this generic one.
"""
from __future__ import annotations

import types
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from omega_qvla_ros.quant.hadamard import fast_hadamard
from omega_qvla_ros.quant.int4 import QMAX, fake_quant, mse_grid_scales
from omega_qvla_ros.quant.quantize import select_targets

from .calibrate import scoped_recipe

BLOCK = 64


def _rotate(t: torch.Tensor) -> torch.Tensor:
    """t @ blockdiag(H_64, H_64, ...) along the last axis (unrotated when not whole blocks)."""
    k = t.shape[-1]
    if k % BLOCK:
        return t
    return fast_hadamard(t.reshape(*t.shape[:-1], k // BLOCK, BLOCK)).reshape(t.shape)


def _round_ste(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric int4 fake quantization with a straight-through gradient."""
    return t + (fake_quant(t, scale) - t).detach()


def fake_w4a4_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Q(x·H)·Q(W·H)ᵀ + b (module docstring): one activation scale per sample (leading
    index; per row for 2-D inputs), one MSE-grid weight scale per output channel."""
    xr, wr = _rotate(x), _rotate(weight)
    dims = tuple(range(1, xr.dim())) if xr.dim() > 2 else (-1,)
    sx = (xr.detach().abs().amax(dim=dims, keepdim=True) / QMAX).clamp_min(1e-8)
    sw = mse_grid_scales(wr.detach(), group_size=None).to(wr.dtype).reshape(-1, 1)
    return F.linear(_round_ste(xr, sx), _round_ste(wr, sw), bias)


class QuantNoise:
    """W4A4 rounding noise on the linears a model family quantizes (module docstring).

    `install()` gives each target linear a forward that rounds while `active`;
    `remove()` restores them (the model's state_dict never changes). `draw()` decides,
    from its own seeded generator, whether the next batch trains with the noise."""

    def __init__(self, model: nn.Module, probability: float = 0.5, seed: int = 0,
                 recipe: str = "omega_qvla") -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"quantization-noise probability must lie in [0, 1], got {probability}")
        self.model, self.probability, self.recipe = model, probability, recipe
        self.targets = {name: mod for name, (mod, _side, _sr) in
                        select_targets(model, scoped_recipe(model, recipe)).items()}
        if not self.targets:
            raise ValueError("the model has no layers in its family's W4A4 scope")
        self.active = False
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def draw(self) -> bool:
        self.active = bool(torch.rand((), generator=self.generator) < self.probability)
        return self.active

    def noisy_linear(self, name: str, mod: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """Target `name`'s output for x with the rounding on."""
        return fake_w4a4_linear(x, mod.weight, mod.bias)

    def install(self) -> None:
        noise = self

        def make(name: str):
            def forward(mod: nn.Linear, x: torch.Tensor) -> torch.Tensor:
                if noise.active:
                    return noise.noisy_linear(name, mod, x)
                return F.linear(x, mod.weight, mod.bias)
            return forward
        for name, mod in self.targets.items():
            mod.forward = types.MethodType(make(name), mod)

    def remove(self) -> None:
        self.active = False
        for mod in self.targets.values():
            if "forward" in mod.__dict__:
                del mod.forward

    @contextmanager
    def installed(self):
        self.install()
        try:
            yield self
        finally:
            self.remove()
