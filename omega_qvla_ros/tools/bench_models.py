"""`omega-qvla bench models`: action error of every recipe vs FP on a fixed batch, for the
random-init tiny (or small) models of both families. Random weights make these numbers
a plumbing check of the whole model path, not a fidelity claim about trained models."""
from __future__ import annotations

import copy
import time

import torch

from omega_qvla_ros.models import build_model
from omega_qvla_ros.models.calibrate import quantize_model, synthetic_observations
from omega_qvla_ros.quant.recipes import RECIPES


def run(size: str = "tiny", calib_batches: int = 4, seed: int = 0) -> dict:
    out: dict = {"benchmark": "models", "size": size, "init": "random", "metric":
                 "relative MSE of the action chunk vs FP (fixed noise, 4 held-out observations)",
                 "action_error": {}}
    t0 = time.time()
    for family in ("pi05", "gr00t"):
        fp = build_model(family, size, seed=seed).eval()
        c = fp.config
        calib = synthetic_observations(c, calib_batches, seed=seed + 1)
        test = synthetic_observations(c, 2, seed=seed + 100)
        g = torch.Generator().manual_seed(seed)
        noise = [torch.randn(o.batch_size, c.action_horizon, c.action_dim, generator=g) for o in test]
        with torch.no_grad():
            refs = [fp.sample_actions(o, noise=n) for o, n in zip(test, noise)]
        out["action_error"][family] = {}
        for r in RECIPES:
            m = quantize_model(copy.deepcopy(fp), r, calib, seed=seed)
            with torch.no_grad():
                errs = [float(((m.sample_actions(o, noise=n) - ref) ** 2).mean() / (ref ** 2).mean())
                        for o, n, ref in zip(test, noise, refs)]
            out["action_error"][family][r] = sum(errs) / len(errs)
    out["seconds"] = time.time() - t0
    return out


def format_text(result: dict) -> str:
    fams = list(result["action_error"])
    lines = [f"action error vs FP ({result['size']}, random init)", "| recipe | " + " | ".join(fams) + " |",
             "|---|" + "---|" * len(fams)]
    for r in result["action_error"][fams[0]]:
        lines.append(f"| {r} | " + " | ".join(f"{result['action_error'][f][r]:.4f}" for f in fams) + " |")
    return "\n".join(lines)
