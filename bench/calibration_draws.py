"""Closed-loop success over calibration draws: one evaluation (model, controller, seeds)
run again with its calibration set drawn again (`omega-qvla eval --calib-seed`), per
recipe and calibration source. W4A4's success moves with the 10 observations it is
calibrated on; one draw says little about a recipe, the spread over draws says more.

    python bench/calibration_draws.py EVAL.json [EVAL.json ...] --out bench/results/calibration_draws_<name>.json

Each input is an `omega-qvla eval --out` JSON. Rows: per draw, the calibration seeds, the
successes and the touched / lifted / hand-over counts; per (recipe, source), the mean,
lowest and highest success over draws. Every draw runs the same evaluation seeds, so the
draws share their scenes: the spread is the calibration's, not the scenes'.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def levels(max_rewards: list[int]) -> list[int]:
    """Episodes that touched, lifted, handed over (highest reward ≥ 1, 2, 3)."""
    return [sum(1 for m in max_rewards if m >= k) for k in (1, 2, 3)]


def pool(evals: list[dict], recipes: set[str] | None = None) -> dict:
    """Draws grouped by (recipe, task, calibration); `recipes` (default: all but fp16)."""
    groups: dict[str, dict] = {}
    for e in evals:
        meta = e["_meta"]
        cal = meta["calibration"]
        for recipe, tasks in e.items():
            if recipe == "_meta" or recipe == "fp16" or (recipes and recipe not in recipes):
                continue
            for task, r in tasks.items():
                key = f"{recipe}, {task}, {cal['source']} calibration ({cal['observations']} observations)"
                g = groups.setdefault(key, {"recipe": recipe, "task": task, "source": cal["source"],
                                            "observations": cal["observations"], "draws": []})
                g["draws"].append({"calibration_seeds": cal["seeds"], "episodes": r["episodes"],
                                   "successes": r["successes"], "touched_lifted_handover": levels(r["max_rewards"]),
                                   "eval_seeds": meta["eval_seeds"], "command": meta.get("command")})
    for g in groups.values():
        s = [d["successes"] for d in g["draws"]]
        g["draws"].sort(key=lambda d: d["calibration_seeds"][0])
        g.update(successes_mean=statistics.fmean(s), successes_min=min(s), successes_max=max(s),
                 episodes_per_draw=g["draws"][0]["episodes"])
    return {"benchmark": "calibration_draws", "groups": groups}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("evals", nargs="+", help="omega-qvla eval --out JSON files")
    p.add_argument("--out", required=True)
    p.add_argument("--recipes", default="", help="comma-separated recipes to keep (default: all but fp16; "
                                                  "leave out those without calibration, such as rtn)")
    a = p.parse_args(argv)
    try:
        evals = [json.loads(Path(f).read_text()) for f in a.evals]
    except (OSError, ValueError) as e:
        print(f"calibration_draws: cannot read an eval JSON ({e})", file=sys.stderr)
        return 1
    r = pool(evals, {x for x in a.recipes.split(",") if x} or None)
    Path(a.out).write_text(json.dumps(r, indent=1) + "\n")
    for key, g in r["groups"].items():
        print(f"{key}: {[d['successes'] for d in g['draws']]} of {g['episodes_per_draw']}, "
              f"mean {g['successes_mean']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
