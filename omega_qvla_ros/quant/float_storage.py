"""Floating-point parts kept at their stored precision (fp16 / bf16) in memory, computed
in float32: a W4A4 pack's unquantized parts (vision tower, embeddings, projections) are
most of its bytes, and holding them in float32 would double them. Each large Linear,
Conv2d or Embedding keeps its half-precision weights; its forward upcasts them for the
call (one module's worth at a time; embeddings upcast only the rows looked up). On the
CPU the upcast goes into a buffer each thread reuses (`upcast`): a fresh allocation that
large is mapped from the kernel and page-faulted in on every call. The forwards are
replaced, not hooked, so concurrent inferences never race on a swap. A model
family's own module opts in with `HALF_STORAGE = True` when its forward already computes
in its input's dtype, upcasting only what it uses (e.g. one embodiment's slice)."""
from __future__ import annotations

import threading
import types

import torch
import torch.nn.functional as F
from torch import nn

MIN_PARAMS = 1 << 20  # smaller modules stay float32 (their bytes do not matter)

_scratch = threading.local()  # per thread: {dtype: flat buffer}, grown to the largest upcast


def upcast(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`w` in `dtype` for one call. On the CPU without autograd it is written into this
    thread's reused buffer, valid until the thread's next upcast: glibc serves allocations
    over 32 MiB from fresh mappings, page-faulted in and zeroed on every call (measured for
    a 2048×8192 fp16 weight: 20 ms to allocate and convert, 2.4 ms to convert into a reused
    buffer, beside a 300-token float32 matmul's 57-86 ms). The buffer stays allocated: the
    largest upcast weight in `dtype`, which each call allocated anyway."""
    if w.dtype == dtype or w.device.type != "cpu" or torch.is_grad_enabled():
        return w.to(dtype)
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    buf = bufs.get(dtype)
    if buf is None or buf.numel() < w.numel():
        with torch.inference_mode(False):  # a normal tensor: writable inside and outside inference mode
            buf = bufs[dtype] = torch.empty(w.numel(), dtype=dtype)
    return buf[:w.numel()].view(w.shape).copy_(w)


def _linear(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    b = None if self.bias is None else self.bias.to(x.dtype)
    return F.linear(x, upcast(self.weight, x.dtype), b)


def _conv(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    b = None if self.bias is None else self.bias.to(x.dtype)
    return self._conv_forward(x, upcast(self.weight, x.dtype), b)


def _embedding(self: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    return F.embedding(ids, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                       self.scale_grad_by_freq, self.sparse).to(self.compute_dtype)


def eligible(model: nn.Module, min_params: int | None = None) -> dict[str, nn.Module]:
    """The modules whose weights stay at half precision: plain Linear / Conv2d / Embedding
    (not quantized layers) and modules marked HALF_STORAGE, with at least `min_params`
    (default MIN_PARAMS) parameters."""
    min_params = MIN_PARAMS if min_params is None else min_params
    out = {}
    for name, m in model.named_modules():
        if type(m) in (nn.Linear, nn.Conv2d, nn.Embedding) and m.weight.numel() >= min_params:
            out[name] = m
        elif getattr(m, "HALF_STORAGE", False) and sum(p.numel() for p in m.parameters()) >= min_params:
            out[name] = m
    return out


def keep_half(model: nn.Module, dtype: torch.dtype = torch.float16, compute: torch.dtype = torch.float32,
              modules: dict[str, nn.Module] | None = None) -> list[str]:
    """Hold the eligible modules' weights in `dtype` and compute in `compute`; works on a
    `meta` model before loading (the loader then assigns half-precision tensors as they
    are stored) or on a loaded one. Returns the module names."""
    modules = eligible(model) if modules is None else modules
    for m in modules.values():
        m.to(dtype)
        if isinstance(m, nn.Embedding):
            m.compute_dtype = compute
            m.forward = types.MethodType(_embedding, m)
        elif getattr(m, "HALF_STORAGE", False):
            pass  # its own forward upcasts what it uses
        elif isinstance(m, nn.Conv2d):
            m.forward = types.MethodType(_conv, m)
        else:
            m.forward = types.MethodType(_linear, m)
    return list(modules)
