"""int4 grid, packing (compressed-tensors layout), Hadamard matrices and transforms."""
from __future__ import annotations

import pytest
import torch

from omega_qvla_ros.quant import hadamard
from omega_qvla_ros.quant.int4 import QMAX, mse_grid_scales, quantize_weight_rtn
from omega_qvla_ros.quant.packing import pack_int4, unpack_int4

HADAMARD_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 12, 20, 28, 36, 40, 44, 60, 24, 48, 56,
                  72, 80, 96, 112, 120, 160, 192]


@pytest.mark.parametrize("n", HADAMARD_SIZES)
def test_hadamard_orthogonal_and_fast(n):
    H = hadamard.hadamard_matrix(n, torch.float64)
    assert torch.allclose(H @ H.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(H.abs() * n ** 0.5, torch.ones(n, n, dtype=torch.float64), atol=1e-12)
    x = torch.randn(7, n, dtype=torch.float64)
    assert torch.allclose(hadamard.fast_hadamard(x), x @ H, atol=1e-12)


def test_hadamard_spreads_a_spike():
    z = torch.zeros(64)
    z[17] = 8.0
    y = hadamard.fast_hadamard(z)
    assert y.abs().max() <= z.norm() / 8 + 1e-6


def test_unsupported_hadamard_order():
    with pytest.raises(ValueError, match="no Hadamard"):
        hadamard.hadamard_matrix(50)


def _ct_reference_pack(codes: torch.Tensor) -> torch.Tensor:
    """compressed-tensors pack-quantized, 4 bits, written from its documented rule with
    plain Python ints: stored value q+8, column c in word c//8 at bits 4·(c%8)."""
    rows, cols = codes.shape
    words = -(-cols // 8)
    out = []
    for r in range(rows):
        row = []
        for w in range(words):
            v = 0
            for j in range(8):
                c = 8 * w + j
                nib = int(codes[r, c]) + 8 if c < cols else 0
                v |= nib << (4 * j)
            row.append(v - (1 << 32) if v >= (1 << 31) else v)
        out.append(row)
    return torch.tensor(out, dtype=torch.int32)


@pytest.mark.parametrize("cols", [8, 64, 61, 130])
def test_pack_roundtrip_and_compressed_tensors_layout(cols):
    g = torch.Generator().manual_seed(cols)
    codes = torch.randint(-8, 8, (5, cols), generator=g, dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.int32 and packed.shape == (5, -(-cols // 8))
    assert torch.equal(packed, _ct_reference_pack(codes))
    assert torch.equal(unpack_int4(packed, cols), codes)


def test_pack_rejects_out_of_range():
    with pytest.raises(ValueError):
        pack_int4(torch.tensor([[9]], dtype=torch.int8))


def test_mse_grid_scales_not_worse_than_absmax():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g)
    codes, scales = quantize_weight_rtn(w, 128)
    assert scales.shape == (64, 2)
    assert codes.min() >= -8 and codes.max() <= 7
    err = (codes.float() * scales.repeat_interleave(128, 1) - w).pow(2).sum()
    s_max = w.reshape(64, 2, 128).abs().amax(-1) / QMAX
    q = torch.clamp(torch.round(w / s_max.repeat_interleave(128, 1)), -8, 7)
    err_max = (q * s_max.repeat_interleave(128, 1) - w).pow(2).sum()
    assert err <= err_max
    assert mse_grid_scales(w, None).shape == (64, 1)
