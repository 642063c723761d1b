"""CPU-vs-accelerator comparisons of the quantized layers and of the node's runtime.

One implementation for `test/test_cuda.py` (which asserts on the numbers) and
`bench/cuda_check.py` (which records them on a lent GPU). W4A4 is discontinuous: a float
rounding difference of 1e-7 in a layer's input can move an activation across a rounding
boundary, so the comparisons count such code flips instead of expecting bit-equality.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from omega_qvla_ros.quant import RECIPES, quantize
from omega_qvla_ros.quant.context import denoising_step
from omega_qvla_ros.tools.quant_suites import drift_inputs, stepped_forward

STEPS = 10
# around torch._int_mm's rules (M > 16, K and N multiples of 8): one token, 16, 17, K and N
# not multiples of 8 or 64, and a published width
LAYER_SHAPES = [(1, 200, 136), (16, 200, 136), (17, 203, 131), (37, 1030, 390), (50, 2048, 2048)]


def _quantized_linear(n_in: int, n_out: int, recipe, seed: int) -> nn.Sequential:
    """One nn.Linear `[0]` quantized with `recipe` on drifting per-step inputs."""
    torch.manual_seed(seed)
    lin = nn.Sequential(nn.Linear(n_in, n_out))
    quantize(lin, recipe, [drift_inputs(48, n_in, torch.Generator().manual_seed(seed), steps=STEPS)],
             forward=stepped_forward())
    return lin


def integer_layer(n_in: int, n_out: int, mode: str, seed: int = 3) -> nn.Sequential:
    """One CPU-calibrated omega_qvla_int layer `[0]`, backbone scope (mode "dynamic",
    per-token) or action-head scope ("per_step_factorized")."""
    rec = RECIPES["omega_qvla_int"]
    rec = rec.with_scopes(backbone=[r"^0$"]) if mode == "dynamic" else rec.with_scopes(action_head=[r"^0$"])
    return _quantized_linear(n_in, n_out, rec, seed)


def default_layer(n_in: int, n_out: int, side: str, seed: int = 3) -> nn.Module:
    """One linear quantized with the default recipe (omega_qvla): its backbone side (one
    static scale folded: "static_tensor") or its action-head side (per-step factorized
    scales, output rotation)."""
    return _quantized_linear(n_in, n_out, RECIPES["omega_qvla"].with_scopes(**{side: [r"^0$"]}), seed)[0]


def run_paths(model: nn.Sequential, x: torch.Tensor, t: int) -> dict[str, torch.Tensor]:
    """Outputs of the reference and the integer path (backend picked by device) at step t."""
    q = model[0]
    out = {}
    with torch.no_grad(), denoising_step(t, STEPS):
        for path in ("reference", "integer"):
            q.path, q.backend = path, "auto"
            out[path] = q(x).float()
    q.path = "auto"
    return out


def activation_codes(model: nn.Sequential, x: torch.Tensor, t: int) -> torch.Tensor:
    """The int4 activation codes the layer multiplies at step t."""
    with torch.no_grad(), denoising_step(t, STEPS):
        return model[0].activation_codes(x)[0]


def compare_layer(shape: tuple[int, int, int], mode: str, device: str) -> dict:
    """One integer layer on the CPU and on `device`, same inputs, all steps. Relative
    differences (to the CPU reference's max): integer vs reference on the device; device vs
    CPU integer path over all rows and over the rows whose activation codes agree; and the
    activation codes that differ between the devices."""
    M, K, N = shape
    cpu = integer_layer(K, N, mode)
    dev = copy.deepcopy(cpu).to(device)
    x = drift_inputs(M, K, torch.Generator().manual_seed(5), steps=STEPS)
    r = {"shape": [M, K, N], "mode": mode, "act_mode": cpu[0].spec.act_mode,
         "integer_layer": cpu[0].uses_integer_path(),
         "integer_vs_reference_max_rel": 0.0, "integer_vs_cpu_integer_max_rel": 0.0,
         "integer_vs_cpu_integer_same_codes_max_rel": 0.0, "rows_with_same_codes_min_share": 1.0,
         "activation_codes_differing_from_cpu": 0, "activation_codes": 0}
    for t in range(STEPS):
        y_cpu, y = run_paths(cpu, x[t], t), run_paths(dev, x[t].to(device), t)
        scale = y_cpu["reference"].abs().max()
        same = activation_codes(dev, x[t].to(device), t).cpu() == activation_codes(cpu, x[t], t)
        rows = same.all(dim=1)
        diff = (y["integer"].cpu() - y_cpu["integer"]).abs()
        for key, v in (("integer_vs_reference_max_rel", (y["integer"] - y["reference"]).abs().max()),
                       ("integer_vs_cpu_integer_max_rel", diff.max()),
                       ("integer_vs_cpu_integer_same_codes_max_rel", diff[rows].max())):
            r[key] = max(r[key], float(v / scale))
        r["rows_with_same_codes_min_share"] = min(r["rows_with_same_codes_min_share"], float(rows.float().mean()))
        r["activation_codes_differing_from_cpu"] += int((~same).sum())
        r["activation_codes"] += same.numel()
    return r


def random_observation(policy) -> tuple:
    """A fixed random observation for `policy` (its cameras, joints at mid-range) and fixed
    denoising noise."""
    from omega_qvla_ros.runtime.policy import mid_range_joints
    from omega_qvla_ros.runtime.preprocess import RawObservation

    rng = np.random.default_rng(0)
    proc = policy.processor
    raw = RawObservation({c: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for c in policy.cameras},
                         proc.joint_names, mid_range_joints(proc), "transfer the cube", 0.0)
    cfg = policy.model.config
    return raw, torch.randn(1, cfg.action_horizon, cfg.action_dim, generator=torch.Generator().manual_seed(1))


def compare_policy(path: str | Path, device: str, fp_path: str | Path | None = None,
                   repeats: int = 0) -> dict:
    """The node's runtime (`Policy.from_pack` + `infer`) on the CPU and on `device`, same
    observation and noise: action difference (rad), and with `fp_path` the pack's own
    W4A4-vs-FP distance on the CPU for scale; with `repeats`, median inference ms on each."""
    from omega_qvla_ros.runtime.policy import Policy
    from omega_qvla_ros.tools.bench_quant import median_ms

    pols = {d: Policy.from_pack(path, d) for d in ("cpu", device)}
    raw, noise = random_observation(pols["cpu"])
    a = {d: pol.infer(raw, noise=noise).positions for d, pol in pols.items()}
    d = np.abs(a[device] - a["cpu"])
    r = {"recipe": pols["cpu"].recipe, "on_device": next(pols[device].model.parameters()).device.type,
         "integer_layers_on_device": pols[device].integer_layers(), "finite": bool(np.isfinite(a[device]).all()),
         "max_abs_action_diff_rad": float(d.max()), "mean_abs_action_diff_rad": float(d.mean())}
    if fp_path is not None:
        q = np.abs(a["cpu"] - Policy.from_pack(fp_path, "cpu").infer(raw, noise=noise).positions)
        r.update(w4a4_vs_fp_max_rad=float(q.max()), w4a4_vs_fp_mean_rad=float(q.mean()))
    if repeats:
        for dev, pol in pols.items():
            r[f"infer_ms_{torch.device(dev).type}"] = median_ms(lambda: pol.infer(raw, noise=noise), repeats)
    return r


def chunk_times(path: str | Path, device: str = "cuda", repeats: int = 20, dtype: str = "float32") -> dict:
    """The model's time per chunk on `device` (observation already there, fixed noise),
    eager vs replayed from CUDA graphs (runtime/cuda_graphs.py), and how far the replayed
    chunk is from the eager one (normalised action units). `dtype`: "float32" as loaded;
    "fp16" the whole model and its inputs in half precision (quantized layers
    keep their float32 state and run on half activations; each Linear casts its input to
    half where it arrives in float32); "autocast_fp16" float16 autocast around the model as
    loaded. With `repeats` 0 the timings are left out."""
    from collections import Counter
    from contextlib import nullcontext

    from omega_qvla_ros.quant.qlinear import QuantLinear
    from omega_qvla_ros.runtime.cuda_graphs import GraphedSampler
    from omega_qvla_ros.runtime.policy import Policy
    from omega_qvla_ros.runtime.precision import half_float_parts, half_observation
    from omega_qvla_ros.tools.bench_quant import median_ms

    pol = Policy.from_pack(path, device, cuda_graphs=False)
    model, dev = pol.model, torch.device(device)
    raw, noise = random_observation(pol)
    obs = pol.processor.observation(raw)[0].to(dev)
    noise = noise.to(dev)
    if dtype == "fp16":
        half_float_parts(model)  # what Policy(precision="fp16") runs
        obs, noise = half_observation(obs), noise.half()
    ctx = (torch.autocast(dev.type, torch.float16, cache_enabled=False) if dtype == "autocast_fp16"
           else nullcontext())
    sampler = GraphedSampler(model)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    backends = Counter(m._backend(dev) for m in model.modules()
                       if isinstance(m, QuantLinear) and m.uses_integer_path())
    with torch.inference_mode(), ctx:
        a_eager = model.sample_actions(obs, noise=noise).float()
        a_graph = sampler.sample(obs, noise).float()
        r = {"pack": Path(path).name, "recipe": pol.recipe, "dtype": dtype, "integer_backends": dict(backends),
             "graph_runs": dict(sampler.used), "graph_failures": dict(sampler.failures),
             "graph_vs_eager_max_abs": float((a_graph - a_eager).abs().max()),
             "finite": bool(torch.isfinite(a_graph).all())}
        if repeats:
            r["eager_ms"] = median_ms(lambda: (model.sample_actions(obs, noise=noise), sync()), repeats)
            r["graph_ms"] = median_ms(lambda: (sampler.sample(obs, noise), sync()), repeats)
            r["graph_speedup"] = r["eager_ms"] / r["graph_ms"]
    return r
