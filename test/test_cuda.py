"""Integer path and the node's runtime on CUDA, against the CPU. Skipped where no GPU is
present (here and in CI); run on a lent GPU by `bench/cuda_check.py`. The comparisons
themselves are `omega_qvla_ros.tools.device_check` (shapes around `torch._int_mm`'s rules).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omega_qvla_ros.tools.device_check import LAYER_SHAPES, compare_layer, compare_policy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mode", ["dynamic", "per_step_factorized"])
@pytest.mark.parametrize("shape", LAYER_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cuda_integer_equals_reference(shape, mode):
    """Same device: integer == reference to float rounding. Across devices: the rotation's
    float rounding differs, so an activation lying on a rounding boundary may get the next
    code (measured: one such code in 1,024,000 at 50×2048×2048); the rows whose codes agree
    must agree to float rounding, and flips must stay rare."""
    r = compare_layer(shape, mode, "cuda")
    assert r["act_mode"] == mode and r["integer_layer"]
    assert r["integer_vs_reference_max_rel"] < 1e-5
    assert r["rows_with_same_codes_min_share"] >= 0.9
    assert r["integer_vs_cpu_integer_same_codes_max_rel"] < 1e-5
    assert r["activation_codes_differing_from_cpu"] <= 1e-4 * r["activation_codes"]


@pytest.fixture(scope="module")
def int_pack(tmp_path_factory):
    from omega_qvla_ros.tools.cli import main as cli

    out = tmp_path_factory.mktemp("packs") / "pi05_int"
    assert cli(["quantize", "--recipe", "omega_qvla_int", "--calib", "synthetic", "--out", str(out),
                "--json"]) == 0
    return out


@pytest.mark.parametrize("which", ["fp16", "omega_qvla", "omega_qvla_int"])
def test_policy_runtime_on_cuda_matches_cpu(which, int_pack):
    """The node's runtime (Policy.from_pack + infer) on the GPU, same observation and noise
    as on the CPU. FP: equal to float rounding. W4A4 is discontinuous: a 1e-7 difference in
    a layer's input can flip one activation code, and the flip travels through the later
    layers and steps (measured on the H200: shipped omega_qvla pack max 0.094 rad, mean 0.017;
    every layer fed the same input gives the same codes on both devices). So W4A4 must stay
    well inside its own quantization error: under half of the CPU's W4A4-vs-FP distance
    (measured max 0.18, mean 0.064 rad)."""
    fp = REPO / "models" / "pi05_small_aloha"
    path = {"fp16": fp, "omega_qvla": REPO / "models" / "pi05_small_aloha_w4a4", "omega_qvla_int": int_pack}[which]
    r = compare_policy(path, "cuda", None if which == "fp16" else fp)
    assert r["recipe"] == which and r["on_device"] == "cuda" and r["finite"]
    if which == "omega_qvla_int":
        assert r["integer_layers_on_device"] > 0
    if which == "fp16":
        assert r["max_abs_action_diff_rad"] < 1e-4
        return
    assert r["mean_abs_action_diff_rad"] < 0.5 * r["w4a4_vs_fp_mean_rad"], r
    assert r["max_abs_action_diff_rad"] < r["w4a4_vs_fp_max_rad"], r


@pytest.mark.parametrize("dtype", ["float32", "fp16"])
@pytest.mark.parametrize("name", ["pi05_small_aloha", "pi05_small_aloha_w4a4", "gr00t_small_aloha"])
def test_cuda_graphs_replay_the_eager_chunk(name, dtype):
    """A chunk replayed from CUDA graphs is the eager chunk: same kernels, same per-step
    scales (baked into each step's part of the graph). Float GEMMs may take another
    cuBLAS algorithm inside a capture, so float rounding may differ; for W4A4 a rounding
    difference can flip a code, hence the looser bound there."""
    from omega_qvla_ros.tools.device_check import chunk_times

    r = chunk_times(REPO / "models" / name, "cuda", repeats=0, dtype=dtype)
    assert r["graph_runs"]["eager"] == 0, r["graph_failures"]
    assert r["finite"]
    assert r["graph_vs_eager_max_abs"] < (1e-4 if r["recipe"] == "fp16" else 0.05), r


@pytest.mark.parametrize("name", ["pi05_small_aloha_w4a4", "gr00t_small_aloha"])
def test_policy_in_fp16_on_cuda(name):
    """Policy(precision="fp16"): the node's runtime with the float parts in half gives a
    finite chunk near the float32 one (W4A4: within its own W4A4-vs-FP distance)."""
    import numpy as np

    from omega_qvla_ros.runtime.policy import Policy
    from omega_qvla_ros.tools.device_check import random_observation

    p32 = Policy.from_pack(REPO / "models" / name, "cuda")
    p16 = Policy.from_pack(REPO / "models" / name, "cuda", precision="fp16")
    raw, noise = random_observation(p32)
    a32, a16 = p32.infer(raw, noise=noise).positions, p16.infer(raw, noise=noise).positions
    assert np.isfinite(a16).all()
    assert np.abs(a16 - a32).mean() < (0.01 if "w4a4" not in name else 0.1)


@pytest.mark.parametrize("T,K", [(50, 128), (144, 192), (816, 2048)])
def test_rotation_on_tensor_cores_keeps_the_codes(T, K):
    """The fused kernels' block product as three TF32 products ("tf32x3", the default) gives
    the codes of the fp32 product ("ieee") but where z/s lies on a rounding edge (a CPU
    emulation, bench/tf32x3_rotation_codes.py: 5 of 12.4M of the shipped pack's codes, an
    exact fp64 product 4), for fp32 and fp16 activations."""
    from omega_qvla_ros.quant import triton_kernels
    from omega_qvla_ros.quant.rotation import build_input_rotation

    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(T + K)
    x = torch.randn(T, K, generator=g) * torch.exp(torch.randn(K, generator=g))
    rot = build_input_rotation(x, "omega")
    perm, blocks = rot.perm.to(torch.int32).cuda(), rot.blocks.float().contiguous().cuda()
    s = float(x.abs().max()) / 7
    for xin in (x.cuda(), x.cuda().half()):
        codes = {p: triton_kernels.rotate_quantize(xin, perm, blocks, s, precision=p) for p in ("ieee", "tf32x3")}
        diff = (codes["ieee"].float() - codes["tf32x3"].float()).abs()
        assert diff.max() <= 1 and (diff > 0).sum() <= max(1, 1e-4 * diff.numel())


@pytest.mark.parametrize("T,K,N", [(50, 1024, 4096), (816, 2048, 16384), (49, 192, 136)])
def test_int8_weight_gemm_equals_int4_gemm(T, K, N):
    """The trial GEMM on an int8 copy of the codes (autotuned tiles, K-major) gives the int4
    GEMM's exact sums and epilogue on the GPU, ragged K included."""
    from omega_qvla_ros.quant import triton_kernels
    from omega_qvla_ros.quant.packing import pack_int4

    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(T + K)
    a = torch.randint(-8, 8, (T, K), generator=g, dtype=torch.int8).cuda()
    w = torch.randint(-8, 8, (N, K), generator=g, dtype=torch.int8).cuda()
    ws, bias = (torch.rand(N, generator=g) * 0.01).cuda(), torch.randn(N, generator=g).cuda()
    for out in (torch.float32, torch.float16):
        want = triton_kernels.int4_gemm(a, pack_int4(w), ws, 0.37, bias, out_dtype=out)
        assert torch.equal(triton_kernels.int8_gemm(a, w, ws, 0.37, bias, out_dtype=out), want)
