"""The fused Triton W4A4 kernels (quant/triton_kernels.py), run on the CPU through
Triton's interpreter: the same kernels a GPU compiles, checked against the unfused ops."""
import os

import pytest
import torch

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":  # conftest sets it where there is no GPU
    pytest.skip("the kernels are checked on CPU tensors through Triton's interpreter",
                allow_module_level=True)

from omega_qvla_ros.quant import triton_kernels  # noqa: E402
from omega_qvla_ros.quant.context import denoising_step  # noqa: E402
from omega_qvla_ros.quant.int4 import quantize_codes  # noqa: E402
from omega_qvla_ros.quant.packing import pack_int4  # noqa: E402
from omega_qvla_ros.quant.rotation import BlockRotation, build_input_rotation  # noqa: E402
from omega_qvla_ros.tools.device_check import STEPS, default_layer  # noqa: E402
from omega_qvla_ros.tools.quant_suites import drift_inputs  # noqa: E402


def test_rotate_quantize_equals_unfused():
    g = torch.Generator().manual_seed(0)
    T, n = 37, 192
    x = torch.randn(T, n, generator=g) * 3
    rot = build_input_rotation(torch.randn(64, n, generator=g), "omega")
    blocks = rot.blocks.float() * 1.7
    s = 0.41
    ref = quantize_codes(BlockRotation(rot.perm, blocks, None).apply(x), torch.tensor(s))
    got = triton_kernels.rotate_quantize(x, rot.perm.to(torch.int32), blocks.contiguous(), s)
    assert got.dtype == torch.int8 and got.shape == (T, n)
    diff = (got.float() - ref).abs()
    # fp32 sums in another order: a code may move by one where z/s lies on a rounding edge
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    assert int(got.min()) == -8 and int(got.max()) == 7  # the clamp is exercised


def test_round_half_to_even_like_torch():
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.49, -3.51] * 8] * 16)
    eye = torch.eye(64).reshape(1, 64, 64)
    got = triton_kernels.rotate_quantize(x, torch.arange(64, dtype=torch.int32), eye, 1.0)
    assert torch.equal(got.float(), torch.clamp(torch.round(x), -8, 7))


def test_rotation_precision_is_one_of_two():
    """The block product's precision reaches both kernels ("tf32x3" by default, "ieee" the
    fp32 baseline; the interpreter computes both in fp32, a GPU test compares their codes:
    test_cuda.py) and anything else is refused by name."""
    assert triton_kernels.ROTATE_PRECISION == "tf32x3"
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(9, 128, generator=g), torch.randint(-8, 8, (16, 128), generator=g, dtype=torch.int8)
    rot = build_input_rotation(torch.randn(64, 128, generator=g), "omega")
    perm, blocks = rot.perm.to(torch.int32), rot.blocks.float().contiguous()
    ws = torch.rand(16, generator=g) + 0.5
    runs = [(triton_kernels.rotate_quantize(x, perm, blocks, 0.3, precision=p),
             triton_kernels.rotate_quantize_gemm(x, perm, blocks, 0.3, pack_int4(w), ws, 0.3, precision=p))
            for p in ("ieee", "tf32x3", None)]
    assert all(torch.equal(a, runs[0][0]) and torch.equal(b, runs[0][1]) for a, b in runs)
    for call in (lambda: triton_kernels.rotate_quantize(x, perm, blocks, 0.3, precision="tf32"),
                 lambda: triton_kernels.rotate_quantize_gemm(x, perm, blocks, 0.3, pack_int4(w), ws, 0.3,
                                                             precision="fp16")):
        with pytest.raises(ValueError, match="rotation precision"):
            call()


@pytest.mark.parametrize("T,K,N", [(37, 200, 136), (5, 64, 64), (70, 130, 17)])
def test_int4_gemm_equals_exact(T, K, N):
    g = torch.Generator().manual_seed(T)
    a = torch.randint(-8, 8, (T, K), generator=g, dtype=torch.int8)
    w = torch.randint(-8, 8, (N, K), generator=g, dtype=torch.int8)
    ws, bias = torch.rand(N, generator=g) + 0.5, torch.randn(N, generator=g)
    y = triton_kernels.int4_gemm(a, pack_int4(w), ws, 0.37, bias)
    ref = (a.double() @ w.double().t()) * 0.37 * ws.double() + bias.double()
    assert torch.allclose(y.double(), ref, rtol=1e-6, atol=1e-5)
    y0 = triton_kernels.int4_gemm(a, pack_int4(w), ws, 1.0)
    assert torch.allclose(y0.double(), (a.double() @ w.double().t()) * ws.double(), rtol=1e-6)


@pytest.mark.parametrize("tile", sorted({c[:3] for c in triton_kernels.GEMM_CONFIGS}))
def test_int4_gemm_every_tuned_tile(tile):
    """Every tile the GPU autotuner may pick computes the same exact sums (K and N not
    multiples of the tile: the masks matter)."""
    g = torch.Generator().manual_seed(7)
    T, K, N = 21, 200, 136
    a = torch.randint(-8, 8, (T, K), generator=g, dtype=torch.int8)
    w = torch.randint(-8, 8, (N, K), generator=g, dtype=torch.int8)
    ws = torch.rand(N, generator=g) + 0.5
    ref = (a.double() @ w.double().t()) * 0.37 * ws.double()
    y = triton_kernels.int4_gemm(a, pack_int4(w), ws, 0.37, tile=tile)
    assert torch.allclose(y.double(), ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("T,K,N,tile", [(37, 200, 136, None), (5, 64, 64, None), (70, 130, 17, None)]
                         + [(21, K, 136, c[:3]) for c in triton_kernels.INT8_GEMM_CONFIGS for K in (200, 256)])
def test_int8_gemm_equals_int4_gemm(T, K, N, tile):
    """The GEMM on an int8 copy of the codes: the int4 GEMM's exact sums and epilogue,
    for every tile the autotuner may pick, on a ragged K (masked) and a whole one (not);
    tail rows and columns reread real ones and are not stored."""
    g = torch.Generator().manual_seed(T + K)
    a = torch.randint(-8, 8, (T, K), generator=g, dtype=torch.int8)
    w = torch.randint(-8, 8, (N, K), generator=g, dtype=torch.int8)
    ws, bias = torch.rand(N, generator=g) + 0.5, torch.randn(N, generator=g)
    ref = triton_kernels.int4_gemm(a, pack_int4(w), ws, 0.37, bias)
    assert torch.equal(triton_kernels.int8_gemm(a, w, ws, 0.37, bias, tile=tile), ref)
    half = triton_kernels.int8_gemm(a, w, ws, 0.37, tile=tile, out_dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.equal(half, triton_kernels.int4_gemm(a, pack_int4(w), ws, 0.37).half())
    with pytest.raises(ValueError, match="int8 weights"):
        triton_kernels.int8_gemm(a, pack_int4(w), ws, 0.37)


@pytest.mark.parametrize("T,K,N,tile", [(37, 192, 136, None), (5, 64, 64, None), (70, 128, 200, (32, 128))]
                         + [(21, 128, 136, c[:2]) for c in triton_kernels.FUSED_CONFIGS[:3]])
def test_one_kernel_layer_equals_two_kernels(T, K, N, tile):
    """rotate_quantize_gemm == int4_gemm(rotate_quantize(...)): the same codes (the same
    fp32 products and rounding) and the same exact sums; in half precision the one
    rounding of that output."""
    g = torch.Generator().manual_seed(T + N)
    x = torch.randn(T, K, generator=g) * 3
    rot = build_input_rotation(torch.randn(64, K, generator=g), "omega")
    perm, blocks = rot.perm.to(torch.int32), (rot.blocks.float() * 1.3).contiguous()
    w = torch.randint(-8, 8, (N, K), generator=g, dtype=torch.int8)
    ws, bias = torch.rand(N, generator=g) + 0.5, torch.randn(N, generator=g)
    two = triton_kernels.int4_gemm(triton_kernels.rotate_quantize(x, perm, blocks, 0.45), pack_int4(w), ws, 0.45, bias)
    one = triton_kernels.rotate_quantize_gemm(x, perm, blocks, 0.45, pack_int4(w), ws, 0.45, bias, tile=tile)
    assert one.dtype == torch.float32 and torch.equal(one, two)
    half = triton_kernels.rotate_quantize_gemm(x.half(), perm, blocks, 0.45, pack_int4(w), ws, 0.45, bias,
                                               tile=tile, out_dtype=torch.float16)
    codes_h = triton_kernels.rotate_quantize(x.half(), perm, blocks, 0.45)
    ref_h = triton_kernels.int4_gemm(codes_h, pack_int4(w), ws, 0.45, bias)
    assert half.dtype == torch.float16 and torch.equal(half, ref_h.half())


def test_one_kernel_only_where_it_pays(monkeypatch):
    """Where the H200 measured it faster: short contractions, small outputs."""
    assert triton_kernels.fuse_pays(50, 128, 1024) and triton_kernels.fuse_pays(144, 192, 384)
    assert not triton_kernels.fuse_pays(144, 192, 1536) and not triton_kernels.fuse_pays(50, 512, 128)
    assert not triton_kernels.fuse_pays(816, 2048, 16384)
    monkeypatch.setattr(triton_kernels, "FUSE_MAX_K", 0)
    assert not triton_kernels.fuse_pays(1, 64, 64)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("side,mode", [("action_head", "per_step_factorized"), ("backbone", "static_tensor")])
def test_quant_linear_on_triton_in_half(side, mode, fused, monkeypatch):
    """Half-precision activations (a model whose float parts run in fp16): the layer reads
    them as they are and writes its output in fp16, rounded once from the fp32 epilogue."""
    monkeypatch.setattr(triton_kernels, "FUSE_MAX_K", 2 ** 20 if fused else 0)
    monkeypatch.setattr(triton_kernels, "FUSE_MAX_OUTPUTS", 2 ** 40)
    calls = []
    for name in ("rotate_quantize_gemm", "int4_gemm"):
        real = getattr(triton_kernels, name)
        monkeypatch.setattr(triton_kernels, name, lambda *a, _r=real, _n=name, **k: (calls.append(_n), _r(*a, **k))[1])
    q = default_layer(192, 136, side)
    x = drift_inputs(37, 192, torch.Generator().manual_seed(4), steps=STEPS)[5].half()
    with denoising_step(5, STEPS):
        q.path, q.backend = "reference", "auto"
        ref = q(x.float())
        q.path, q.backend = "integer", "triton"
        y = q(x)
    assert calls == ["rotate_quantize_gemm" if fused else "int4_gemm"]
    assert y.dtype == torch.float16 and not q.triton_failed
    assert float((y.float() - ref).pow(2).mean() / ref.pow(2).mean()) < 1e-5


def test_quant_linear_gemm_on_int8_weights_equals_int4(monkeypatch):
    """GEMM_WEIGHTS = "int8" (the trial): the two-kernel layer's GEMM reads an int8 copy of
    its codes, built once, and gives the int4 GEMM's output bit for bit."""
    monkeypatch.setattr(triton_kernels, "FUSE_MAX_K", 0)
    q = default_layer(192, 136, "backbone")
    x = drift_inputs(37, 192, torch.Generator().manual_seed(4), steps=STEPS)[0]
    q.path, q.backend = "integer", "triton"
    y4 = q(x)
    calls = []
    real = triton_kernels.int8_gemm
    monkeypatch.setattr(triton_kernels, "int8_gemm", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    monkeypatch.setattr(triton_kernels, "GEMM_WEIGHTS", "int8")
    y8 = q(x)
    assert calls and not q.triton_failed and torch.equal(y8, y4)
    assert torch.equal(q._cache["triton_int8"], q.weight_codes())
    monkeypatch.setattr(triton_kernels, "GEMM_WEIGHTS", "int16")  # a wrong setting: an error, Triton not given up
    with pytest.raises(ValueError, match="GEMM_WEIGHTS 'int16'"):
        q(x)
    assert not q.triton_failed


@pytest.mark.parametrize("side,mode", [("action_head", "per_step_factorized"), ("backbone", "static_tensor")])
def test_quant_linear_on_triton_equals_reference(side, mode):
    """A layer on backend "triton" (the fused kernels) against its own reference path."""
    n_in, n_out = 192, 136
    q = default_layer(n_in, n_out, side)
    assert q.spec.act_mode == mode and q.spec.rotation == "omega"
    x = drift_inputs(37, n_in, torch.Generator().manual_seed(4), steps=STEPS)
    for t in (0, 5, 9):
        with denoising_step(t, STEPS):
            q.path, q.backend = "reference", "auto"
            ref = q(x[t])
            if side == "backbone" and t:
                continue  # one static scale: the step does not matter
            q.path, q.backend = "integer", "triton"
            assert q._backend(x.device) == "triton"
            y = q(x[t])
        assert not getattr(q, "triton_failed", False)
        rel = float((y - ref).abs().max() / ref.abs().max())
        assert rel < 2e-2, (mode, t, rel)  # a rare code one step off (fp32 summation order)
        assert float((y - ref).pow(2).mean() / ref.pow(2).mean()) < 1e-5


def test_triton_failure_falls_back_once(monkeypatch):
    q = default_layer(192, 64, "action_head")
    x = torch.randn(9, 192)
    q.path, q.backend = "integer", "triton"
    with denoising_step(3, STEPS):
        ref = q(x)

        def broken(*a, **k):
            raise RuntimeError("no kernel image for this device")
        monkeypatch.setattr(triton_kernels, "rotate_quantize", broken)
        monkeypatch.setattr(triton_kernels, "rotate_quantize_gemm", broken)
        q2 = default_layer(192, 64, "action_head")
        q2.path, q2.backend = "integer", "triton"
        with pytest.warns(RuntimeWarning, match="unfused integer path"):
            y = q2(x)
        assert q2.triton_failed and q2._backend(x.device) == "exact"
        assert float((y - ref).abs().max() / ref.abs().max()) < 2e-2


def test_input_group_on_triton_equals_layers():
    """A shared-input group (one rotation, one GEMM over the stacked int4 words, the
    members' biases in the epilogue) on the fused kernels against its members one by one
    on the reference path."""
    import copy

    from torch import nn

    from omega_qvla_ros.quant import RECIPES, quantize

    torch.manual_seed(0)
    par = nn.Module()
    par.a, par.b = nn.Linear(128, 192), nn.Linear(128, 64)
    model = nn.Module()
    model.attn = par

    def run(m, x):
        with denoising_step(2, STEPS):
            return torch.cat([m.attn.a(x), m.attn.b(x)], dim=-1)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(40, 128, generator=g) * torch.exp(torch.randn(128, generator=g)) for _ in range(2)]
    quantize(model, RECIPES["omega_qvla"].with_scopes(action_head=[r"attn\.[ab]$"]), batches,
             forward=lambda m, x: run(m, x))
    assert model.attn.a.siblings == [model.attn.a, model.attn.b]
    ref_model = copy.deepcopy(model)
    for q in (ref_model.attn.a, ref_model.attn.b):
        q.siblings, q.path = None, "reference"
    for q in (model.attn.a, model.attn.b):
        q.path, q.backend = "integer", "triton"
    x = batches[0][:37]
    y, ref = run(model, x), run(ref_model, x)
    assert model.attn.a._group().layer._backend(x.device) == "triton"
    assert not getattr(model.attn.a._group().layer, "triton_failed", False)
    assert float((y - ref).pow(2).mean() / ref.pow(2).mean()) < 1e-5
