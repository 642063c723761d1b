"""Static memory accounting: parameters per component and bytes FP16 vs packed W4A4.

Bytes of a quantized layer are the bytes its pack entry really stores: the
QuantLinear buffers for its LayerSpec (int4 codes in int32 words, fp16 scales, int16/32
permutation, fp16 64×64 rotation blocks, fp16 per-step tables, bias), each at its
storage dtype (quant.qlinear.storage_dtype). Everything not quantized counts at FP16.
Models are built on the `meta` device, so the full published sizes cost no memory.

Scopes:
- quantized_linears: the recipe's layers only (the paper's accounting);
- whole_model: every parameter, the recipe's layers at W4A4 and the rest FP16 (the
  paper's BF16 exclusions: vision tower, embeddings, norms, AdaLN, projections);
- whole_model_vision_w4: the same with the vision tower's linears quantized too (with
  the backbone side's settings).
"""
from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn

from omega_qvla_ros.quant.qlinear import LayerSpec, QuantLinear, storage_dtype
from omega_qvla_ros.quant.quantize import layer_spec, select_targets
from omega_qvla_ros.quant.recipes import Recipe, SideRecipe

from .calibrate import scoped_recipe
from .registry import Scopes, build_model, get_family


def component_of(name: str, scopes: Scopes) -> str:
    if re.search(scopes.vision, name):
        return "vision"
    if re.search(scopes.action_parts, name):
        return "action_head"
    if re.search(scopes.trunk, name):
        return "trunk"
    return "other"


def _spec(lin: nn.Linear, sr: SideRecipe, side: str, steps: int) -> LayerSpec:
    """The LayerSpec `quantize()` would produce for `lin` (steps: the sampler's count)."""
    return layer_spec(lin, sr, side, steps,
                      channel_div=sr.smooth_alpha is not None or sr.act_mode in ("per_step_factorized",
                                                                                  "static_folded"))


def stored_bytes(spec: LayerSpec) -> dict[str, int]:
    """Bytes per buffer kind that a pack stores for one QuantLinear."""
    with torch.device("meta"):
        q = QuantLinear(spec)
    out: dict[str, int] = {}
    for name, t in q.state_dict().items():
        n = t.numel() * torch.empty(0, dtype=storage_dtype(name, t)).element_size()
        kind = {"weight_packed": "int4_codes", "weight_scale": "weight_scales", "input_perm": "permutations",
                "weight_shape": "shapes", "bias": "bias"}.get(name)
        if kind is None:
            kind = "rotations" if "rot_" in name else "activation_scales"
        out[kind] = out.get(kind, 0) + n
    return out


def memory_report(family: str, size: str | None, recipe: "str | Recipe" = "omega_qvla", config=None) -> dict:
    """Static memory of a family at a size preset, or of an explicit `config`."""
    fam = get_family(family)
    model = build_model(family, size, config=config, device="meta")
    recipe = scoped_recipe(model, recipe)
    cfg = model.config
    steps = cfg.num_steps
    targets = select_targets(model, recipe)
    vision_sr = dataclasses.replace(recipe.backbone, act_mode="dynamic") if recipe.backbone else None

    params: dict[str, int] = {}
    for name, p in model.named_parameters():
        c = component_of(name, fam.scopes)
        params[c] = params.get(c, 0) + p.numel()
    total_params = sum(params.values())

    def linear_bytes(items) -> tuple[int, int, dict[str, int]]:
        n_params, w4, parts = 0, 0, {}
        for name, (lin, side, sr) in items:
            n_params += lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)
            for k, v in stored_bytes(_spec(lin, sr, side, steps)).items():
                parts[k] = parts.get(k, 0) + v
                w4 += v
        return n_params, w4, parts

    q_params, q_w4, q_parts = linear_bytes(targets.items())
    vis = {n: (m, "vision", vision_sr) for n, m in model.named_modules()
           if type(m) is nn.Linear and re.search(fam.scopes.vision, n + ".") and vision_sr is not None}
    v_params, v_w4, _ = linear_bytes(vis.items())

    def scope(p: int, w4: int) -> dict:
        fp16 = 2 * p
        return {"params": p, "fp16_bytes": fp16, "w4a4_bytes": w4,
                "reduction": (1 - w4 / fp16) if fp16 else 0.0,
                "fp16_gib": fp16 / 2**30, "w4a4_mib": w4 / 2**20}

    rest = total_params - q_params
    scopes = {
        "quantized_linears": {**scope(q_params, q_w4), "bytes_by_kind": q_parts},
        "whole_model": scope(total_params, q_w4 + 2 * rest),
        "whole_model_vision_w4": scope(total_params, q_w4 + v_w4 + 2 * (rest - v_params)),
    }
    out = {"family": family, "size": size, "recipe": recipe.name,
           "params": {"total": total_params, **params},
           "quantized_layers": len(targets), "scopes": scopes}
    if size == "full" and fam.paper:
        p = fam.paper
        out["paper"] = {**p, "our_params_vs_paper": q_params / p["quantized_params"],
                        "our_reduction_minus_paper": scopes["quantized_linears"]["reduction"] - p["reduction"]}
    return out
