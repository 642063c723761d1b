"""Symmetric int4 arithmetic: the grid [-8, 7], MSE-grid weight scales, activation codes.

Weights use one scale per (output row, group of `group_size` input columns); the scale
is picked from s = max|w| / (7·α), α in ALPHAS, minimising the group's squared
rounding error (the paper's MSE grid). `group_size=None` means one scale per row
(per output channel), the layout the integer GEMM path needs.
"""
from __future__ import annotations

import torch

QMIN, QMAX = -8, 7
ALPHAS = (0.5, 0.75, 1.0, 1.25, 1.5)
EPS = 1e-8


def quantize_codes(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """round(x / scale) clamped to the int4 grid, returned as float (exact small ints)."""
    return torch.clamp(torch.round(x / scale), QMIN, QMAX)


def fake_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return quantize_codes(x, scale) * scale


def num_groups(in_features: int, group_size: int | None) -> int:
    if group_size is None or group_size >= in_features:
        return 1
    return -(-in_features // group_size)


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """[out, in] -> [out, G, g] (zero padded on the last group)."""
    out, n = w.shape
    g = n if group_size is None or group_size >= n else group_size
    G = -(-n // g)
    if G * g != n:
        w = torch.nn.functional.pad(w, (0, G * g - n))
    return w.reshape(out, G, g)


def mse_grid_scales(w: torch.Tensor, group_size: int | None = 128,
                    alphas: tuple[float, ...] = ALPHAS) -> torch.Tensor:
    """Per (row, group) scales [out, G] chosen by the MSE grid over `alphas`."""
    wg = _grouped(w.float(), group_size)
    amax = wg.abs().amax(dim=-1, keepdim=True).clamp_min(EPS)
    best_err = None
    best = None
    for a in alphas:
        s = amax / (QMAX * a)
        err = (fake_quant(wg, s) - wg).pow(2).sum(dim=-1, keepdim=True)
        if best is None:
            best, best_err = s, err
        else:
            take = err < best_err
            best = torch.where(take, s, best)
            best_err = torch.where(take, err, best_err)
    return best.squeeze(-1)


def expand_scales(scales: torch.Tensor, in_features: int, group_size: int | None) -> torch.Tensor:
    """[out, G] -> [out, in] (each column gets its group's scale)."""
    G = scales.shape[1]
    if G == 1:
        return scales.expand(-1, in_features)
    return scales.repeat_interleave(group_size, dim=1)[:, :in_features]


def quantize_weight_rtn(w: torch.Tensor, group_size: int | None = 128,
                        alphas: tuple[float, ...] = ALPHAS) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest int4 with MSE-grid scales. Returns (codes int8 [out,in], scales [out,G])."""
    scales = mse_grid_scales(w, group_size, alphas)
    codes = quantize_codes(w.float(), expand_scales(scales, w.shape[1], group_size))
    return codes.to(torch.int8), scales


def dequantize_weight(codes: torch.Tensor, scales: torch.Tensor, group_size: int | None) -> torch.Tensor:
    return codes.float() * expand_scales(scales.float(), codes.shape[1], group_size)


def per_token_scales(x: torch.Tensor) -> torch.Tensor:
    """Dynamic per-token scale max|x_row| / 7, shape [..., 1]."""
    return x.abs().amax(dim=-1, keepdim=True).clamp_min(EPS) / QMAX
