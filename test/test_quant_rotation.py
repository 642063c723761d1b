"""Rotations are exact in float; the composite SVD·Hadamard block equalises weight energy."""
from __future__ import annotations

import pytest
import torch

from omega_qvla_ros.quant.rotation import build_input_rotation, build_output_rotation

SIZES = [64, 128, 100, 200, 40, 72]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("mode", ["omega", "svd", "hadamard", "random_hadamard"])
def test_input_rotation_exact(n, mode):
    g = torch.Generator().manual_seed(n)
    W = torch.randn(96, n, generator=g)
    x = torch.randn(11, n, generator=g)
    R = build_input_rotation(W, mode).to(dtype=torch.float32)
    y = R.apply(x) @ R.apply(W).T
    ref = x @ W.T
    assert float((y - ref).norm() / ref.norm()) < 1e-5
    D = R.dense()
    assert torch.allclose(D @ D.T, torch.eye(n, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(R.apply_inverse(R.apply(x)), x, atol=1e-5)


@pytest.mark.parametrize("n_in,n_out", [(128, 192), (100, 70), (64, 64)])
def test_input_and_output_rotation_exact(n_in, n_out):
    g = torch.Generator().manual_seed(1)
    W = torch.randn(n_out, n_in, generator=g)
    b = torch.randn(n_out, generator=g)
    x = torch.randn(9, n_in, generator=g)
    R = build_input_rotation(W, "omega")
    Wt = R.apply(W.double())
    Q = build_output_rotation(Wt)
    W_store = Q.apply(Wt.T).T
    y = Q.apply_inverse(R.apply(x.double()) @ W_store.T) + b
    ref = x.double() @ W.double().T + b
    assert float((y - ref).norm() / ref.norm()) < 1e-5


def test_composite_block_equalises_weight_energy():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(256, 192, generator=g) * torch.exp(torch.randn(192, generator=g))
    R = build_input_rotation(W, "omega")
    Wt = R.apply(W.double())
    for b in range(3):
        e = Wt[:, 64 * b:64 * (b + 1)].pow(2).sum(0)
        target = W[:, R.perm[64 * b:64 * (b + 1)]].double().pow(2).sum() / 64
        assert float((e / target - 1).abs().max()) < 1e-6


def test_zigzag_interleaves_energy_order():
    W = torch.diag(torch.arange(1.0, 9.0)).repeat(2, 1)  # channel j energy ∝ (j+1)^2
    R = build_input_rotation(torch.nn.functional.pad(W, (0, 56)), "omega")
    # descending energy is 7,6,5,…,0 then zero-energy pads; zigzag starts high, low, high…
    assert int(R.perm[0]) == 7
    assert float(W.pow(2).mean(0)[R.perm[1]] if R.perm[1] < 8 else 0.0) == 0.0
    assert int(R.perm[2]) == 6


@pytest.mark.parametrize("n", [72, 192, 256])
def test_runtime_form_dense_when_small(n):
    """A rotation of at most DENSE_MAX channels runs as one dense matmul with the same
    result (float summation order aside); larger ones keep their blocks."""
    from omega_qvla_ros.quant.rotation import DENSE_MAX, DenseRotation, runtime_form

    g = torch.Generator().manual_seed(n)
    R = build_input_rotation(torch.randn(96, n, generator=g), "omega").to(dtype=torch.float32)
    x = torch.randn(13, n, generator=g)
    run = runtime_form(R)
    assert isinstance(run, DenseRotation) == (n <= DENSE_MAX)
    assert torch.allclose(run.apply(x), R.apply(x), atol=1e-5)
    assert torch.allclose(run.apply_inverse(x), R.apply_inverse(x), atol=1e-5)
    assert runtime_form(None) is None
