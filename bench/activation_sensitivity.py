"""Which layers' int4 activations cost a policy its accuracy.

The recipe quantizes the model once (every scoped layer W4A4); then one group of layers
at a time skips its activation rounding (W4A16 there: the same int4 weights, rotations and
channel scales, only the int4 activation codes replaced by the float input). Each row is
the action error vs FP on the FP policy's own closed-loop observations, under the
controller given (`bench sensitivity`'s measure); no closed loop per row (`bench
sensitivity` runs one per part). Groups: each side, each layer of a side, each input
(layers that share one: q/k/v, gate/up) across a side's layers. One reference row: FP
itself with another draw of the flow's starting noise (the spread of sampling).

    .venv/bin/python bench/activation_sensitivity.py --model models/pi05_small_aloha_cam_table \\
        --replan-every 2 --blend average --blend-new-weight 0.2 \\
        --out bench/results/activation_sensitivity_pi05_cam_table.json
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from omega_qvla_ros.models.calibrate import quantize_model, scoped_recipe
from omega_qvla_ros.quant.qlinear import QuantLinear
from omega_qvla_ros.sim.closed_loop import on_policy_observations
from omega_qvla_ros.tools.bench_policy import action_error
from omega_qvla_ros.tools.bench_sensitivity import _layer_index
from omega_qvla_ros.tools.eval_cmd import CALIB_SEED, EVAL_SEED, add_schedule_args, calibration_observations
from omega_qvla_ros.tools.model_source import load_fp_model

PERTURB = 1e-3  # relative image perturbation of the sensitivity-to-input rows


def groups(model, recipe) -> dict[str, list[str]]:
    """Label → quantized layer names: sides, (side, layer index), (side, input)."""
    q = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    out: dict[str, list[str]] = {"every layer": list(q)}
    for side, _sr in recipe.sides():
        names = [n for n in q if q[n].spec.side == side]
        out[side] = names
        for i in sorted({_layer_index(n) for n in names} - {None}):
            out[f"{side} layer {i}"] = [n for n in names if _layer_index(n) == i]
        inputs: dict[str, list[str]] = {}
        for n in names:
            sib = q[n].siblings
            members = [s for s in q if sib is not None and any(q[s] is x for x in sib)] or [n]
            label = "/".join(s.rsplit(".", 1)[-1] for s in members)
            inputs.setdefault(f"{side} {label} inputs", []).append(n)
        out.update(inputs)
    return out


def float_activations(model, names: list[str]):
    """A copy of `model` whose layers `names` skip the int4 activation rounding."""
    m = copy.deepcopy(model)
    for n in names:
        layer = m.get_submodule(n)
        layer.spec = dataclasses.replace(layer.spec, act_mode="none")
        layer._clear_caches()
    return m


class HeldOut:
    """The FP policy's own closed-loop observations (rollouts on evaluation seeds 101000+
    under the controller `sched`, every `every`-th observation, with the flow noise each
    was sampled with): the states where a quantized model's action error is measured."""

    def __init__(self, base, rollouts: int, every: int, sched: dict) -> None:
        self.seeds = [EVAL_SEED + 1000 + i for i in range(rollouts)]
        seen = [x for ep in on_policy_observations(base, "transfer_cube", self.seeds, 25, **sched) for x in ep][::every]
        self.proc = base.processor
        self.obs = [self.proc.observation(raw)[0] for raw, _ in seen]
        self.noises = [n for _, n in seen]

    def chunks(self, m, noises=None, images=None) -> list[torch.Tensor]:
        """m's action chunks (normalised, the robot's joints) on these observations, with
        their own noise unless `noises`, their own images unless `images`."""
        with torch.inference_mode():
            return [m.sample_actions(o if im is None else dataclasses.replace(o, images=im), noise=n)[..., :self.proc.dof]
                    for o, n, im in zip(self.obs, noises or self.noises, images or [None] * len(self.obs))]


def add_common_args(p: argparse.ArgumentParser) -> None:
    """--model, --rollouts, --every, the controller's schedule, --out."""
    p.add_argument("--model", default=None, help="FP pack (default: the shipped model)")
    p.add_argument("--rollouts", type=int, default=3, help="FP closed-loop rollouts (evaluation seeds 101000+)")
    p.add_argument("--every", type=int, default=5, help="keep every N-th observation of the rollouts")
    add_schedule_args(p)
    p.add_argument("--out", help="also write the JSON here")


def schedule(a: argparse.Namespace) -> dict:
    return {"replan_every": a.replan_every, "blend": a.blend, "new_weight": a.blend_new_weight}


def finish(r: dict, out: str | None) -> int:
    text = json.dumps(r, indent=1)
    if out:
        Path(out).write_text(text + "\n")
    print(text)
    return 0


def run(model_spec: str | None, recipe: str, rollouts: int, every: int, sched: dict, log) -> dict:
    t0 = time.time()
    src = load_fp_model(model_spec, 0)
    fp, base = src.model, src.policy()
    held = HeldOut(base, rollouts, every, sched)
    proc, obs, noises, seeds = held.proc, held.obs, held.noises, held.seeds
    chunks = held.chunks
    refs = chunks(fp)
    g = torch.Generator().manual_seed(1)
    rows = {}

    def row(label, outs, layers, refs=refs):
        rel, rad = action_error(outs, refs, proc.actions)
        rows[label] = {"layers_in_float": layers, "rel_mse_vs_fp": rel, "mean_abs_joint_error": rad}
        log(f"{label}: rel-MSE {rel:.4f}, mean |d| {rad:.4f} ({time.time() - t0:.0f} s)")

    row("FP, another flow-noise draw", chunks(fp, [torch.randn(n.shape, generator=g) for n in noises]), 0)
    calib = calibration_observations(base, ["transfer_cube"], 2, 5, seed=CALIB_SEED)
    rec = scoped_recipe(fp, recipe)
    q = quantize_model(copy.deepcopy(fp), rec, calib, seed=0)
    outs = chunks(q)
    row("W4A4 (nothing in float)", outs, 0)
    # how W4A4's error moves under a change of the input far below camera noise: every image
    # pixel × (1 + 1e-3·N(0, 1)), the same draw for FP and W4A4
    jitter = [o.images * (1 + PERTURB * torch.randn(o.images.shape, generator=g)) for o in obs]
    fp_j = chunks(fp, images=jitter)
    q_j = chunks(q, images=jitter)
    row(f"FP, images perturbed by {PERTURB:g} (vs FP unperturbed)", fp_j, 0)
    row(f"W4A4, images perturbed by {PERTURB:g} (vs FP perturbed)", q_j, 0, refs=fp_j)
    row(f"W4A4, images perturbed by {PERTURB:g} (vs W4A4 unperturbed)", q_j, 0, refs=outs)
    e0 = torch.cat([(a - b).flatten() for a, b in zip(outs, refs)])
    e1 = torch.cat([(a - b).flatten() for a, b in zip(q_j, fp_j)])
    error_corr = float((e0 * e1).sum() / (e0.norm() * e1.norm()))
    log(f"W4A4 error correlation under the perturbation: {error_corr:.3f}")
    for label, names in groups(q, rec).items():
        row(f"{label}: activations in float", chunks(float_activations(q, names)), len(names))
    return {"benchmark": "activation_sensitivity", "model": src.description, "recipe": recipe,
            "task": "transfer_cube", "rollout_seeds": seeds, "on_policy_observations": len(obs),
            "observation_every": every, "calibration_observations": len(calib),
            "w4a4_error_correlation_under_perturbation": error_corr, "perturbation": PERTURB,
            "controller": sched, "rows": rows, "seconds": time.time() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="omega_qvla")
    add_common_args(p)
    a = p.parse_args(argv)
    r = run(a.model, a.recipe, a.rollouts, a.every, schedule(a), lambda m: print(m, file=sys.stderr, flush=True))
    return finish(r, a.out)


if __name__ == "__main__":
    sys.exit(main())
