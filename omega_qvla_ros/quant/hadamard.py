"""Normalized Hadamard matrices and a fast transform, in PyTorch.

Orders supported: 2^k (Sylvester) and K·2^k for K in BASE_ORDERS, whose base matrices
come from Paley's constructions (I: q prime, q ≡ 3 mod 4 → order q+1; II: q prime,
q ≡ 1 mod 4 → order 2(q+1)). 40 = 20·2, 24 = 12·2, and so on. Every matrix returned is
divided by sqrt(n), so it is orthogonal. The transform convention is a row vector on
the right: `fast_hadamard(x) == x @ hadamard_matrix(n)`.
"""
from __future__ import annotations

import functools
import math

import torch

# K -> (construction, prime q)
_PALEY = {12: ("I", 11), 20: ("I", 19), 28: ("II", 13), 36: ("II", 17),
          44: ("I", 43), 60: ("I", 59)}
BASE_ORDERS = tuple(sorted(_PALEY))


def _chi(q: int) -> list[int]:
    """Quadratic character mod prime q: chi[a] in {0, 1, -1}."""
    squares = {(i * i) % q for i in range(1, q)}
    return [0] + [1 if a in squares else -1 for a in range(1, q)]


def _paley(K: int) -> torch.Tensor:
    kind, q = _PALEY[K]
    chi = _chi(q)
    Q = torch.tensor([[chi[(j - i) % q] for j in range(q)] for i in range(q)], dtype=torch.float64)
    n = q + 1
    S = torch.zeros(n, n, dtype=torch.float64)
    if kind == "I":  # skew conference matrix; H = I + S
        S[0, 1:] = 1
        S[1:, 0] = -1
        S[1:, 1:] = Q
        H = torch.eye(n, dtype=torch.float64) + S
    else:  # symmetric conference matrix of order q+1, doubled
        S[0, 1:] = 1
        S[1:, 0] = 1
        S[1:, 1:] = Q
        A = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        B = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        H = torch.kron(S, A) + torch.kron(torch.eye(n, dtype=torch.float64), B)
    assert H.shape[0] == K
    return H


def decompose(n: int) -> tuple[int, int] | None:
    """n = K · 2^m with K = 1 or a base order; returns (K, 2^m) or None if unsupported."""
    if n < 1:
        return None
    if n & (n - 1) == 0:
        return 1, n
    for K in BASE_ORDERS:
        if n % K == 0:
            p = n // K
            if p & (p - 1) == 0:
                return K, p
    return None


def is_supported(n: int) -> bool:
    return decompose(n) is not None


@functools.lru_cache(maxsize=64)
def _unnormalized(n: int) -> torch.Tensor:
    d = decompose(n)
    if d is None:
        raise ValueError(f"no Hadamard matrix of order {n} (supported: 2^k and K·2^k, "
                         f"K in {BASE_ORDERS})")
    K, p = d
    H = torch.ones(1, 1, dtype=torch.float64)
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    while H.shape[0] < p:
        H = torch.kron(H, h2)
    if K > 1:
        H = torch.kron(_paley(K), H)
    return H


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Orthogonal (normalized) Hadamard matrix of order n."""
    return (_unnormalized(n) / math.sqrt(n)).to(dtype=dtype, device=device)


def _fwht_pow2(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized Walsh-Hadamard transform (Sylvester order) along the last axis."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    y = x
    while h < n:
        y = y.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return y.reshape(*lead, n)


def fast_hadamard(x: torch.Tensor) -> torch.Tensor:
    """x @ hadamard_matrix(n) along the last axis in O(n log n) (+ K² for K·2^m)."""
    n = x.shape[-1]
    d = decompose(n)
    if d is None:
        raise ValueError(f"no Hadamard transform of order {n}")
    K, p = d
    if K == 1:
        return _fwht_pow2(x) / math.sqrt(n)
    z = _fwht_pow2(x.reshape(*x.shape[:-1], K, p))  # sum over the 2^m factor
    HK = _paley(K).to(dtype=x.dtype, device=x.device)
    y = torch.einsum("...ad,ac->...cd", z, HK)  # sum over the K factor
    return y.reshape(x.shape) / math.sqrt(n)
