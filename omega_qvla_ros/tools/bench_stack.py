"""`omega-qvla bench stack`: a stack of decoder layers at the published Pi0.5 widths,
FP32 vs W4A4 side by side in one run — the part of a chunk the quantized linears live in.

Trunk: Gemma layers of width 2048 (MLP 16384, 8 heads × 256, 1 KV head) over a prefix
of `tokens` (~800: three 224² cameras + the prompt), run once per chunk. Expert: Gemma
layers of width 1024 (MLP 4096) over the 50 action tokens, run once per denoising step
(10 per chunk; attention over their own tokens here, the prefix keys/values are left
out). Random weights; calibration on the stack's own random inputs. Ratio = FP32 time /
W4A4 time (> 1: W4A4 faster), per part and for a chunk's worth (trunk + 10 × expert).
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import torch
from torch import nn

from omega_qvla_ros.models.layers import DecoderLayer
from omega_qvla_ros.quant import cpu_kernel, int_gemm
from omega_qvla_ros.quant.qlinear import QuantLinear
from omega_qvla_ros.quant.quantize import quantize
from omega_qvla_ros.quant.recipes import get_recipe

LINEARS = r"layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"


class Stack(nn.Module):
    def __init__(self, width: int, mlp: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([DecoderLayer(width, mlp, 8, 1, 256, 10000.0, act="gelu_tanh",
                                                  qk_norm=False, gemma_norm=True) for _ in range(layers)])
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=m.in_features ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[1], device=x.device)[None].expand(x.shape[0], -1)
        for layer in self.layers:
            x, _ = layer(x, pos)
        return x


def times_in_turns(models: dict[str, Callable[[torch.Tensor], object]], x: torch.Tensor,
                   repeats: int) -> dict[str, float]:
    """Seconds per call of each model (any callable of x), the fastest of `repeats` rounds
    after one warm-up call each; the models take turns within a round (this shared machine drifts by 10% within minutes: turns keep the
    ratios side by side)."""
    ts: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m(x)
        for _ in range(repeats):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(x)
                ts[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in ts.items()}


def _part(width: int, mlp: int, layers: int, tokens: int, recipe: str, side: str, repeats: int, seed: int) -> dict:
    torch.manual_seed(seed)
    fp = Stack(width, mlp, layers).eval()
    g = torch.Generator().manual_seed(seed + 1)
    cal = [torch.randn(1, tokens, width, generator=g) for _ in range(2)]
    x = torch.randn(1, tokens, width, generator=g)
    r = get_recipe(recipe)
    r = r.with_scopes(backbone=[LINEARS]) if side == "backbone" else r.with_scopes(action_head=[LINEARS])
    q = quantize(copy.deepcopy(fp), r, cal)
    for m in q.modules():
        if isinstance(m, QuantLinear):
            m.prepare()
    integer = sum(1 for m in q.modules() if isinstance(m, QuantLinear) and m.uses_integer_path())
    # the same quantized stack holding int4 weights (the pack's size) in each kernel that can,
    # and on torch._int_mm (int8 weights) where the CPU has VNNI and `auto` takes our kernel
    variants = {"fp32": fp, "w4a4": q}
    kinds = _int4_kinds()
    for kind in kinds:
        variants[kind] = variant(q, kind)
    if int_gemm.cpu_has_vnni() and _q_backend(q) != "int_mm":
        kinds.append("int_mm")
        variants["int_mm"] = variant(q, "hold", "int_mm")
    for kind, tile in other_tiles(_q_backend(q)).items():  # our kernel's other tiles
        kinds.append(kind)
        variants[kind] = variant(q, "hold", tile=tile)
    t = times_in_turns(variants, x, repeats)
    t_fp, t_q = t["fp32"], t["w4a4"]
    with torch.inference_mode():
        y, y_fp = q(x), fp(x)
        err = float(((y - y_fp) ** 2).mean() / (y_fp ** 2).mean())
        exact = ({"int4_avx2_equals_hold": bool(torch.equal(variants["int4_avx2"](x), y))}
                 if "int4_avx2" in variants else {})  # exact kernels: the same outputs as int8 held
    out = {"width": width, "mlp": mlp, "layers": layers, "tokens": tokens, "fp32_s": t_fp, "w4a4_s": t_q,
           "speed_vs_fp32": t_fp / t_q, "integer_layers": integer, "quantized_layers": 7 * layers,
           "output_rel_mse": err, **exact}
    for kind in kinds:
        out |= {f"w4a4_{kind}_s": t[kind], f"{kind}_speed_vs_fp32": t_fp / t[kind]}
    return out


INT4_KINDS = ("int4_avx2", "int4_bf16")  # int4 kernel_weights: our AVX2 kernel's, torch's int4 kernel
# + torch._int_mm on int8 weights (VNNI CPUs where `auto` is our kernel), our kernel's other
# tiles on int8 weights (other_tiles)
KINDS = INT4_KINDS + ("int_mm", "avx2_tile", "avxvnni_tile")


def variant(q: nn.Module, kernel_weights: str, backend: str | None = None, tile: int | None = None) -> nn.Module:
    """A copy of `q` whose integer layers hold `kernel_weights` (on `backend`; on our
    kernel's `tile`, cpu_kernel.TILE, where given)."""
    v = copy.deepcopy(q)
    before = cpu_kernel.TILE
    cpu_kernel.TILE = tile if tile is not None else before  # read as the kernel weights are built, below
    try:
        for m in v.modules():
            if isinstance(m, QuantLinear):
                if backend is not None:
                    m.backend = backend
                m.set_kernel_weights(kernel_weights)
    finally:
        cpu_kernel.TILE = before
    return v


def other_tiles(backend: str) -> dict[str, int]:
    """Our kernel's tiles other than the one it takes here, by variant name, where the
    layers' backend is our kernel: its AVX2 tile, and AVX-VNNI's beside AVX-512 VNNI's."""
    tiles = cpu_kernel.vnni_tiles() if backend == "avx2" else []
    return {name: t for name, t in (("avx2_tile", 0), ("avxvnni_tile", 2)) if tiles and t != tiles[0]
            and (t == 0 or t in tiles)}


def _q_backend(q: nn.Module) -> str:
    """The integer backend `auto` gives the stack's layers on the CPU."""
    return next(m._backend(torch.device("cpu")) for m in q.modules() if isinstance(m, QuantLinear))


def _int4_kinds() -> list[str]:
    """The INT4_KINDS this machine runs."""
    runs = {"int4_avx2": cpu_kernel.available(), "int4_bf16": int_gemm.int4_bf16_available()}
    return [k for k in INT4_KINDS if runs[k]]


def run(recipe: str = "omega_qvla", layers: int = 2, tokens: int = 800, steps: int = 10, repeats: int = 3,
        seed: int = 0) -> dict:
    trunk = _part(2048, 16384, layers, tokens, recipe, "backbone", repeats, seed)
    expert = _part(1024, 4096, layers, 50, recipe, "action_head", repeats, seed)
    fp = trunk["fp32_s"] + steps * expert["fp32_s"]
    q = trunk["w4a4_s"] + steps * expert["w4a4_s"]
    chunk = {"fp32_s": fp, "w4a4_s": q, "speed_vs_fp32": fp / q}
    for kind in _kinds(trunk):
        q4 = trunk[f"w4a4_{kind}_s"] + steps * expert[f"w4a4_{kind}_s"]
        chunk |= {f"w4a4_{kind}_s": q4, f"{kind}_speed_vs_fp32": fp / q4}
    from omega_qvla_ros.tools.machine import describe

    return {"benchmark": "stack", "recipe": recipe, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": describe(), "trunk": trunk, "expert": expert, "steps": steps, "chunk_equivalent": chunk}


def _kinds(part: dict) -> list[str]:
    """The KINDS a part of a result holds."""
    return [k for k in KINDS if f"{k}_speed_vs_fp32" in part]


def _label(kind: str) -> str:
    return {"int_mm": "torch._int_mm, int8 weights held",
            "avx2_tile": "our kernel's AVX2 tile, int8 weights held",
            "avxvnni_tile": "our kernel's AVX-VNNI tile, int8 weights held"}.get(kind, f"int4 weights held ({kind})")


def format_text(r: dict) -> str:
    lines = [f"decoder layer stack, recipe {r['recipe']}, {r['threads']} threads (FP32 s / W4A4 s = speed)"
             + (f"\n  {r['machine']}" if r.get("machine") else "")]
    for part in ("trunk", "expert"):
        p = r[part]
        lines.append(f"  {part}: {p['layers']} layers {p['width']}/{p['mlp']}, {p['tokens']} tokens: FP32 "
                     f"{p['fp32_s'] * 1e3:.0f} ms, W4A4 {p['w4a4_s'] * 1e3:.0f} ms ({p['speed_vs_fp32']:.2f}×), "
                     f"{p['integer_layers']}/{p['quantized_layers']} integer, rel-MSE {p['output_rel_mse']:.4f}"
                     + "".join(f"; {_label(k)} {p[f'w4a4_{k}_s'] * 1e3:.0f} ms "
                               f"({p[f'{k}_speed_vs_fp32']:.2f}×)" for k in _kinds(p)))
    c = r["chunk_equivalent"]
    lines.append(f"  chunk (trunk + {r['steps']} × expert): {c['speed_vs_fp32']:.2f}×"
                 + "".join(f" ({k}: {c[f'{k}_speed_vs_fp32']:.2f}×)" for k in _kinds(c)))
    return "\n".join(lines)
