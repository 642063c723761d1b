"""Does W4A4's offline action error rank its calibration draws by closed-loop success?

For every draw in a `bench/calibration_draws.py` JSON, the recipe is quantized again on
that draw's calibration set (same model, seeds, source), and its action error vs FP is
measured on the FP policy's own closed-loop observations (`bench/activation_sensitivity.py`'s
set: rollouts on evaluation seeds 101000+, every 5th observation, the same flow noise).
The JSON holds per draw the successes and that error, and the rank correlation of the two
over all draws. A strong negative correlation would let a cheap offline check choose
among calibration sets; none says the draws differ in a way that error does not see.

    .venv/bin/python bench/calibration_offline_error.py bench/results/calibration_draws_pi05_cam_table.json \\
        --model models/pi05_small_aloha_cam_table --replan-every 2 --blend average --blend-new-weight 0.2 \\
        --out bench/results/calibration_offline_error_pi05_cam_table.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from activation_sensitivity import HeldOut, add_common_args, finish, schedule  # bench/, beside this script
from omega_qvla_ros.models.calibrate import quantize_model
from omega_qvla_ros.tools.bench_policy import action_error
from omega_qvla_ros.tools.eval_cmd import calibration_observations
from omega_qvla_ros.tools.model_source import load_fp_model


def rank_correlation(x: list[float], y: list[float]) -> float:
    """Spearman's ρ (average ranks for ties)."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = v.argsort()
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for val in np.unique(v):  # ties share their mean rank
            r[v == val] = r[v == val].mean()
        return r
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def run(draws_json: Path, model_spec: str | None, rollouts: int, every: int, sched: dict, log) -> dict:
    t0 = time.time()
    src = load_fp_model(model_spec, 0)
    fp, base = src.model, src.policy()
    held = HeldOut(base, rollouts, every, sched)
    refs = held.chunks(fp)
    rows = []
    for key, g in json.loads(draws_json.read_text())["groups"].items():
        for d in g["draws"]:
            first, last = d["calibration_seeds"]
            episodes = last - first + 1
            calib = calibration_observations(base, [g["task"]], episodes, g["observations"] // episodes, seed=first,
                                             source=g["source"], replan_every=sched["replan_every"],
                                             blend=sched["blend"], new_weight=sched["new_weight"])
            q = quantize_model(copy.deepcopy(fp), g["recipe"], calib, seed=0)
            rel, rad = action_error(held.chunks(q), refs, held.proc.actions)
            rows.append({"group": key, "calibration_seeds": d["calibration_seeds"], "observations": len(calib),
                         "successes": d["successes"], "episodes": d["episodes"], "rel_mse_vs_fp": rel,
                         "mean_abs_joint_error": rad})
            log(f"{key} {first}: {d['successes']}/{d['episodes']}, rel-MSE {rel:.5f} ({time.time() - t0:.0f} s)")
    rho = rank_correlation([r["rel_mse_vs_fp"] for r in rows], [r["successes"] for r in rows])
    return {"benchmark": "calibration_offline_error", "model": src.description, "draws_from": str(draws_json),
            "rollout_seeds": held.seeds, "on_policy_observations": len(held.obs), "controller": sched, "rows": rows,
            "spearman_rel_mse_vs_successes": rho, "seconds": time.time() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("draws", type=Path, help="a bench/calibration_draws.py JSON")
    add_common_args(p)
    a = p.parse_args(argv)
    r = run(a.draws, a.model, a.rollouts, a.every, schedule(a), lambda m: print(m, file=sys.stderr, flush=True))
    print(f"Spearman rho (rel-MSE vs successes) over {len(r['rows'])} draws: {r['spearman_rel_mse_vs_successes']:+.2f}",
          file=sys.stderr)
    return finish(r, a.out)


if __name__ == "__main__":
    sys.exit(main())
