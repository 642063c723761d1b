"""Fused W4A4 kernels in Triton, for NVIDIA GPUs (Jetson Orin included): a QuantLinear
runs as two kernels instead of a chain of a dozen unfused ops (the chain measured a
~0.25 ms floor per layer on an H200).

- `rotate_quantize`: gathers each 64-channel block of the input through the layer's
  permutation, multiplies it by its rotation block (the channel divisor and a static
  scale already folded in: QuantLinear._input_transform) and writes the int4 codes
  round(z / s) clamped to [-8, 7] as int8, for one scale per tensor (the default
  recipe's static backbone scale and per-step action-head scale).
- `int4_gemm`: int8 activation codes × int4 weight codes unpacked inside the kernel
  from the pack's own words (compressed-tensors `pack-quantized` layout, packing.py),
  int32 accumulation, and the rescale (activation scale · per-row weight scale) and
  bias in the epilogue.

On a GPU the GEMM's tile sizes are autotuned per (T, N, K) among GEMM_CONFIGS (the
~800-token prefix wants large tiles, 50 action tokens narrow ones); the interpreter
runs one small fixed tile. The int4 words stay packed in the GEMM: an H200 ran an int8
copy of the codes (a [K, N] layout, one byte per weight) slower, 0.41 vs 0.25 ms at
816×2048×16384 (bench/results/cuda_int8_trial_nvidia_h200.json).

Both are exact where the unfused path is: the codes are integers, the int32 sums are
exact, and the rotation's float products are summed in fp32 ("ieee" precision: no
TF32). Ties round half to even, as torch.round. Tested on the CPU through Triton's
interpreter (TRITON_INTERPRET=1); QuantLinear falls back to the unfused path where
Triton is missing, and for good when a kernel fails to build on a device.
"""
from __future__ import annotations

import functools
import os

import torch

from .rotation import BLOCK


try:  # the kernels are module globals: Triton resolves `tl` from them (its interpreter too)
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the unfused paths run
    triton = tl = None


def available(device: torch.device) -> bool:
    """Triton is importable and can run on `device` (a CUDA GPU, or any device under
    Triton's interpreter, TRITON_INTERPRET=1)."""
    if triton is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


# (rows, columns, depth, warps, stages) per GEMM tile tried by the autotuner on a GPU:
# large tiles for the trunk's ~800-token prefix, narrow ones for 50 action tokens
GEMM_CONFIGS = [(128, 128, 128, 8, 3), (64, 128, 128, 4, 4), (128, 256, 64, 8, 3),
                (64, 64, 128, 4, 4), (32, 128, 128, 4, 4), (16, 128, 128, 4, 5), (16, 64, 256, 4, 4)]


def _tuned() -> bool:
    """Autotune on a real GPU; Triton's interpreter (CPU tests) runs one fixed tile."""
    return os.environ.get("TRITON_INTERPRET") != "1"


@functools.lru_cache(maxsize=2)
def _kernels(tuned: bool = False):
    """The jit-wrapped kernels (rotate+quantize, int4 GEMM), built on first use
    (TRITON_INTERPRET is read then); with `tuned`, the GEMM autotuned over GEMM_CONFIGS
    per (T, N, K)."""
    gemm = triton.jit(_int4_gemm_kernel)
    if tuned:
        gemm = triton.autotune(configs=[triton.Config({"BT": bt, "BN": bn, "BK": bk}, num_warps=w, num_stages=st)
                                        for bt, bn, bk, w, st in GEMM_CONFIGS], key=["T", "N", "K"])(gemm)
    return triton.jit(_rotate_quantize_kernel), gemm


def _rotate_quantize_kernel(x_ptr, perm_ptr, rot_ptr, out_ptr, T, n, stride_x, inv_scale,
                           BT: tl.constexpr, B: tl.constexpr):
    pid_t = tl.program_id(0)
    blk = tl.program_id(1)
    rows = pid_t * BT + tl.arange(0, BT)
    cols = blk * B + tl.arange(0, B)
    src = tl.load(perm_ptr + cols)
    rmask = rows < T
    x = tl.load(x_ptr + rows[:, None] * stride_x + src[None, :], mask=rmask[:, None], other=0.0)
    bi = tl.arange(0, B)
    rot = tl.load(rot_ptr + blk * B * B + bi[:, None] * B + bi[None, :])
    z = tl.dot(x.to(tl.float32), rot, input_precision="ieee")
    v = z * inv_scale
    r = tl.floor(v + 0.5)  # round half to even, as torch.round
    r = tl.where(((r - v) == 0.5) & ((r - 2.0 * tl.floor(r * 0.5)) != 0.0), r - 1.0, r)
    q = tl.minimum(tl.maximum(r, -8.0), 7.0)
    tl.store(out_ptr + rows[:, None] * n + cols[None, :], q.to(tl.int8), mask=rmask[:, None])


def _int4_gemm_kernel(a_ptr, w_ptr, ws_ptr, bias_ptr, y_ptr, T, N, K, words, act_scale,
                     HAS_BIAS: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_t * BT + tl.arange(0, BT)
    cols = pid_n * BN + tl.arange(0, BN)
    rmask = rows < T
    cmask = cols < N
    shifts = 4 * tl.arange(0, 8)
    acc = tl.zeros((BT, BN), dtype=tl.int32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        a = tl.load(a_ptr + rows[:, None] * K + ks[None, :], mask=rmask[:, None] & (ks[None, :] < K),
                    other=0)
        ws = k0 // 8 + tl.arange(0, BK // 8)
        wp = tl.load(w_ptr + cols[:, None] * words + ws[None, :],
                     mask=cmask[:, None] & (ws[None, :] < words), other=0)
        nib = (wp[:, :, None] >> shifts[None, None, :]) & 0xF  # [BN, BK/8, 8]: column 8w + j
        w = (tl.reshape(nib, (BN, BK)) - 8).to(tl.int8)
        acc += tl.dot(a, tl.trans(w))
    y = acc.to(tl.float32) * act_scale * tl.load(ws_ptr + cols, mask=cmask, other=0.0)[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=cmask, other=0.0)[None, :]
    tl.store(y_ptr + rows[:, None] * N + cols[None, :], y, mask=rmask[:, None] & cmask[None, :])


def _rows_tile(T: int) -> int:
    return 16 if T <= 16 else 32 if T <= 32 else 64


def rotate_quantize(x: torch.Tensor, perm: torch.Tensor, blocks: torch.Tensor, scale: float) -> torch.Tensor:
    """int8 codes clamp(round((x P blockdiag(blocks)) / scale), -8, 7) for x [T, n] with
    n = m·64 (no tail block), perm [n] int32, blocks [m, 64, 64] float32."""
    T, n = x.shape
    m = blocks.shape[0]
    if m * BLOCK != n or blocks.shape[1:] != (BLOCK, BLOCK):
        raise ValueError(f"rotate_quantize needs {n} channels in whole {BLOCK}-blocks")
    kernel = _kernels(_tuned())[0]
    out = torch.empty(T, n, dtype=torch.int8, device=x.device)
    BT = _rows_tile(T)
    x = x if x.stride(1) == 1 else x.contiguous()
    kernel[(triton.cdiv(T, BT), m)](x, perm, blocks, out, T, n, x.stride(0), 1.0 / scale, BT=BT, B=BLOCK)
    return out


def int4_gemm(codes: torch.Tensor, packed: torch.Tensor, weight_scale: torch.Tensor, act_scale: float,
              bias: torch.Tensor | None = None, tile: tuple[int, int, int] | None = None) -> torch.Tensor:
    """(codes · unpack(packed)ᵀ) · act_scale · weight_scale (+ bias), float32 [T, N], for
    int8 codes [T, K] and the pack's int32 words [N, ceil(K / 8)]. `tile` (rows, columns,
    depth) fixes the GEMM's tile instead of the autotuner's or the default (tests)."""
    T, K = codes.shape
    N, words = packed.shape
    if words * 8 < K:
        raise ValueError(f"{words} words per row cannot hold {K} int4 codes")
    y = torch.empty(T, N, dtype=torch.float32, device=codes.device)
    args = (codes.contiguous(), packed.contiguous(), weight_scale, bias if bias is not None else weight_scale, y,
            T, N, K, words, float(act_scale))
    tuned = _tuned() and tile is None
    kernel = _kernels(tuned)[1]
    if tuned:
        kernel[lambda meta: (triton.cdiv(T, meta["BT"]), triton.cdiv(N, meta["BN"]))](*args, HAS_BIAS=bias is not None)
    else:
        BT, BN, BK = tile or (_rows_tile(T), 64, 64)
        kernel[(triton.cdiv(T, BT), triton.cdiv(N, BN))](*args, HAS_BIAS=bias is not None, BT=BT, BN=BN, BK=BK)
    return y
