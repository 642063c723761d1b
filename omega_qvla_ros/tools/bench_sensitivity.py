"""`omega-qvla bench sensitivity`: where W4A4 loses the policy.

One part of the model quantized at a time (everything else FP), each measured two ways:
- action error on the FP policy's *own* closed-loop observations (the states it visits,
  not the expert's): the FP policy runs `rollouts` episodes, every observation it
  inferred on is kept with its flow noise, and each partly quantized model answers the
  same observations with the same noise (relative MSE of the normalised chunk, and mean
  |Δ| in joint units);
- closed-loop success and partial rewards over `episodes` evaluation seeds (the eval's
  controller and seeds), which is what the issue asks W4A4 to keep.

Parts come from the family's quantization scopes, so any family works: the whole recipe;
weights only (activations left in float: W4A16, shows what the int4 activations cost);
backbone alone; action head alone; the backbone's and the action head's layers in
thirds (layer index = the first number in the module name). Calibration is the eval's
(expert episodes, seeds 90000+). Writes JSON and an SVG bar chart (no plotting library
needed).

Control rows ("FP + random error …"): the FP model with Gaussian noise added to each
normalised action chunk at a given relative MSE (the whole recipe's, and smaller ones):
how much closed-loop success an error of that size costs this policy whatever its
source — W4A4's own, or any other.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import time
from pathlib import Path

import torch

from omega_qvla_ros.tools.eval_cmd import CALIB_SEED, EVAL_SEED, calibration_observations

LAYER = re.compile(r"\.(\d+)\.")


def _layer_index(name: str) -> int | None:
    m = LAYER.search(name)
    return int(m.group(1)) if m else None


def _thirds(indices: list[int]) -> list[list[int]]:
    idx = sorted(set(indices))
    k = max(1, -(-len(idx) // 3))
    return [idx[i:i + k] for i in range(0, len(idx), k)]


def parts(model, recipe_name: str) -> list[tuple[str, object]]:
    """(label, Recipe) per part, from the model family's scopes."""
    from omega_qvla_ros.models.calibrate import scoped_recipe

    full = scoped_recipe(model, recipe_name)
    names = {side: [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and sr.matches(n)]
             for side, sr in full.sides()}
    out: list[tuple[str, object]] = [("all", full)]
    out.append(("weights only (A16)", full.replace_sides(act_mode="none")))
    labels = {"backbone": "backbone", "action_head": "action head"}
    for side, sr in full.sides():
        other = "action_head" if side == "backbone" else "backbone"
        alone = dataclasses.replace(full, **{other: None})
        out.append((labels[side], alone))
        groups = _thirds([i for i in map(_layer_index, names[side]) if i is not None])
        if len(groups) < 2:
            continue
        everything = sorted({i for g in groups for i in g})
        for g in groups:
            drop = [i for i in everything if i not in g]
            # the first ".N." of the name is the layer (GR00T's "ff.net.0.proj" has a second one)
            first = rf"^(?:(?!\.\d+\.).)*\.({'|'.join(map(str, drop))})\."
            part_sr = dataclasses.replace(sr, exclude=list(sr.exclude) + [first])
            out.append((f"{labels[side]} layers {g[0]}–{g[-1]}", dataclasses.replace(alone, **{side: part_sr})))
    return out


class PerturbedModel:
    """`model` whose action chunks carry white Gaussian noise of relative MSE `rel` (of
    the chunk's own power over the first `dof` dimensions), seeded."""

    def __init__(self, model, rel: float, dof: int, seed: int = 0) -> None:
        self.model, self.rel, self.dof = model, rel, dof
        self.gen = torch.Generator().manual_seed(seed)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def sample_actions(self, obs, noise=None, **kw):
        a = self.model.sample_actions(obs, noise=noise, **kw).clone()
        power = a[..., : self.dof].pow(2).mean()
        a[..., : self.dof] += torch.randn(a[..., : self.dof].shape, generator=self.gen) * (self.rel * power).sqrt()
        return a


class UnknownPart(ValueError):
    """A `--parts` label that names none of the model's parts (a user mistake)."""


def run(model_spec: str | None = None, recipe: str = "omega_qvla", task: str = "transfer_cube",
        episodes: int = 20, rollouts: int = 3, execute_horizon: int = 25, seed: int = 0,
        replan_every: int = 0, blend: str = "none", new_weight: float = 0.7,
        only: list[str] | None = None, log=None) -> dict:
    """`replan_every`, `blend`, `new_weight`: the controller's scheduling (eval's flags),
    for the FP rollouts and every closed-loop row; `only`: the parts measured (labels of
    `parts()`, default all; FP and the control rows always)."""
    from omega_qvla_ros.models.calibrate import quantize_model
    from omega_qvla_ros.sim.aloha import AlohaSim
    from omega_qvla_ros.sim.closed_loop import on_policy_observations, run_policy_episode, summarize
    from omega_qvla_ros.tools.bench_policy import action_error
    from omega_qvla_ros.tools.model_source import load_fp_model

    t0 = time.time()
    src = load_fp_model(model_spec, seed)
    fp = src.model
    base = src.policy()
    execute_horizon = min(execute_horizon, fp.config.action_horizon)
    every_part = parts(fp, recipe)
    chosen = [(label, rec) for label, rec in every_part if only is None or label in only]
    if only is not None and len(chosen) != len(set(only)):
        known = [label for label, _ in every_part]
        raise UnknownPart(f"unknown part(s) {sorted(set(only) - set(known))}; choose from {known}")
    calib = calibration_observations(base, ["transfer_cube", "insertion"], 2, 5, seed=CALIB_SEED)
    sched = {"replan_every": replan_every, "blend": blend, "new_weight": new_weight}
    seen = [x for ep in on_policy_observations(base, task, [EVAL_SEED + 1000 + i for i in range(rollouts)],
                                               execute_horizon, **sched) for x in ep]
    dof = base.processor.dof
    obs = [base.processor.observation(raw)[0] for raw, _ in seen]
    with torch.inference_mode():
        refs = [fp.sample_actions(o, noise=n)[..., :dof] for o, (_, n) in zip(obs, seen)]

    def closed_loop(pol) -> dict:
        with AlohaSim(task, image_size=fp.config.vision.image_size, cameras=tuple(pol.cameras)) as sim:
            s = summarize([run_policy_episode(pol, sim, EVAL_SEED + i, execute_horizon, **sched)
                           for i in range(episodes)])
        return s | {"reached": {str(k): sum(1 for m in s["max_rewards"] if m >= k) for k in (1, 2, 3)}}

    rows = {"fp16": {"quantized_layers": 0, "rel_mse_vs_fp": 0.0, "mean_abs_joint_error": 0.0,
                     "closed_loop": closed_loop(base)}}
    if log:
        log(f"fp16: {rows['fp16']['closed_loop']['reached']} ({time.time() - t0:.0f} s)")

    def measure(label: str, m, quantized: int, pol) -> None:
        with torch.inference_mode():
            outs = [m.sample_actions(o, noise=n)[..., :dof] for o, (_, n) in zip(obs, seen)]
        rel, rad = action_error(outs, refs, base.processor.actions)
        rows[label] = {"quantized_layers": quantized, "rel_mse_vs_fp": rel, "mean_abs_joint_error": rad,
                       "closed_loop": closed_loop(pol)}
        if log:
            log(f"{label}: {quantized} layers, rel-MSE {rel:.4f}, {rows[label]['closed_loop']['reached']} "
                f"({time.time() - t0:.0f} s)")

    for label, rec in chosen:
        m = quantize_model(copy.deepcopy(fp), rec, calib, seed=seed)
        measure(label, m, sum(1 for q in m.modules() if type(q).__name__ == "QuantLinear"), src.policy(m, recipe))
    whole = [round(rows["all"]["rel_mse_vs_fp"], 4)] if "all" in rows else []
    for rel in sorted({*whole, 0.002, 0.0005}, reverse=True):
        m = PerturbedModel(fp, rel, dof, seed)
        measure(f"FP + random error, rel-MSE {rel:g}", m, 0, src.policy(m, "fp16"))
    return {"benchmark": "sensitivity", "model": src.description, "recipe": recipe, "task": task,
            "on_policy_observations": len(seen), "rollout_seeds": [EVAL_SEED + 1000, EVAL_SEED + 1000 + rollouts - 1],
            "eval_seeds": [EVAL_SEED, EVAL_SEED + episodes - 1], "execute_horizon": execute_horizon,
            "replan_every": replan_every or execute_horizon, "blend": blend, "blend_new_weight": new_weight,
            "parts_requested": list(only) if only is not None else None,
            "calibration_observations": len(calib), "threads": torch.get_num_threads(),
            "parts": rows, "seconds": time.time() - t0}


def format_text(r: dict) -> str:
    every = r.get("replan_every", r["execute_horizon"])
    sched = (f", a chunk every {every} steps, overlaps {r['blend']}d (new {r['blend_new_weight']:g})"
             if every != r["execute_horizon"] else f", chunks of {r['execute_horizon']}")
    lines = [f"sensitivity of {r['model'].get('family')} to {r['recipe']}, one part at a time "
             f"({r['on_policy_observations']} on-policy observations; closed loop {r['task']}, "
             f"{r['parts']['fp16']['closed_loop']['episodes']} seeds{sched})", "",
             "| part | quantized layers | action rel-MSE vs FP (on-policy) | mean \\|Δ\\| joints | "
             "success | touched / lifted / hand-over |", "|---|---|---|---|---|---|"]
    for label, p in r["parts"].items():
        c = p["closed_loop"]
        lines.append(f"| {label} | {p['quantized_layers']} | {p['rel_mse_vs_fp']:.4f} | "
                     f"{p['mean_abs_joint_error']:.4f} | {c['successes']}/{c['episodes']} | "
                     f"{c['reached']['1']} / {c['reached']['2']} / {c['reached']['3']} |")
    return "\n".join(lines)


def svg(r: dict) -> str:
    """Two bar charts side by side: on-policy action error and lifted/hand-over counts."""
    labels = list(r["parts"])
    n = len(labels)
    row, left, width = 22, 190, 260
    h = 40 + row * n
    errs = [r["parts"][k]["rel_mse_vs_fp"] for k in labels]
    emax = max(errs) or 1.0
    eps = r["parts"]["fp16"]["closed_loop"]["episodes"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + 2 * width + 60}" height="{h}" '
           'font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="14">action rel-MSE vs FP (on-policy)</text>',
           f'<text x="{left + width + 40}" y="14">closed loop: lifted (light) / hand-over (dark) of {eps}</text>']
    for i, k in enumerate(labels):
        y = 28 + row * i
        c = r["parts"][k]["closed_loop"]["reached"]
        out.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{k}</text>')
        w = width * errs[i] / emax
        out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="15" fill="#c44"/>')
        out.append(f'<text x="{left + w + 3:.1f}" y="{y + 12}">{errs[i]:.4f}</text>')
        x2 = left + width + 40
        out.append(f'<rect x="{x2}" y="{y}" width="{width * c["2"] / eps:.1f}" height="15" fill="#9bd"/>')
        out.append(f'<rect x="{x2}" y="{y}" width="{width * c["3"] / eps:.1f}" height="15" fill="#247"/>')
        out.append(f'<text x="{x2 + width * c["2"] / eps + 3:.1f}" y="{y + 12}">{c["2"]} / {c["3"]}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_svg(r: dict, path: str | Path) -> None:
    Path(path).write_text(svg(r))
