"""Calibration capture: per-layer input Hessians and bounded activation samples.

Forward pre-hooks on the target nn.Linear modules record, for each call:
- H += xᵀx (float64, or float32 for big layers when asked; only for layers whose solver
  needs a Hessian),
- per-channel max |x| (for SmoothQuant),
- up to `tokens_per_call` random tokens, bucketed by the denoising step read from
  the step context (key None outside the denoising loop); each (layer, step) bucket
  keeps at most `tokens_per_bucket` tokens (random subsample), so memory stays
  bounded however many batches are fed.
Every layer draws its random subsamples from its own generator (seeded by the seed and
the layer's name), so a layer's statistics depend only on its own inputs, not on the
order layers are called in: calibrating block by block gives the same result as one
pass over the whole model.
Everything is captured from the floating-point model before any layer is replaced.
"""
from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from .context import current_step


@dataclass
class LayerStats:
    in_features: int
    want_hessian: bool
    hessian: torch.Tensor | None = None
    tokens: int = 0
    calls: int = 0
    absmax: torch.Tensor | None = None
    samples: dict[int | None, torch.Tensor] = field(default_factory=dict)
    steps_total: int | None = None
    gen: torch.Generator | None = None
    hessian_dtype: torch.dtype = torch.float64
    inputs: list[tuple] = field(default_factory=list)  # per call: (address, shape, sum) of the input

    def fingerprint(self) -> tuple:
        """What this layer read, call by call: layers with equal fingerprints read the
        very same tensors (same memory, shape and contents at each call)."""
        return tuple(self.inputs)

    def normalized_hessian(self) -> torch.Tensor:
        if self.hessian is None or self.tokens == 0:
            raise RuntimeError("no Hessian captured (layer never called during calibration?)")
        return self.hessian / self.tokens

    def take_normalized_hessian(self) -> torch.Tensor:
        """H / tokens, computed in place and handed over (the stats no longer hold it)."""
        h = self.normalized_hessian() if self.hessian is None else self.hessian.div_(self.tokens)
        self.hessian = None
        return h


class Calibrator:
    def __init__(self, modules: dict[str, tuple[nn.Linear, bool]], tokens_per_call: int = 1024,
                 tokens_per_bucket: int = 8192, seed: int = 0,
                 hessian_dtype: dict[str, torch.dtype] | None = None) -> None:
        self.modules = modules
        self.tokens_per_call = tokens_per_call
        self.tokens_per_bucket = tokens_per_bucket
        dt = hessian_dtype or {}
        self.stats = {name: LayerStats(m.in_features, hess,
                                       gen=torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode())),
                                       hessian_dtype=dt.get(name, torch.float64))
                      for name, (m, hess) in modules.items()}

    def _record(self, name: str, x: torch.Tensor) -> None:
        st = self.stats[name]
        address, shape = x.data_ptr(), tuple(x.shape)
        x = x.detach().reshape(-1, st.in_features).float().cpu()
        st.inputs.append((address, shape, float(x.sum(dtype=torch.float64))))
        st.calls += 1
        st.tokens += x.shape[0]
        if st.want_hessian:
            xd = x.to(st.hessian_dtype)
            h = xd.T @ xd
            st.hessian = h if st.hessian is None else st.hessian.add_(h)
        amax = x.abs().amax(dim=0)
        st.absmax = amax if st.absmax is None else torch.maximum(st.absmax, amax)
        step = current_step()
        key = None if step is None else step[0]
        if step is not None:
            st.steps_total = step[1]
        if x.shape[0] > self.tokens_per_call:
            x = x[torch.randperm(x.shape[0], generator=st.gen)[: self.tokens_per_call]]
        bucket = st.samples.get(key)
        bucket = x if bucket is None else torch.cat((bucket, x))
        if bucket.shape[0] > self.tokens_per_bucket:
            keep = torch.randperm(bucket.shape[0], generator=st.gen)[: self.tokens_per_bucket]
            bucket = bucket[keep]
        st.samples[key] = bucket

    @contextlib.contextmanager
    def attach(self) -> Iterator["Calibrator"]:
        handles = [
            m.register_forward_pre_hook(lambda mod, args, _n=name: self._record(_n, args[0]))
            for name, (m, _) in self.modules.items()
        ]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def summary(self) -> dict:
        return {
            "layers": len(self.stats),
            "tokens_per_call": self.tokens_per_call,
            "tokens_per_bucket": self.tokens_per_bucket,
            "calls": {n: s.calls for n, s in self.stats.items()},
            "steps_total": max((s.steps_total or 0) for s in self.stats.values()) if self.stats else 0,
        }


def channel_quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Per-column q-quantile of x [N, C] (linear interpolation), without torch.quantile's
    input-size limit."""
    n = x.shape[0]
    if n == 0:
        raise ValueError("no samples")
    s, _ = torch.sort(x, dim=0)
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return s[lo] * (1 - frac) + s[hi] * frac
