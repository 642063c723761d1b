"""Integer GEMM backends for int4 codes: y = (q_x · q_wᵀ) as exact integers, in float.

- "fbgemm": x86 CPU. fbgemm's int8 kernel with int32 accumulation
  (`torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32`). Activation
  codes in [-8, 7] are passed as floats with scale 1 and zero point 8 (uint8 0..15,
  exact); weights are per-output-channel qint8 holding the int4 codes, so the op
  returns Σ q_x q_w · s_w. No VNNI needed and no int16 saturation: |u·w| ≤ 15·8.
- "int_mm": CUDA. `torch._int_mm` (int8 × int8 → int32); rows padded to > 16 and
  K, N to multiples of 8 as cuBLAS requires. Exact; slow on CPUs without VNNI.
- "exact": any device. float32 matmul of the codes: every partial sum is an integer
  below 2^24 while K ≤ 2^18, so the result is exact whatever the summation order.
"""
from __future__ import annotations

import warnings

import torch

BACKENDS = ("auto", "fbgemm", "int_mm", "exact")


def fbgemm_available() -> bool:
    engines = torch.backends.quantized.supported_engines
    return hasattr(torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32") and (
        "fbgemm" in engines or "x86" in engines)


def pick_backend(device: torch.device, requested: str = "auto") -> str:
    if requested not in BACKENDS:
        raise ValueError(f"unknown integer backend {requested!r}; choose from {BACKENDS}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
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


def gemm_fbgemm(x_codes: torch.Tensor, packed) -> torch.Tensor:
    """Σ_k q_x[m,k] q_w[n,k] · s_w[n] for float codes x [M, K] (values in [-8, 7])."""
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
        x_codes.float().contiguous(), 1.0, 8, packed)


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
