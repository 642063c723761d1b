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
- `int8_gemm`: the same GEMM on an int8 copy of the codes, one byte per weight in the
  pack's [N, K] order (K contiguous, the "K-major" operand Hopper's int8 tensor-core MMA
  reads), loads without masks but on a ragged K. A trial, switched on by GEMM_WEIGHTS =
  "int8" and timed beside the int4 GEMM by bench/cuda_check.py; not yet measured.
- `rotate_quantize_gemm`: both in one kernel, for small layers (`fuse_pays`): each
  program rotates and quantizes the 64-channel blocks of its rows itself, one block per
  step of the contraction, so a layer is one launch instead of two. Every column tile
  redoes its rows' rotation (fp32, no tensor cores) and each program walks its blocks in
  turn, which pays only for short contractions and small outputs (measured: FUSE_MAX_K).

On a GPU the GEMM's tile sizes are autotuned per (T, N, K) among GEMM_CONFIGS (the
~800-token prefix wants large tiles, 50 action tokens narrow ones); the interpreter
runs one small fixed tile. The int4 words stay packed in the GEMM: an H200 ran an int8
copy of the codes in a [K, N] layout (N contiguous) slower, 0.41 vs 0.25 ms at
816×2048×16384 (bench/results/cuda_int8_trial_nvidia_h200.json); the same H200 ran
cuBLASLt's int8 GEMM (`torch._int_mm`, K-major weights) at 0.61-1.05× fp16 at the
published widths where this int4 GEMM ran 0.51-0.56×, so `int8_gemm` tries the K-major
int8 copy in Triton.

Both are exact where the unfused path is: the codes are integers and the int32 sums are
exact. The rotation's block product runs on tensor cores as three TF32 products of each
fp32 operand split into a high and a low TF32 part ("tf32x3", ROTATE_PRECISION): about
fp32's own accuracy (the dropped low × low term is ~2^-22 of a product), so a code differs
from the fp32 path only where z/s lies on a rounding edge, as another summation order
already makes it; fp16 activations are exact in TF32 (both 11 significant bits). The H200
measured the plain fp32 product ("ieee", FMA units) at ~7 µs per 50-row layer, most of
a small layer's time. Ties round half to even, as torch.round. Tested on the CPU through Triton's
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


# the rotation's block product: "tf32x3" (tensor cores, ~fp32 accuracy) or "ieee" (fp32 FMA,
# the measured baseline); Triton's interpreter computes both in fp32
ROTATE_PRECISION = "tf32x3"
PRECISIONS = ("tf32x3", "ieee")


def _precision(precision: str | None) -> str:
    p = ROTATE_PRECISION if precision is None else precision
    if p not in PRECISIONS:
        raise ValueError(f"rotation precision {p!r}: one of {', '.join(PRECISIONS)}")
    return p


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


# (rows, columns, depth, warps, stages) per tile of int8_gemm: Hopper's int8 MMA takes 128-deep
# slices; up to 48 KiB of operands per stage
INT8_GEMM_CONFIGS = [(128, 256, 128, 8, 3), (256, 128, 128, 8, 3), (128, 128, 128, 8, 4), (128, 128, 64, 4, 4),
                     (64, 256, 128, 8, 3), (64, 128, 128, 4, 4), (32, 128, 128, 4, 4), (16, 128, 128, 4, 4),
                     (16, 256, 128, 4, 3), (16, 64, 256, 4, 4)]

# which weights the two-kernel layer's GEMM reads: "int4" (the pack's words, unpacked in the
# kernel; measured) or "int8" (an int8 copy per layer, built on first use: twice the int4
# bytes, half of fp16's; int8_gemm, untimed)
GEMM_WEIGHTS = "int4"
GEMM_WEIGHT_KINDS = ("int4", "int8")


def gemm_weights() -> str:
    """GEMM_WEIGHTS, checked."""
    if GEMM_WEIGHTS not in GEMM_WEIGHT_KINDS:
        raise ValueError(f"GEMM_WEIGHTS {GEMM_WEIGHTS!r}: one of {', '.join(GEMM_WEIGHT_KINDS)}")
    return GEMM_WEIGHTS


def _tuned() -> bool:
    """Autotune on a real GPU; Triton's interpreter (CPU tests) runs one fixed tile."""
    return os.environ.get("TRITON_INTERPRET") != "1"


@functools.lru_cache(maxsize=1)
def _jit_helpers() -> None:
    """The kernels' helper functions, jit-wrapped under the global names the kernels call,
    once per process (Triton refuses a kernel whose globals changed after it compiled)."""
    for name, fn in _HELPERS.items():
        globals()[name] = triton.jit(fn)


@functools.lru_cache(maxsize=2)
def _int8_kernel(tuned: bool = False):
    """int8_gemm's jit-wrapped kernel (EVEN_K from the tile's depth), autotuned with `tuned`."""
    _jit_helpers()
    k = triton.heuristics({"EVEN_K": lambda a: a["K"] % a["BK"] == 0})(triton.jit(_int8_gemm_kernel))
    if tuned:
        k = triton.autotune(configs=[triton.Config({"BT": bt, "BN": bn, "BK": bk}, num_warps=w, num_stages=st)
                                     for bt, bn, bk, w, st in INT8_GEMM_CONFIGS], key=["T", "N", "K"])(k)
    return k


@functools.lru_cache(maxsize=2)
def _kernels(tuned: bool = False):
    """The jit-wrapped kernels (rotate+quantize, int4 GEMM, both in one), built on first use
    (TRITON_INTERPRET is read then); with `tuned`, autotuned per shape over their CONFIGS."""
    _jit_helpers()
    gemm = triton.jit(_int4_gemm_kernel)
    if tuned:
        gemm = triton.autotune(configs=[triton.Config({"BT": bt, "BN": bn, "BK": bk}, num_warps=w, num_stages=st)
                                        for bt, bn, bk, w, st in GEMM_CONFIGS], key=["T", "N", "K"])(gemm)
    fused = triton.jit(_rotate_quantize_gemm_kernel)
    if tuned:
        fused = triton.autotune(configs=[triton.Config({"BT": bt, "BN": bn}, num_warps=w, num_stages=st)
                                         for bt, bn, w, st in FUSED_CONFIGS], key=["T", "N", "K"])(fused)
    rotate = triton.jit(_rotate_quantize_kernel)
    if tuned:
        rotate = triton.autotune(configs=[triton.Config({"BT": bt}, num_warps=w) for bt, w in ROTATE_CONFIGS],
                                 key=["T", "n"])(rotate)
    return rotate, gemm, fused


# (rows, warps) per program of rotate_quantize on a GPU: its 64×64 fp32 block product per
# program is latency-bound at 50 rows (~7 us per layer on an H200 with 64-row tiles, the
# only ones tried then), so fewer rows per program (more programs) are among the choices
ROTATE_CONFIGS = [(16, 2), (16, 4), (32, 4), (64, 4)]


# (rows, columns, warps, stages) per tile of the one-kernel layer; its depth is one 64-block
FUSED_CONFIGS = [(16, 64, 4, 2), (32, 64, 4, 2), (64, 64, 4, 2), (16, 128, 4, 2), (32, 128, 4, 2),
                 (64, 128, 8, 2), (128, 64, 8, 2)]

# The one-kernel layer where its rows' rotation is short (K ≤ FUSE_MAX_K: a program walks
# K/64 fp32 block products in turn) and the output small (T·N ≤ FUSE_MAX_OUTPUTS: every
# column tile redoes them). An H200 measured it faster than the two kernels at 50×128×N
# (N 128–1024: 6.7–7.6 vs 10.0–10.3 us per layer, graphed) and 144×192×384 (9.4 vs 12.6),
# slower at 144×192×1536 (14.5 vs 12.7) and from K = 512 on (20.7 vs 11.6 at 50×512×128;
# bench/results/quant_cuda_nvidia_h200_run2.json, "kernels"). FUSE_MAX_K = 0 turns it off.
FUSE_MAX_K = 192
FUSE_MAX_OUTPUTS = 65536


def fuse_pays(T: int, K: int, N: int) -> bool:
    """Whether a [T, K] × [K, N] layer runs as one kernel (rotate_quantize_gemm)."""
    return K <= FUSE_MAX_K and T * N <= FUSE_MAX_OUTPUTS


def _codes_of(v):
    """clamp(round(v), -8, 7) as int8, ties to even (torch.round)."""
    r = tl.floor(v + 0.5)
    r = tl.where(((r - v) == 0.5) & ((r - 2.0 * tl.floor(r * 0.5)) != 0.0), r - 1.0, r)
    return tl.minimum(tl.maximum(r, -8.0), 7.0).to(tl.int8)


def _program_tile(T, N, BT: tl.constexpr, BN: tl.constexpr):
    """This program's output rows and columns (program ids 0 and 1) and their bounds masks."""
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    return rows, cols, rows < T, cols < N


def _weight_tile(w_ptr, cols, cmask, k0, words, BN: tl.constexpr, BK: tl.constexpr):
    """int8 weight codes [BN, BK] of columns k0..k0+BK, unpacked from 8 nibbles per word."""
    ws = k0 // 8 + tl.arange(0, BK // 8)
    wp = tl.load(w_ptr + cols[:, None] * words + ws[None, :], mask=cmask[:, None] & (ws[None, :] < words), other=0)
    nib = (wp[:, :, None] >> (4 * tl.arange(0, 8))[None, None, :]) & 0xF  # [BN, BK/8, 8]: column 8w + j
    return (tl.reshape(nib, (BN, BK)) - 8).to(tl.int8)


def _store_rescaled(acc, y_ptr, ws_ptr, bias_ptr, rows, cols, rmask, cmask, N, act_scale, HAS_BIAS: tl.constexpr):
    """y = acc · act_scale · w_scale[col] (+ bias[col]), in y's dtype."""
    y = acc.to(tl.float32) * act_scale * tl.load(ws_ptr + cols, mask=cmask, other=0.0)[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=cmask, other=0.0)[None, :]
    tl.store(y_ptr + rows[:, None] * N + cols[None, :], y.to(y_ptr.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


_HELPERS = {"_codes": _codes_of, "_tile": _program_tile, "_weights": _weight_tile, "_store": _store_rescaled}


def _rotate_quantize_kernel(x_ptr, perm_ptr, rot_ptr, out_ptr, T, n, stride_x, inv_scale,
                           PREC: tl.constexpr, BT: tl.constexpr, B: tl.constexpr):
    pid_t = tl.program_id(0)
    blk = tl.program_id(1)
    rows = pid_t * BT + tl.arange(0, BT)
    cols = blk * B + tl.arange(0, B)
    src = tl.load(perm_ptr + cols)
    rmask = rows < T
    x = tl.load(x_ptr + rows[:, None] * stride_x + src[None, :], mask=rmask[:, None], other=0.0)
    bi = tl.arange(0, B)
    rot = tl.load(rot_ptr + blk * B * B + bi[:, None] * B + bi[None, :])
    z = tl.dot(x.to(tl.float32), rot, input_precision=PREC)
    tl.store(out_ptr + rows[:, None] * n + cols[None, :], _codes(z * inv_scale), mask=rmask[:, None])


def _int4_gemm_kernel(a_ptr, w_ptr, ws_ptr, bias_ptr, y_ptr, T, N, K, words, act_scale,
                     HAS_BIAS: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rows, cols, rmask, cmask = _tile(T, N, BT, BN)
    acc = tl.zeros((BT, BN), dtype=tl.int32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        a = tl.load(a_ptr + rows[:, None] * K + ks[None, :], mask=rmask[:, None] & (ks[None, :] < K),
                    other=0)
        acc += tl.dot(a, tl.trans(_weights(w_ptr, cols, cmask, k0, words, BN, BK)))
    _store(acc, y_ptr, ws_ptr, bias_ptr, rows, cols, rmask, cmask, N, act_scale, HAS_BIAS)


def _int8_gemm_kernel(a_ptr, w_ptr, ws_ptr, bias_ptr, y_ptr, T, N, K, act_scale, HAS_BIAS: tl.constexpr,
                      EVEN_K: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rows, cols, rmask, cmask = _tile(T, N, BT, BN)
    # loads on in-bounds rows and columns (a tail tile rereads real ones; its stores are
    # masked), so only a ragged K needs masks
    ra, cb = rows % T, cols % N
    acc = tl.zeros((BT, BN), dtype=tl.int32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        a_at, w_at = a_ptr + ra[:, None] * K + ks[None, :], w_ptr + cb[:, None] * K + ks[None, :]
        if EVEN_K:
            a, w = tl.load(a_at), tl.load(w_at)
        else:
            a, w = tl.load(a_at, mask=ks[None, :] < K, other=0), tl.load(w_at, mask=ks[None, :] < K, other=0)
        acc += tl.dot(a, tl.trans(w))
    _store(acc, y_ptr, ws_ptr, bias_ptr, rows, cols, rmask, cmask, N, act_scale, HAS_BIAS)


def _rotate_quantize_gemm_kernel(x_ptr, perm_ptr, rot_ptr, w_ptr, ws_ptr, bias_ptr, y_ptr, T, N, K, words,
                                stride_x, inv_scale, act_scale, HAS_BIAS: tl.constexpr, PREC: tl.constexpr,
                                BT: tl.constexpr, BN: tl.constexpr, B: tl.constexpr):
    rows, cols, rmask, cmask = _tile(T, N, BT, BN)
    bi = tl.arange(0, B)
    acc = tl.zeros((BT, BN), dtype=tl.int32)
    for blk in range(0, K // B):
        # this block's codes, as _rotate_quantize_kernel writes them, times the same 64 channels' weights
        src = tl.load(perm_ptr + blk * B + bi)
        x = tl.load(x_ptr + rows[:, None] * stride_x + src[None, :], mask=rmask[:, None], other=0.0)
        rot = tl.load(rot_ptr + blk * B * B + bi[:, None] * B + bi[None, :])
        a = _codes(tl.dot(x.to(tl.float32), rot, input_precision=PREC) * inv_scale)
        acc += tl.dot(a, tl.trans(_weights(w_ptr, cols, cmask, blk * B, words, BN, B)))
    _store(acc, y_ptr, ws_ptr, bias_ptr, rows, cols, rmask, cmask, N, act_scale, HAS_BIAS)


def _rows_tile(T: int) -> int:
    return 16 if T <= 16 else 32 if T <= 32 else 64


def rotate_quantize(x: torch.Tensor, perm: torch.Tensor, blocks: torch.Tensor, scale: float,
                    precision: str | None = None) -> torch.Tensor:
    """int8 codes clamp(round((x P blockdiag(blocks)) / scale), -8, 7) for x [T, n] with
    n = m·64 (no tail block), perm [n] int32, blocks [m, 64, 64] float32; `precision` of
    the block product (default ROTATE_PRECISION)."""
    T, n = x.shape
    m = blocks.shape[0]
    if m * BLOCK != n or blocks.shape[1:] != (BLOCK, BLOCK):
        raise ValueError(f"rotate_quantize needs {n} channels in whole {BLOCK}-blocks")
    tuned = _tuned()
    kernel = _kernels(tuned)[0]
    out = torch.empty(T, n, dtype=torch.int8, device=x.device)
    x = x if x.stride(1) == 1 else x.contiguous()
    args = (x, perm, blocks, out, T, n, x.stride(0), 1.0 / scale)
    prec = _precision(precision)
    if tuned:
        kernel[lambda meta: (triton.cdiv(T, meta["BT"]), m)](*args, PREC=prec, B=BLOCK)
    else:
        BT = _rows_tile(T)
        kernel[(triton.cdiv(T, BT), m)](*args, PREC=prec, BT=BT, B=BLOCK)
    return out


def int4_gemm(codes: torch.Tensor, packed: torch.Tensor, weight_scale: torch.Tensor, act_scale: float,
              bias: torch.Tensor | None = None, tile: tuple[int, int, int] | None = None,
              out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(codes · unpack(packed)ᵀ) · act_scale · weight_scale (+ bias), [T, N] in `out_dtype`
    (rounded once, from fp32), for int8 codes [T, K] and the pack's int32 words
    [N, ceil(K / 8)]. `tile` (rows, columns, depth) fixes the GEMM's tile instead of the
    autotuner's or the default (tests)."""
    T, K = codes.shape
    N, words = packed.shape
    if words * 8 < K:
        raise ValueError(f"{words} words per row cannot hold {K} int4 codes")
    y = torch.empty(T, N, dtype=out_dtype, device=codes.device)
    _launch_gemm(lambda tuned: _kernels(tuned)[1], tile, codes, packed, weight_scale, act_scale, bias, y, (words,))
    return y


def _launch_gemm(kernel_for, tile, codes: torch.Tensor, weights: torch.Tensor, weight_scale: torch.Tensor,
                 act_scale: float, bias: torch.Tensor | None, y: torch.Tensor, extra: tuple = ()) -> None:
    """Launch a GEMM kernel (`kernel_for(tuned)`) writing y [T, N]: the autotuner's tile on a
    GPU, else `tile` or the default; `extra` the kernel's arguments after K."""
    (T, K), N = codes.shape, y.shape[1]
    tuned = _tuned() and tile is None
    kernel = kernel_for(tuned)
    args = (codes.contiguous(), weights.contiguous(), weight_scale, bias if bias is not None else weight_scale, y,
            T, N, K, *extra, float(act_scale))
    if tuned:
        kernel[lambda meta: (triton.cdiv(T, meta["BT"]), triton.cdiv(N, meta["BN"]))](*args, HAS_BIAS=bias is not None)
    else:
        BT, BN, BK = tile or (_rows_tile(T), 64, 64)
        kernel[(triton.cdiv(T, BT), triton.cdiv(N, BN))](*args, HAS_BIAS=bias is not None, BT=BT, BN=BN, BK=BK)


def int8_gemm(codes: torch.Tensor, weights: torch.Tensor, weight_scale: torch.Tensor, act_scale: float,
              bias: torch.Tensor | None = None, tile: tuple[int, int, int] | None = None,
              out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """int4_gemm on int8 weight codes [N, K] (one byte each, K contiguous) instead of the
    pack's words: the same exact sums and epilogue. `tile` (rows, columns, depth) fixes
    the tile (tests)."""
    T, K = codes.shape
    N = weights.shape[0]
    if weights.shape[1] != K or weights.dtype != torch.int8:
        raise ValueError(f"int8_gemm needs int8 weights [N, {K}], got {weights.dtype} {list(weights.shape)}")
    y = torch.empty(T, N, dtype=out_dtype, device=codes.device)
    if T and N:  # its loads wrap rows and columns modulo T and N
        _launch_gemm(_int8_kernel, tile, codes, weights, weight_scale, act_scale, bias, y)
    return y


def rotate_quantize_gemm(x: torch.Tensor, perm: torch.Tensor, blocks: torch.Tensor, scale: float,
                         packed: torch.Tensor, weight_scale: torch.Tensor, act_scale: float,
                         bias: torch.Tensor | None = None, tile: tuple[int, int] | None = None,
                         out_dtype: torch.dtype = torch.float32, precision: str | None = None) -> torch.Tensor:
    """int4_gemm(rotate_quantize(x, perm, blocks, scale, precision), packed, ...) in one
    kernel: the same codes and the same exact sums (x [T, K] with K = m·64, no tail
    block). `tile` (rows, columns) fixes the tile (tests)."""
    T, K = x.shape
    N, words = packed.shape
    m = blocks.shape[0]
    if m * BLOCK != K or blocks.shape[1:] != (BLOCK, BLOCK):
        raise ValueError(f"rotate_quantize_gemm needs {K} channels in whole {BLOCK}-blocks")
    if words * 8 < K:
        raise ValueError(f"{words} words per row cannot hold {K} int4 codes")
    x = x if x.stride(1) == 1 else x.contiguous()
    y = torch.empty(T, N, dtype=out_dtype, device=x.device)
    args = (x, perm, blocks, packed.contiguous(), weight_scale, bias if bias is not None else weight_scale, y,
            T, N, K, words, x.stride(0), 1.0 / scale, float(act_scale))
    tuned = _tuned() and tile is None
    kernel = _kernels(tuned)[2]
    flags = {"HAS_BIAS": bias is not None, "PREC": _precision(precision), "B": BLOCK}
    if tuned:
        kernel[lambda meta: (triton.cdiv(T, meta["BT"]), triton.cdiv(N, meta["BN"]))](*args, **flags)
    else:
        BT, BN = tile or (_rows_tile(T), 64)
        kernel[(triton.cdiv(T, BT), triton.cdiv(N, BN))](*args, BT=BT, BN=BN, **flags)
    return y
