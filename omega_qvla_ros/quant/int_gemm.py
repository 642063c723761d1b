"""Integer GEMM backends for int4 codes: y = (q_x · q_wᵀ) as exact integers, in float.

- "fbgemm": x86 CPU. fbgemm's int8 kernel with int32 accumulation
  (`torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32`). Activation
  codes in [-8, 7] are passed as floats with scale 1 and zero point 8 (uint8 0..15,
  exact); weights are per-output-channel qint8 holding the int4 codes, so the op
  returns Σ q_x q_w · s_w. No VNNI needed and no int16 saturation: |u·w| ≤ 15·8.
- "avx2": x86 CPUs with AVX2 (the `auto` choice wherever the kernel builds, VNNI or
  not): cpu_kernel.py, a C kernel of ours whose int4 × int4 products accumulate in
  int16 (`vpmaddubsw`), with the rotation, the activation quantization and the rescale
  in the same call; exact. With AVX-512 VNNI it takes its VNNI tile (`vpdpbusd`); on such
  a CPU (2 threads) it ran the shipped Pi0.5 / GR00T chunks 1.29× / 1.32× FP32 against
  `torch._int_mm`'s 0.94× / 0.92×, and the published-width Pi0.5 stack 4.89× (5.42× on
  its int4 codes) against int_mm's 3.00× and torch's int4 kernel's 1.17×
  (bench/results/policy_*_avx512.json, stack_pi05.json). fbgemm is the fallback where it
  cannot be built (int_mm where the CPU has VNNI).
- "int_mm": CUDA, and x86 CPUs with VNNI where our kernel cannot be built. `torch._int_mm`
  (int8 × int8 → int32, exact). On CUDA rows are padded to > 16 and K, N to multiples of
  8 as cuBLAS requires; on a CPU oneDNN takes any shape, and with VNNI it is 2–4× faster
  than fbgemm's whole op at the shipped widths (50×128×256: 6.7 µs vs ~20 µs, the int8
  conversions around it included ~14 µs); without VNNI it is slow (33 µs), so fbgemm
  stays the choice there.
- "int4_bf16" (weights only, `QuantLinear.kernel_weights`): x86/ARM CPU. torch's int4
  weight kernel (`aten._weight_int4pack_mm_for_cpu`, the one torchao's int4 weight-only
  layout calls): the int4 codes stay packed at half a byte per weight (the pack's size)
  and are unpacked inside the kernel; the activation codes go in as bf16 (exact: small
  integers), products accumulate in fp32, and the kernel rounds its output to bf16, so
  each output carries a relative error ≤ 2^-8 (not exact). Its fp32/fp16 entries are
  scalar code on AVX2 (50-100× slower), so bf16 it is.
- "triton": CUDA (or Triton's interpreter). The fused kernels of triton_kernels.py:
  rotate + quantize in one kernel, the int4 GEMM with the codes unpacked in-kernel and
  the rescale in its epilogue; for layers with one activation scale per tensor (the
  default recipe), the others take "int_mm". `auto` picks it on CUDA when Triton imports.
- "exact": any device. float32 matmul of the codes: every partial sum is an integer
  below 2^24 while K ≤ 2^18, so the result is exact whatever the summation order.
"""
from __future__ import annotations

import functools
import warnings

import torch

from . import cpu_kernel, triton_kernels

BACKENDS = ("auto", "avx2", "fbgemm", "int_mm", "triton", "exact")


@functools.lru_cache(maxsize=None)  # asked on every layer call; the engines never change
def fbgemm_available() -> bool:
    engines = torch.backends.quantized.supported_engines
    return hasattr(torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32") and (
        "fbgemm" in engines or "x86" in engines)


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_vnni() -> bool:
    """x86 int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX), which make
    `torch._int_mm` on a CPU fast."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def pick_backend(device: torch.device, requested: str = "auto") -> str:
    if requested not in BACKENDS:
        raise ValueError(f"unknown integer backend {requested!r}; choose from {BACKENDS}")
    if requested == "avx2" and device.type != "cpu":
        raise ValueError(f"integer backend 'avx2' runs on the CPU, not on {device.type}")
    if requested == "avx2" and not cpu_kernel.available():
        raise ValueError(f"integer backend 'avx2' is not available here: {cpu_kernel.unavailable_reason()}")
    if requested != "auto":
        return requested
    if device.type == "cuda":  # the fused kernels where Triton is installed
        return "triton" if triton_kernels.available(device) else "int_mm"
    if device.type == "cpu" and cpu_kernel.available():
        return "avx2"
    if device.type == "cpu" and cpu_has_vnni():
        return "int_mm"
    if device.type == "cpu" and fbgemm_available():
        return "fbgemm"
    return "exact"


def prepack_fbgemm(w_codes: torch.Tensor, w_scale: torch.Tensor):
    """Per-output-channel qint8 weight (the int4 codes) packed for fbgemm."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        qw = torch._make_per_channel_quantized_tensor(
            w_codes.to(torch.int8).cpu(), w_scale.double().cpu(),
            torch.zeros(w_codes.shape[0], dtype=torch.int64), 0)
        return torch.ops.quantized.linear_prepack(qw, None)


def gemm_fbgemm(x: torch.Tensor, packed, scale: float = 1.0) -> torch.Tensor:
    """Σ_k q_x[m,k] q_w[n,k] · s_w[n] · scale with q_x = round(x / scale) (half to even),
    for float x [M, K] already clamped to [-8·scale, 7·scale]: the kernel quantizes x
    itself (zero point 8: the uint8 codes 0..15 are exact)."""
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
        x.float().contiguous(), scale, 8, packed)


def int4_bf16_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


class Int4Weights:
    """int4 codes in the CPU int4 kernel's packed layout: rows padded to a multiple of 16
    and columns to a multiple of 32, as the kernel requires; the group table holds
    scale 1 and zero 0 (weight scales are applied after, in fp32, so that the only
    rounding is the kernel's bf16 output)."""

    def __init__(self, w_codes: torch.Tensor) -> None:
        self.n, self.k = w_codes.shape
        # zero-padded codes (weight 0), then offset to the kernel's unsigned 0..15
        codes = _pad_to(_pad_to(w_codes.to(torch.int32), 0, 16), 1, 32) + 8
        self.k_pad = codes.shape[1]
        self.group = next(g for g in (256, 128, 64, 32) if self.k_pad % g == 0)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        self.table = torch.zeros(self.k_pad // self.group, codes.shape[0], 2, dtype=torch.bfloat16)
        self.table[..., 0] = 1


def gemm_int4_bf16(x_codes: torch.Tensor, w: Int4Weights) -> torch.Tensor:
    """Σ_k q_x[m,k] q_w[n,k] for float codes x [M, K], rounded to bf16 (≤ 2^-8 relative)."""
    x = x_codes.to(torch.bfloat16)
    if w.k_pad != w.k:
        x = torch.nn.functional.pad(x, (0, w.k_pad - w.k))
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.contiguous(), w.packed, w.group, w.table)
    return (y if y.shape[1] == w.n else y[:, : w.n]).float()


def _pad_to(t: torch.Tensor, dim: int, multiple: int, minimum: int = 0) -> torch.Tensor:
    size = t.shape[dim]
    target = max(minimum, -(-size // multiple) * multiple)
    if target == size:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [0, target - size]
    return torch.nn.functional.pad(t, pad)


def gemm_int_mm(x_codes: torch.Tensor, w_codes_t: torch.Tensor) -> torch.Tensor:
    """torch._int_mm on int8 codes; w_codes_t is [K, N] int8. Returns float [M, N]."""
    M, K = x_codes.shape
    N = w_codes_t.shape[1]
    a = _pad_to(_pad_to(x_codes.to(torch.int8), 0, 8, minimum=32), 1, 8)
    b = _pad_to(_pad_to(w_codes_t, 0, 8), 1, 8)
    return torch._int_mm(a, b)[:M, :N].float()


def gemm_exact(x_codes: torch.Tensor, w_codes: torch.Tensor) -> torch.Tensor:
    K = x_codes.shape[1]
    dtype = torch.float32 if K <= 2**18 else torch.float64
    return x_codes.to(dtype) @ w_codes.to(dtype).t()
