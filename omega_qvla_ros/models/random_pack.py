"""A random-init FP pack at any size, written module by module (never the whole model in
memory): the published sizes' stand-in for benchmarks when no real checkpoint is at
hand. Initialisation as the models' own (fan-in scaled normal weights, norms at their
identity, adaptive norms with an open gate), done per module on materialisation."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from omega_qvla_ros.quant.pack import PackWriter
from omega_qvla_ros.quant.recipes import RECIPES

from . import model_info
from .layers import AdaptiveRMSNorm, RMSNorm
from .processor import legacy_processor_config
from .registry import build_model


def _init_module(m: nn.Module, g: torch.Generator, adaptive_dense: bool = False) -> None:
    """Fill a freshly materialised module's own tensors (not its children's);
    `adaptive_dense`: m is an adaptive norm's dense layer (small weights, gate open)."""
    with torch.no_grad():
        for name, p in m.named_parameters(recurse=False):
            if isinstance(m, RMSNorm):
                p.fill_(0.0 if m.offset else 1.0)
            elif isinstance(m, nn.LayerNorm):
                p.fill_(1.0 if name == "weight" else 0.0)
            elif name == "bias" or name == "b":
                p.zero_()
            else:
                fan_in = p.shape[-2] if name == "W" else (p.shape[1] if p.dim() > 1 else p.shape[0])
                if isinstance(m, nn.Conv2d):
                    fan_in = p[0].numel()
                if isinstance(m, nn.Embedding):
                    fan_in = p.shape[1]
                p.normal_(0.0, fan_in ** -0.5, generator=g)
        if adaptive_dense:
            d = m.out_features // 3
            m.weight.mul_(0.2)
            m.bias[2 * d:] = 1.0


def _own_tensors(mod: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False))


def write_random_pack(family: str, size: str, out: str | Path, seed: int = 0,
                      float_dtype: torch.dtype = torch.float16, default_robot: dict | None = None) -> Path:
    """Write a random-init FP pack of `family` at preset `size` to `out`, one module at a
    time (peak memory: the largest module in float32)."""
    model = build_model(family, size, device="meta")
    g = torch.Generator().manual_seed(seed)
    dense = {f"{n}.dense" for n, m in model.named_modules() if isinstance(m, AdaptiveRMSNorm)}
    writer = PackWriter(out, float_dtype)
    for name, mod in model.named_modules():
        if not _own_tensors(mod):
            continue
        mod.to_empty(device="cpu", recurse=False)  # new tensors: read them after this
        _init_module(mod, g, adaptive_dense=name in dense)
        writer.add({f"{name}.{k}" if name else k: (v.detach().to(float_dtype) if v.is_floating_point() else v.detach())
                    for k, v in _own_tensors(mod)})
        mod.to_empty(device="meta", recurse=False)
    proc = legacy_processor_config(model.config, {}, default_robot or {})
    return writer.finish(model_info(model, size), recipe=RECIPES["fp16"].to_dict(), processor=proc.to_dict(),
                         extra={"source": f"random init (seed {seed})", "robot": default_robot or {}})
