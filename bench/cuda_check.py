"""CUDA check of the quantization core, for a machine with a GPU (none here or in CI).

1. `test/test_cuda.py` (integer path via `torch._int_mm` == reference path == exact CPU
   integer path, shapes around `_int_mm`'s rules), its pytest summary recorded;
2. the same agreement as numbers: max |integer − reference| / max |reference| per shape
   and activation mode;
3. latency of the integer path vs the reference path vs fp32 and fp16 `nn.Linear`, as
   ratios from one run (the issue's three shapes plus published widths);
4. the node's runtime on the GPU: `Policy.from_pack(..., device)` + `infer()` for the shipped
   packs and `omega_qvla_int` packs made here (synthetic calibration), the same observation
   and noise on CPU and GPU: action difference (rad) and inference time.

    python bench/cuda_check.py --out bench/results     # writes quant_cuda_<gpu>.json
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "test"))

import torch  # noqa: E402

from omega_qvla_ros.tools.bench_quant import LATENCY_SHAPES, _median_ms, latency  # noqa: E402
from omega_qvla_ros.tools.quant_suites import drift_inputs  # noqa: E402

# published widths: Pi0.5 trunk MLP over an ~800-token prefix, its action expert, GR00T's
# DiT feed-forward over 49 tokens, GR00T's Qwen3 trunk MLP
PUBLISHED_SHAPES = [(816, 2048, 16384), (50, 1024, 4096), (49, 1536, 6144), (300, 2048, 6144)]


def agreement(device: str) -> list[dict]:
    """Per shape and mode, over all ten steps: worst integer-vs-reference difference on the
    device, worst difference from the CPU integer path, and activation codes that differ."""
    from test_cuda import SHAPES, activation_codes, integer_layer, run_paths

    rows = []
    for M, K, N in SHAPES:
        for mode in ("dynamic", "per_step_factorized"):
            cpu = integer_layer(K, N, mode)
            dev = copy.deepcopy(cpu).to(device)
            x = drift_inputs(M, K, torch.Generator().manual_seed(5), steps=10)
            worst_ref, worst_cpu, flips, codes = 0.0, 0.0, 0, 0
            for t in range(10):
                ref_cpu = run_paths(cpu, x[t], t)
                y = run_paths(dev, x[t].to(device), t)
                s = ref_cpu["reference"].abs().max()
                worst_ref = max(worst_ref, float((y["integer"] - y["reference"]).abs().max() / s))
                worst_cpu = max(worst_cpu, float((y["integer"].cpu() - ref_cpu["integer"]).abs().max() / s))
                same = activation_codes(dev, x[t].to(device), t).cpu() == activation_codes(cpu, x[t], t)
                flips, codes = flips + int((~same).sum()), codes + same.numel()
            rows.append({"shape": [M, K, N], "mode": mode,
                         "integer_vs_reference_max_rel": worst_ref,
                         "integer_vs_cpu_integer_max_rel": worst_cpu,
                         "activation_codes_differing_from_cpu": flips, "activation_codes": codes})
    return rows


def policy_check(device: str, repeats: int, workdir: Path) -> list[dict]:
    import numpy as np

    from test_cuda import observation_and_noise

    from omega_qvla_ros.runtime.policy import Policy
    from omega_qvla_ros.tools.cli import main as cli

    packs = {"pi05 fp16": REPO / "models" / "pi05_small_aloha",
             "pi05 omega_qvla (shipped)": REPO / "models" / "pi05_small_aloha_w4a4",
             "gr00t fp16": REPO / "models" / "gr00t_small_aloha"}
    for fam in ("pi05", "gr00t"):
        out = workdir / f"{fam}_int"
        assert cli(["quantize", "--family", fam, "--recipe", "omega_qvla_int", "--calib", "synthetic",
                    "--out", str(out), "--json"]) == 0
        packs[f"{fam} omega_qvla_int"] = out
    fp_packs = {"pi05": packs["pi05 fp16"], "gr00t": packs["gr00t fp16"]}
    rows = []
    for label, path in packs.items():
        pols = {d: Policy.from_pack(path, d) for d in ("cpu", device)}
        raw, noise = observation_and_noise(pols["cpu"])
        chunks = {d: pol.infer(raw, noise=noise).positions for d, pol in pols.items()}
        ms = {}
        for d, pol in pols.items():
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                pol.infer(raw, noise=noise)
                ts.append((time.perf_counter() - t0) * 1e3)
            ms[d] = float(np.median(ts))
        diff = np.abs(chunks[device] - chunks["cpu"])
        row = {"pack": label, "recipe": pols["cpu"].recipe,
               "integer_layers_on_device": pols[device].integer_layers(),
               "max_abs_action_diff_rad": float(diff.max()), "mean_abs_action_diff_rad": float(diff.mean()),
               "finite": bool(np.isfinite(chunks[device]).all()),
               "infer_ms_cpu": ms["cpu"], f"infer_ms_{device.split(':')[0]}": ms[device]}
        if row["recipe"] != "fp16":  # the pack's own quantization error on the CPU, for scale
            fp = Policy.from_pack(fp_packs[label.split()[0]], "cpu")
            q = np.abs(chunks["cpu"] - fp.infer(raw, noise=noise).positions)
            row.update(w4a4_vs_fp_max_rad=float(q.max()), w4a4_vs_fp_mean_rad=float(q.mean()))
        rows.append(row)
        print(row, flush=True)
    return rows


def fp16_ms(shapes, device: str, repeats: int) -> list[float]:
    out = []
    for M, K, N in shapes:
        lin = torch.nn.Linear(K, N).to(device).half()
        x = torch.randn(M, K, device=device, dtype=torch.half)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

        def g():
            lin(x)
            sync()
        with torch.no_grad():
            out.append(_median_ms(g, repeats))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--policy-repeats", type=int, default=10)
    args = ap.parse_args()
    t0 = time.time()
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.machine()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(REPO / "test" / "test_cuda.py")], cwd=REPO,
                           capture_output=True, text=True)
    summary = (tests.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(tests.stdout[-3000:], tests.stderr[-2000:], flush=True)
    shapes = LATENCY_SHAPES + PUBLISHED_SHAPES
    lat = latency(shapes, repeats=args.repeats, device=args.device)
    for row, h in zip(lat, fp16_ms(shapes, args.device, args.repeats)):
        row["fp16_ms"] = h
        row["integer_speedup_vs_fp16"] = h / row["integer_ms"]
    result = {
        "benchmark": "quant_cuda",
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "pytest_test_cuda": {"returncode": tests.returncode, "summary": summary},
        "agreement": agreement(args.device),
        "latency": lat,
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["policy"] = policy_check(args.device, args.policy_repeats, Path(tmp))
    result["seconds"] = time.time() - t0
    out = Path(args.out) / f"quant_cuda_{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_').lower()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "latency"}, indent=1))
    for r in lat:
        print(r["shape"], f"fp32 {r['fp32_ms']:.3f} fp16 {r['fp16_ms']:.3f} ref {r['reference_ms']:.3f} "
              f"int {r['integer_ms']:.3f} ms; int vs fp32 {r['integer_speedup_vs_fp32']:.2f}x, "
              f"vs fp16 {r['integer_speedup_vs_fp16']:.2f}x, vs ref {r['integer_speedup_vs_reference']:.2f}x")
    print("wrote", out)
    return 0 if tests.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
