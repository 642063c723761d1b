"""GPTQ int4 weight solvers (on the rotated weight with the rotated Hessian).

- `gptq_quantize`: standard GPTQ — columns processed in lazy blocks of 128, each
  column's rounding error pushed onto the not-yet-quantized columns through the
  Cholesky factor of H⁻¹, across block boundaries; damping λ·mean(diag H) with
  λ = 0.01; optional act-order (descending diag H) with static groups so that group
  scales stay tied to original column positions.
- `gptq_blocklocal`: the variant of the paper's code — every 128-column block solved
  alone against its own diagonal Hessian block (damping 0.05), no error carried.
Both pick group scales with the MSE grid (int4.mse_grid_scales). The Hessian algebra
runs in the Hessian's dtype: float64 by default, float32 for the published sizes (a
16384-wide Hessian is 2 GiB in float64; recipes choose with `hessian_dtype`).
"""
from __future__ import annotations

import torch

from .int4 import QMAX, QMIN, mse_grid_scales


def _inv_chol_upper(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of H⁻¹ after damping. H is consumed (damped in place), and no
    dense identity is built: a 16384-wide float32 Hessian is 1 GiB, so each [n, n] copy
    counts."""
    d = H.diagonal()
    d.add_(damp * torch.mean(d))
    for _ in range(6):
        L, info = torch.linalg.cholesky_ex(H)
        if int(info) == 0:
            break
        d.add_(0.1 * torch.mean(d))
    del H, d
    Hinv = torch.cholesky_inverse(L)
    del L
    return torch.linalg.cholesky(Hinv, upper=True)


def _prepare(W: torch.Tensor, H: torch.Tensor, copy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = H.dtype if H.dtype in (torch.float32, torch.float64) else torch.float64
    W = W.detach().to(dtype).clone()
    H = H.detach().to(dtype)
    if copy or H.data_ptr() == 0:
        H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    return W, H


def _solve(W: torch.Tensor, Hinv: torch.Tensor, scale_of_col, block: int,
           carry: bool) -> torch.Tensor:
    """Core GPTQ loop. scale_of_col(c, Wcur) -> [out] scale of column c (processed order)."""
    out, n = W.shape
    Q = torch.zeros_like(W)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        E1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            s = scale_of_col(i1 + i, W1, i)
            q = torch.clamp(torch.round(w / s), QMIN, QMAX)
            Q1[:, i] = q
            err = (w - q * s) / d
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            E1[:, i] = err
        Q[:, i1:i2] = Q1
        if carry and i2 < n:
            W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    return Q


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, group_size: int | None = 128,
                  damp: float = 0.01, block: int = 128, act_order: bool = False, copy: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard GPTQ. Returns (codes int8 [out, in], scales [out, G]). With copy=False
    H is consumed (its memory reused)."""
    W, H = _prepare(W, H, copy)
    out, n = W.shape
    g = n if group_size is None or group_size >= n else group_size
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(n, device=H.device)
    static = act_order or g == n
    if static:  # scales fixed up front on original column positions
        scales = mse_grid_scales(W, None if g == n else g)
    else:
        scales = torch.zeros(out, -(-n // g), dtype=W.dtype, device=W.device)
    if act_order:
        Wp = W[:, perm]
        H = H[perm][:, perm]
    else:
        Wp = W
    Hinv = _inv_chol_upper(H, damp)
    del H
    block = max(block, 1)

    def scale_of_col(c: int, W1: torch.Tensor, i: int) -> torch.Tensor:
        orig = int(perm[c])
        G = orig // g
        if not static and orig % g == 0:
            # lazy group scale on the error-updated weights of this group
            cols = W1[:, i:i + g] if i + g <= W1.shape[1] else W1[:, i:]
            scales[:, G] = mse_grid_scales(cols, None).squeeze(1).to(W.dtype)
        return scales[:, G]

    if not static:  # lazy blocks hold whole groups
        block = g * max(1, block // g)
    Qp = _solve(Wp, Hinv, scale_of_col, block, carry=True)
    Q = torch.empty_like(Qp)
    Q[:, perm] = Qp
    return Q.to(torch.int8), scales.float()


def gptq_blocklocal(W: torch.Tensor, H: torch.Tensor, group_size: int | None = 128,
                    damp: float = 0.05, block: int = 128, copy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's simplified GPTQ: each block alone, no cross-block error carry."""
    W, H = _prepare(W, H, copy)
    out, n = W.shape
    g = n if group_size is None or group_size >= n else group_size
    scales = mse_grid_scales(W, None if g == n else g).to(W.dtype)
    Q = torch.zeros_like(W)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        Hinv = _inv_chol_upper(H[i1:i2, i1:i2].clone(), damp)
        sub = W[:, i1:i2].clone()
        Q[:, i1:i2] = _solve(sub, Hinv, lambda c, W1, i: scales[:, (i1 + c) // g], i2 - i1,
                             carry=False)
    return Q.to(torch.int8), scales.float()


def output_error(W: torch.Tensor, What: torch.Tensor, H: torch.Tensor) -> float:
    """Mean output squared error tr((W-Ŵ) H (W-Ŵ)ᵀ) / out for H = XᵀX/N."""
    D = (W.double() - What.double())
    return float(torch.einsum("oi,ij,oj->", D, H.double(), D) / W.shape[0])
