"""Action error of FP packs under training's quantization noise and under their W4A4 pack.

For each FP pack: the action chunks (normalised, rel-MSE vs the pack's own FP chunks,
the same flow noise) with `models.quant_noise` switched on (the rounding a
`train --quant-noise` run trains through), and with the pack quantized by a recipe
(default omega_qvla, calibrated on expert observations as `omega-qvla eval` does).
Held-out observations: scripted-expert transfer-cube episodes on seeds disjoint from
calibration and evaluation. Used to compare quantization-noise fine-tunes (issue 18).

    .venv/bin/python bench/quant_noise_error.py --model models/pi05_small_aloha_cam_table /tmp/qn/pack
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

from omega_qvla_ros.models.calibrate import calibration_forward, quantize_model
from omega_qvla_ros.models.quant_noise import QuantNoise
from omega_qvla_ros.tools.bench_policy import action_error
from omega_qvla_ros.tools.eval_cmd import CALIB_SEED, calibration_observations
from omega_qvla_ros.tools.model_source import load_fp_model

HELD_OUT_SEED = 91000  # expert episodes for the error: after the calibration draws' seeds


def pack_errors(spec: str, recipe: str, calib: tuple[int, int, int], held: tuple[int, int], seed: int) -> dict:
    fp = load_fp_model(spec)
    episodes, frames, calib_seed = calib
    obs = calibration_observations(fp, ["transfer_cube"], episodes, frames, seed=calib_seed)
    test = calibration_observations(fp, ["transfer_cube"], held[0], held[1], seed=HELD_OUT_SEED)
    fwd = calibration_forward(seed)

    def chunks(model) -> list[torch.Tensor]:
        with torch.no_grad():
            return [fwd(model, o) for o in test]
    ref = chunks(fp.model)

    def rel_mse(outs: list[torch.Tensor]) -> float:
        return action_error(outs, ref, fp.processor.actions)[0]
    noise = QuantNoise(fp.model, probability=1.0)
    with noise.installed():
        noise.active = True
        noisy = chunks(fp.model)
    q = quantize_model(copy.deepcopy(fp.model), recipe, obs, seed=seed)
    return {"model": spec, "quant_noise_rel_mse": rel_mse(noisy), f"{recipe}_rel_mse": rel_mse(chunks(q)),
            "training": (fp.manifest.get("extra") or {}).get("training", {}).get("quant_noise")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", required=True, help="FP packs")
    p.add_argument("--recipe", default="omega_qvla")
    p.add_argument("--calib-episodes", type=int, default=4)
    p.add_argument("--calib-frames", type=int, default=10)
    p.add_argument("--calib-seed", type=int, default=CALIB_SEED)
    p.add_argument("--held-out-episodes", type=int, default=2)
    p.add_argument("--held-out-frames", type=int, default=10)
    p.add_argument("--seed", type=int, default=7, help="flow-noise seed of every chunk")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for spec in a.model:
        row = pack_errors(spec, a.recipe, (a.calib_episodes, a.calib_frames, a.calib_seed),
                          (a.held_out_episodes, a.held_out_frames), a.seed)
        rows.append(row)
        print(f"{spec}: quantization noise {row['quant_noise_rel_mse']:.4f}, "
              f"{a.recipe} {row[f'{a.recipe}_rel_mse']:.4f} rel-MSE vs its FP", file=sys.stderr)
    if a.out:
        Path(a.out).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
