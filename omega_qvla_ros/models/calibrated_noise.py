"""Quantization-aware fine-tuning through the calibrated W4A4 forward itself.

Why (issue 18): the generic noise of `quant_noise` (a 64-wide Hadamard, one activation
scale per sample, RTN weights) is 3.6× coarser than what the shipped recipe does, and a
fine-tune with it left W4A4 success where it was. Here the rounding a batch trains with is
the deployed recipe's own: every `refresh_every` draws the current FP model is quantized
by the unchanged post-training path (`quantize_model`: its rotations, GPTQ codes, static
and per-denoising-step activation scales, on `observations`), and each target linear then
computes, when the noise is on,

    y = Q(z) · (W_r(W) + ΔE)ᵀ + b,   z = R(x) / d,   W_r(W) = R(W) · d

with R the layer's input rotation (orthogonal), d its folded channel divisor (and static
scale), Q its int4 activation rounding with its calibrated scale — for per-step layers the
row of each sample's flow time, as the sampler would pick it — and ΔE the calibrated int4
weight (output rotation undone) minus W_r of the weight it was computed from: the latent
FP weight trains through R and d, its rounding offset is held until the next refresh,
activation rounding passes straight through. With W at its calibration value the layer's
output is the calibrated QuantLinear's (tested). What ships is still the FP model,
quantized afterwards by the same post-training recipe.

Measured (issue 18, cam_table policy, 1200 steps at lr 3e-5, half the batches, re-quantized
every 100): FP keeps 44/50 hand-overs and its W4A4 pack hands over in 20–32 of 50 over six
calibration draws (mean 25.7; the starting pack 21.3, the generic noise 24.8); every batch
through it costs FP its hand-overs (6/50). A tool for that experiment; training leaves it off.
"""
from __future__ import annotations

import copy
import types
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from omega_qvla_ros.quant.context import current_step, step_row
from omega_qvla_ros.quant.int4 import per_token_scales, quantize_codes

from .calibrate import quantize_model
from .quant_noise import QuantNoise


@dataclass
class FrozenLayer:
    """What one calibrated QuantLinear contributes to the training forward (module docstring)."""

    x_rot: object | None  # the layer's run-time input transform (divisor folded in: QuantLinear._input_transform)
    x_div: torch.Tensor | None  # and its leftover divisor
    rot: object | None  # the input rotation (BlockRotation, orthogonal) for the weight side
    div: torch.Tensor | None  # [in] divisor of the rotated input (channel profile, static tensor scale)
    mode: str  # the layer's activation mode
    scale: torch.Tensor | None  # [in] (static), [steps, in] / [steps] (per step), None (prescaled / dynamic)
    delta: torch.Tensor  # [out, in] calibrated int4 weight − W_r(calibration weight)

    @classmethod
    def of(cls, q: nn.Module, weight: torch.Tensor) -> "FrozenLayer":
        spec = q.spec
        x_rot, x_div = q._input_transform()  # the same z, hence the same codes, as the layer's own paths
        div = q.input_channel_div.float() if spec.channel_div else None
        mode, scale = spec.act_mode, None
        if mode == "static_tensor":  # prescaled: the scale is part of the divisor, codes = round(z)
            s = q.act_scale.float().expand(q.in_features)
            div = s if div is None else div * s
        elif mode == "static":
            scale = q.act_scale.float()
        elif mode == "per_step":
            scale = q.act_step_table.float()
        elif mode == "per_step_factorized":
            scale = q.act_step_scale.float()
        with torch.no_grad():
            e = q.dequantized_weight().float()
            if mode == "static_tensor":  # the layer multiplies codes·s by it; here s sits in W_r's d
                e = e * q.act_scale.float()
            rot_out = q._rotation("output")
            if rot_out is not None:  # y = R_out⁻¹(z_q·eᵀ) = z_q·(R_out⁻¹ applied to eᵀ)
                e = rot_out.apply_inverse(e.t().contiguous()).t()
            layer = cls(x_rot, x_div, q._rotation("input"), div, mode, scale, torch.zeros(0))
            layer.delta = (e - layer.weight(weight.detach().float())).contiguous()
        return layer

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        """W_r(W) = R(W) · d: the weight the rotated, divided input multiplies."""
        w = self.rot.apply(w) if self.rot is not None else w
        return w * self.div if self.div is not None else w

    def transformed(self, x: torch.Tensor) -> torch.Tensor:
        """z = R(x) / d in float32, x's shape (QuantLinear._transformed_input's arithmetic)."""
        z = x.reshape(-1, x.shape[-1]).float()
        z = self.x_rot.apply(z) if self.x_rot is not None else z
        z = z / self.x_div if self.x_div is not None else z
        return z.reshape(x.shape)

    def step_scale(self, z: torch.Tensor, noisy: torch.Tensor | None) -> torch.Tensor:
        """The activation scale for z [B, …, in]: per sample for per-step layers, the row
        of the sampler step that runs at the sample's noise fraction (`noisy` [B])."""
        if self.mode == "dynamic":
            return per_token_scales(z.detach().reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], 1)
        if self.mode in ("static", "static_tensor"):
            return self.scale if self.scale is not None else torch.ones(())
        table = self.scale
        row = step_row(current_step(), table.shape[0])
        if row is not None:
            return table[row]
        if noisy is None or z.dim() < 2 or z.shape[0] != noisy.shape[0]:
            return table.mean(dim=0)  # as QuantLinear outside a step context
        n = table.shape[0]  # step i of n runs at noise fraction 1 − i/n
        s = table[torch.round((1.0 - noisy) * n).long().clamp(0, n - 1)]  # [B] or [B, in]
        return s.reshape(z.shape[0], *([1] * (z.dim() - 1))) if s.dim() == 1 else \
            s.reshape(z.shape[0], *([1] * (z.dim() - 2)), z.shape[-1])

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                noisy: torch.Tensor | None) -> torch.Tensor:
        z = self.transformed(x)
        if self.mode != "none":
            s = self.step_scale(z, noisy)
            z = z + (quantize_codes(z, s) * s - z).detach()
        w = self.weight(weight.float()) + self.delta
        y = F.linear(z, w, None if bias is None else bias.float())
        return y.to(x.dtype)


class CalibratedQuantNoise(QuantNoise):
    """The deployed recipe's W4A4 rounding in the batches it draws (module docstring);
    `quant_noise.QuantNoise`'s life cycle, so `training.train` takes either."""

    def __init__(self, model: nn.Module, observations: list, recipe: str = "omega_qvla",
                 probability: float = 0.5, seed: int = 0, refresh_every: int = 200) -> None:
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        if not observations:
            raise ValueError("calibrated quantization noise needs calibration observations")
        super().__init__(model, probability, seed, recipe)
        self.observations = list(observations)
        self.seed, self.refresh_every = seed, refresh_every
        self.layers: dict[str, FrozenLayer] = {}
        self.noisy: torch.Tensor | None = None  # per-sample noise fraction of the running denoising step
        self.refreshes = 0
        self._draws = 0

    def refresh(self) -> None:
        """Quantize a copy of the current FP model with the recipe; keep its layers' parts."""
        installed = "denoise_step" in self.model.__dict__  # a copy must not carry the wrappers
        if installed:
            self.remove()
        training = self.model.training
        twin = copy.deepcopy(self.model).eval()
        try:
            with torch.no_grad():
                quantize_model(twin, self.recipe, self.observations, seed=self.seed)
            self.layers = {name: FrozenLayer.of(twin.get_submodule(name), mod.weight)
                           for name, mod in self.targets.items()}
        finally:
            self.model.train(training)
            if installed:
                self.install()
        self.refreshes += 1

    def draw(self) -> bool:
        """Whether the next batch trains with the rounding (refreshing the recipe's parts
        every `refresh_every` draws, the first one included)."""
        if not self.layers or self._draws % self.refresh_every == 0:
            self.refresh()
        self._draws += 1
        return super().draw()

    def noisy_linear(self, name: str, mod: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        layer = self.layers.get(name)
        if layer is None:  # not refreshed yet: nothing calibrated to round with
            return F.linear(x, mod.weight, mod.bias)
        return layer.forward(x, mod.weight, mod.bias, self.noisy)

    def install(self) -> None:
        super().install()
        noise, step = self, type(self.model).denoise_step
        noisy_at_one = self.model.T_NOISE == 1.0

        def denoise_step(model, x_t, t, prefix):
            # each sample's flow time picks its per-step scale row (FrozenLayer.step_scale; a
            # step context, when set, takes precedence)
            noise.noisy = (t if noisy_at_one else 1.0 - t).detach().float().reshape(-1)
            try:
                return step(model, x_t, t, prefix)
            finally:
                noise.noisy = None
        self.model.denoise_step = types.MethodType(denoise_step, self.model)

    def remove(self) -> None:
        super().remove()
        if "denoise_step" in self.model.__dict__:
            del self.model.denoise_step
