"""`quantize(model, recipe, calibration_batches)`: replace matching nn.Linear layers of
any nn.Module by QuantLinear, in place.

Order of work: (1) rotations from the FP weights alone; (2) one calibration pass over
the batches (Hessians, activation samples per denoising step); (3) per layer:
channel divisor (SmoothQuant or per-step profile), activation scales on the rotated
inputs, output-row rotation, weight solver (GPTQ on W̃ with H̃ = Rᵀ H R, or RTN).
Hessians come from the FP model's inputs (all layers calibrated in one pass).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .calibration import Calibrator, LayerStats, channel_quantile
from .gptq import gptq_blocklocal, gptq_quantize
from .int4 import EPS, QMAX, dequantize_weight, quantize_weight_rtn
from .qlinear import LayerSpec, QuantLinear, link_input_groups
from .recipes import Recipe, SideRecipe, get_recipe
from .rotation import BlockRotation, build_input_rotation, build_output_rotation, stored_rotation

ForwardFn = Callable[[nn.Module, Any], Any]


def default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def select_targets(model: nn.Module, recipe: Recipe) -> dict[str, tuple[nn.Linear, str, SideRecipe]]:
    out = {}
    for name, mod in model.named_modules():
        if type(mod) is nn.Linear:
            hit = recipe.side_of(name)
            if hit is not None:
                out[name] = (mod, hit[0], hit[1])
    return out


def _progress(it: Iterable, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, desc=desc, total=total, leave=False)


def quantize(model: nn.Module, recipe: "str | Recipe", calibration_batches: Iterable[Any],
             forward: ForwardFn = default_forward, progress: bool = False,
             path: str = "auto", backend: str = "auto", seed: int = 0) -> nn.Module:
    """Quantize `model` in place with `recipe`; returns the model.

    `calibration_batches` are fed through `forward(model, batch)` under no_grad. A
    report per layer (weight error, path) is left in `model.quantization_report`.
    """
    recipe = get_recipe(recipe)
    if recipe.backbone is not None or recipe.action_head is not None:
        if not recipe.scoped:
            raise ValueError(f"recipe {recipe.name!r} names no modules: give it scopes with "
                             "Recipe.with_scopes(backbone=[...], action_head=[...]) or quantize through "
                             "omega_qvla_ros.models.calibrate.quantize_model (the family's scopes)")
    start_report(model, recipe)
    targets = select_targets(model, recipe)
    if not targets:
        return model
    batches = list(calibration_batches) if not isinstance(calibration_batches, list) else calibration_batches

    def run() -> None:
        for batch in _progress(batches, progress, "calibrate", len(batches)):
            forward(model, batch)
    quantize_targets(model, targets, run, progress=progress, path=path, backend=backend, seed=seed)
    return model


def start_report(model: nn.Module, recipe: Recipe) -> None:
    model.quantization_report = {"recipe": recipe.name, "recipe_dict": recipe.to_dict(), "layers": {},
                                 "calibration": {}}


def hessian_groups(targets: dict[str, tuple[nn.Linear, str, SideRecipe]],
                   budget_bytes: int | None) -> list[list[str]]:
    """`targets` in order, cut into groups whose GPTQ Hessians (in² of their dtype) fit
    `budget_bytes` together (a layer bigger than the budget is a group of its own), never
    between two layers of one parent module (siblings that may share an input stay in one
    calibration run: shared_input_groups)."""
    names = list(targets)
    if budget_bytes is None:
        return [names]
    groups: list[list[str]] = [[]]
    used = 0
    for name in names:
        mod, _side, sr = targets[name]
        need = 0 if sr.weight_solver == "rtn" else mod.in_features ** 2 * getattr(torch, sr.hessian_dtype).itemsize
        siblings = groups[-1] and _parent(groups[-1][-1]) == _parent(name)  # may share an input: never cut
        if groups[-1] and used + need > budget_bytes and not siblings:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += need
    return groups


def quantize_targets(model: nn.Module, targets: dict[str, tuple[nn.Linear, str, SideRecipe]],
                     run_calibration: Callable[[], Any], progress: bool = False, path: str = "auto",
                     backend: str = "auto", seed: int = 0, hessian_budget_bytes: int | None = None) -> None:
    """Quantize the `targets` (name -> (linear, side, side recipe), from select_targets)
    of `model` in place: rotations from their FP weights, a calibration run
    (`run_calibration()` feeds the FP model; every target must be called), then each
    layer solved and swapped for its QuantLinear. `quantize()` calls it once for the
    whole model; the sequential pipeline calls it block by block (same statistics,
    same codes: every step of it depends on a layer's own inputs only).

    `hessian_budget_bytes` bounds the GPTQ Hessians held at once: the targets are cut
    into groups (hessian_groups) and `run_calibration` runs once per group, all on the
    FP model — solved layers are swapped in only after the last group — so the result
    is the same as one run (statistics are per layer, each with its own generator);
    `run_calibration` must then be repeatable."""
    report = getattr(model, "quantization_report", None)
    if report is None:
        model.quantization_report = report = {"layers": {}, "calibration": {}}
    solved: dict[str, nn.Module] = {}
    for group in hessian_groups(targets, hessian_budget_bytes):
        part = {name: targets[name] for name in group}
        solved.update(_solve_group(model, part, run_calibration, report, progress, path, backend, seed))
    for name, q in solved.items():
        model.set_submodule(name, q)
    link_input_groups(model)


def _solve_group(model: nn.Module, targets: dict[str, tuple[nn.Linear, str, SideRecipe]],
                 run_calibration: Callable[[], Any], report: dict, progress: bool, path: str, backend: str,
                 seed: int) -> dict[str, nn.Module]:
    """Calibrate `targets` on one run of the FP model and solve them (not swapped in)."""
    cal = Calibrator({name: (mod, sr.weight_solver != "rtn") for name, (mod, _s, sr) in targets.items()},
                     seed=seed, hessian_dtype={name: getattr(torch, sr.hessian_dtype)
                                               for name, (_m, _s, sr) in targets.items()})
    was_training = model.training
    model.eval()
    with torch.no_grad(), cal.attach():
        run_calibration()
    model.train(was_training)
    summary = cal.summary()
    prev = report.get("calibration") or {}
    report["calibration"] = {**prev, **summary, "layers": prev.get("layers", 0) + summary["layers"],
                             "calls": {**prev.get("calls", {}), **summary["calls"]},
                             "steps_total": max(prev.get("steps_total", 0), summary["steps_total"])}
    for name, st in cal.stats.items():
        if st.calls == 0:
            raise RuntimeError(f"layer {name} was never called during calibration; "
                               "check the calibration batches and the forward function")
    groups = {group[0]: group for group in shared_input_groups(targets, cal.stats)}
    leader = {name: lead for lead, group in groups.items() for name in group}
    solved: dict[str, nn.Module] = {}
    shared: dict[str, tuple] = {}  # group leader -> (rotation, its statistics, stacked weights)
    with torch.no_grad():
        for name, (mod, side, sr) in _progress(targets.items(), progress, "quantize", len(targets)):
            st = cal.stats[name]
            lead = leader.get(name)
            if lead is None:
                rot, act, w = _input_rotation(mod.weight, sr, name, seed), None, None
            else:
                if lead not in shared:
                    w = torch.cat([targets[n][0].weight.detach() for n in groups[lead]])
                    shared[lead] = (_input_rotation(w, sr, lead, seed), st, w)
                rot, act, w = shared[lead] if name != groups[lead][-1] else shared.pop(lead)  # last: free them
            q, info = build_quant_linear(mod, sr, side, rot, st, path=path, backend=backend,
                                         act_stats=act, input_group=lead, input_weight=w)
            solved[name] = q
            report["layers"][name] = info
            cal.stats[name] = None  # free this layer's Hessian and samples now
            release_freed_memory()
    return solved


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _input_rotation(weight: torch.Tensor, sr: SideRecipe, name: str, seed: int) -> BlockRotation | None:
    """The input rotation from FP weights [out, in] (one layer's, or a shared-input group's
    stacked), exactly as the layer will hold it (its storage)."""
    return stored_rotation(build_input_rotation(weight, sr.rotation, seed=seed + _layer_seed(name)),
                           sr.rotation_storage)


def shared_input_groups(targets: dict[str, tuple[nn.Linear, str, SideRecipe]],
                        stats: dict[str, LayerStats]) -> list[list[str]]:
    """Layers of one parent module, quantized under one side recipe with `shared_input`,
    that read the very same tensor at every calibration call (q/k/v, gate/up; not the
    query of a cross-attention): each such group, in target order, of two or more. The
    quantizer gives a group one input rotation (from its stacked weights) and one set of
    activation scales, so at run time it is one rotation, one quantization and one GEMM
    (qlinear.QuantLinear's input groups)."""
    buckets: dict[tuple, list[str]] = {}
    for name, (_mod, side, sr) in targets.items():
        if sr.shared_input and stats[name].calls:
            key = (_parent(name), side, id(sr), stats[name].fingerprint())
            buckets.setdefault(key, []).append(name)
    return [g for g in buckets.values() if len(g) > 1]


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps freed chunks below its mmap
    threshold — up to 32 MiB, a typical activation — in its arenas, so a long run's
    resident memory would grow with every layer)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _layer_seed(name: str) -> int:
    """A per-layer offset for seeded rotations (random_hadamard), independent of the
    order layers are visited in."""
    import zlib

    return zlib.crc32(name.encode()) % 100_000


def _act_tables(sr: SideRecipe, st: LayerStats, rot: BlockRotation | None,
                ) -> tuple[dict[int | None, torch.Tensor], int]:
    """Rotated activation samples per step bucket, and the number of steps."""
    rotated = {k: (rot.apply(v.double()) if rot is not None else v.double()) for k, v in st.samples.items()}
    steps = st.steps_total or 0
    return rotated, steps


PER_STEP_MODES = ("per_step", "per_step_mean", "per_step_factorized")


def layer_spec(linear: nn.Linear, sr: SideRecipe, side: str, steps: int, channel_div: bool,
               input_group: str | None = None) -> LayerSpec:
    """The LayerSpec of `linear` quantized under side recipe `sr` (the recipe's
    per_step_mean ablation is stored as a per-step table whose rows are all the mean)."""
    return LayerSpec(
        in_features=linear.in_features, out_features=linear.out_features,
        bias=linear.bias is not None, group_size=sr.group_size, rotation=sr.rotation,
        out_rotation=sr.out_rotation,
        act_mode={"per_step_mean": "per_step", "static_folded": "static_tensor"}.get(sr.act_mode, sr.act_mode),
        steps=steps if sr.act_mode in PER_STEP_MODES else 0, channel_div=channel_div, side=side,
        rotation_storage=sr.rotation_storage, input_group=input_group, act_dither=sr.act_dither)


def _per_step_table(samples: dict[int | None, torch.Tensor], steps: int, quantile: float,
                    div: torch.Tensor | None) -> torch.Tensor:
    """table[t, j] = quantile(|z_t[:, j]|) / 7, a missing step takes the mean of the others."""
    def q(x):
        z = x if div is None else x / div
        return (channel_quantile(z.abs(), quantile) / QMAX).clamp_min(1e-6)
    rows = {t: q(samples[t]) for t in range(steps) if t in samples}
    if not rows:  # layer ran outside the denoising loop only: one row from those inputs
        return q(torch.cat(list(samples.values())))[None]
    mean = torch.stack(list(rows.values())).mean(dim=0)
    return torch.stack([rows.get(t, mean) for t in range(steps)])


def _mse_step_scales(samples: dict[int | None, torch.Tensor], steps: int, div: torch.Tensor,
                     upper: torch.Tensor, grid: int = 16) -> torch.Tensor:
    """Per-step per-tensor scale minimising ‖Q(z_t) − z_t‖² over `grid` candidates in
    [0.25, 1]·upper[t] (upper = the scale that clips no channel's calibrated quantile)."""
    pooled = torch.cat(list(samples.values()))
    out = []
    for t in range(steps):
        z = samples.get(t, samples.get(None, pooled)) / div
        best, best_err = upper[t], None
        for f in torch.linspace(0.25, 1.0, grid, dtype=torch.float64):
            s = upper[t] * f
            err = float((torch.clamp(torch.round(z / s), -8, 7) * s - z).pow(2).sum())
            if best_err is None or err < best_err:
                best, best_err = s, err
        out.append(best)
    return torch.stack(out)


def build_quant_linear(linear: nn.Linear, sr: SideRecipe, side: str, rot: BlockRotation | None,
                       st: LayerStats, path: str = "auto", backend: str = "auto",
                       act_stats: LayerStats | None = None, input_group: str | None = None,
                       input_weight: torch.Tensor | None = None) -> tuple[QuantLinear, dict]:
    """`act_stats`, `input_weight`: a shared-input group's activation statistics (its
    leader's) and stacked weights, so that every member derives the same input-side
    state (channel divisor, activation scales); `st` still gives this layer's Hessian."""
    W = linear.weight.detach().double().cpu()
    Wt = rot.apply(W) if rot is not None else W
    act_st = act_stats or st
    samples, steps = _act_tables(sr, act_st, rot)
    all_x = torch.cat(list(samples.values()))
    act_mode = sr.act_mode
    div = None
    if sr.smooth_alpha is not None:
        a = sr.smooth_alpha
        # max |x_j| over every calibration token when unrotated, else over the samples
        xmax = act_st.absmax.double() if rot is None else all_x.abs().amax(dim=0)
        w_in = Wt if input_weight is None else (
            rot.apply(input_weight.detach().double().cpu()) if rot is not None else input_weight.double().cpu())
        wmax = w_in.abs().amax(dim=0)
        div = (xmax.clamp_min(EPS) ** a / wmax.clamp_min(EPS) ** (1 - a)).clamp(1e-4, 1e4)
    table = None
    step_scale = None
    act_scale = None
    if act_mode in PER_STEP_MODES:
        table = _per_step_table(samples, steps, sr.quantile, div)
        if act_mode == "per_step_mean":
            table = table.mean(dim=0, keepdim=True).expand_as(table).clone()
        if act_mode == "per_step_factorized":
            # table[t, j] ≈ s_t · p_j: profile p = (geometric mean over steps)^α, folded into
            # the weights (α splits the channel range between activations and weights, as
            # in SmoothQuant); s_t = the per-tensor scale of z_t = x̃_t / p minimising the
            # step's quantization MSE, searched below the no-clipping scale.
            profile = torch.exp(torch.log(table).mean(dim=0)) ** sr.profile_alpha
            div = profile if div is None else div * profile
            step_scale = _mse_step_scales(samples, table.shape[0], div,
                                          (table / profile).amax(dim=1))
            table = None
    elif act_mode == "static":
        z = all_x if div is None else all_x / div
        act_scale = (channel_quantile(z.abs(), sr.quantile) / QMAX).clamp_min(1e-6)
    elif act_mode == "static_folded":
        # the paper code's static per-channel scale s_j, made integer-executable: s^α is
        # folded into the weights (x̃/s^α · s^α·W = x̃·W) before they are quantized, the
        # rest is one static scale for the whole tensor (α = 1: exactly 1)
        z = all_x if div is None else all_x / div
        s_ch = (channel_quantile(z.abs(), sr.quantile) / QMAX).clamp_min(1e-6)
        fold = s_ch ** sr.fold_alpha
        div = fold if div is None else div * fold
        act_scale = (s_ch / fold).amax().reshape(1)
    W_eff = Wt * div[None, :] if div is not None else Wt
    rot_out = (stored_rotation(build_output_rotation(W_eff), sr.rotation_storage)
               if sr.out_rotation else None)
    W_store = rot_out.apply(W_eff.T).T if rot_out is not None else W_eff
    gs = sr.group_size
    if sr.weight_solver == "rtn":
        codes, scales = quantize_weight_rtn(W_store, gs)
    else:
        H = st.take_normalized_hessian()
        if rot is not None:
            H = rot.conjugate(H)  # Rᵀ H R block by block
        if div is not None:
            H = H.div_(div[:, None].to(H.dtype)).div_(div[None, :].to(H.dtype))
        if sr.weight_solver == "gptq":
            codes, scales = gptq_quantize(W_store, H, gs, damp=sr.damp, act_order=sr.act_order, copy=False)
        else:
            codes, scales = gptq_blocklocal(W_store, H, gs, copy=False)
        del H
    spec = layer_spec(linear, sr, side,
                      steps=(table.shape[0] if table is not None else
                             step_scale.shape[0] if step_scale is not None else 0),
                      channel_div=div is not None, input_group=input_group)
    q = QuantLinear.from_parts(
        spec, codes, scales, bias=None if linear.bias is None else linear.bias.detach().float(),
        rot_in=rot, rot_out=rot_out, channel_div=None if div is None else div.float(),
        act_scale=None if act_scale is None else act_scale.float(),
        act_step_table=None if table is None else table.float(),
        act_step_scale=None if step_scale is None else step_scale.float(),
        path=path, backend=backend,
    )
    q.to(linear.weight.device)
    w_err = float((dequantize_weight(codes, scales, gs).double() - W_store).pow(2).sum()
                  / W_store.pow(2).sum().clamp_min(1e-30))
    info = {"side": side, "spec": spec.to_dict(), "weight_rel_mse": w_err,
            "integer_path": q.uses_integer_path() if path != "integer" else True,
            "calls": st.calls, "tokens": st.tokens}
    if not math.isfinite(w_err):
        raise FloatingPointError(f"non-finite quantization error in a layer with spec {spec}")
    return q, info
