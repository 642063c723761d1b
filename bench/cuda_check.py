"""CUDA check of the quantization core, for a machine with a GPU (none here or in CI).

1. `test/test_cuda.py` (integer path via `torch._int_mm` == reference path == exact CPU
   integer path, shapes around `_int_mm`'s rules), its pytest summary recorded;
2. the same agreement as numbers: max |integer − reference| / max |reference| per shape
   and activation mode;
3. latency of the integer path vs the reference path vs fp32 and fp16 `nn.Linear`, as
   ratios from one run (the issue's three shapes plus published widths), per-token scales
   (`torch._int_mm`) and one static scale (the fused Triton kernels when Triton is installed);
4. the node's runtime on the GPU: `Policy.from_pack(..., device)` + `infer()` for the shipped
   packs and `omega_qvla_int` packs made here (synthetic calibration), the same observation
   and noise on CPU and GPU: action difference (rad) and inference time.

    python bench/cuda_check.py --out bench/results     # writes quant_cuda_<gpu>.json
"""
from __future__ import annotations

import argparse
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

import torch  # noqa: E402

from omega_qvla_ros.tools.bench_quant import LATENCY_SHAPES, latency  # noqa: E402
from omega_qvla_ros.tools.device_check import LAYER_SHAPES, compare_layer, compare_policy  # noqa: E402

# published widths: Pi0.5 trunk MLP over an ~800-token prefix, its action expert, GR00T's
# DiT feed-forward over 49 tokens, GR00T's Qwen3 trunk MLP
PUBLISHED_SHAPES = [(816, 2048, 16384), (50, 1024, 4096), (49, 1536, 6144), (300, 2048, 6144)]


def policy_rows(device: str, repeats: int, workdir: Path) -> list[dict]:
    """compare_policy for the shipped packs and an omega_qvla_int pack per family made here."""
    from omega_qvla_ros.tools.cli import main as cli

    fp = {"pi05": REPO / "models" / "pi05_small_aloha", "gr00t": REPO / "models" / "gr00t_small_aloha"}
    packs = {"pi05 fp16": (fp["pi05"], None),
             "pi05 omega_qvla (shipped)": (REPO / "models" / "pi05_small_aloha_w4a4", fp["pi05"]),
             "gr00t fp16": (fp["gr00t"], None)}
    for fam in ("pi05", "gr00t"):
        out = workdir / f"{fam}_int"
        assert cli(["quantize", "--family", fam, "--recipe", "omega_qvla_int", "--calib", "synthetic",
                    "--out", str(out), "--json"]) == 0
        packs[f"{fam} omega_qvla_int"] = (out, fp[fam])
    rows = []
    for label, (path, fp_path) in packs.items():
        rows.append({"pack": label, **compare_policy(path, device, fp_path, repeats)})
        print(rows[-1], flush=True)
    return rows


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
    lat = latency(LATENCY_SHAPES + PUBLISHED_SHAPES, repeats=args.repeats, device=args.device, fp16=True)
    result = {
        "benchmark": "quant_cuda",
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "pytest_test_cuda": {"returncode": tests.returncode, "summary": summary},
        "agreement": [compare_layer(s, m, args.device) for s in LAYER_SHAPES
                      for m in ("dynamic", "per_step_factorized")],
        "latency": lat,
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["policy"] = policy_rows(args.device, args.policy_repeats, Path(tmp))
    result["seconds"] = time.time() - t0
    out = Path(args.out) / f"quant_cuda_{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_').lower()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "latency"}, indent=1))
    for r in lat:
        print(r["shape"], f"fp32 {r['fp32_ms']:.3f} fp16 {r['fp16_ms']:.3f} ref {r['reference_ms']:.3f} "
              f"int {r['integer_ms']:.3f} ms; int vs fp32 {r['integer_speedup_vs_fp32']:.2f}x, "
              f"vs fp16 {r['integer_speedup_vs_fp16']:.2f}x, vs ref {r['integer_speedup_vs_reference']:.2f}x; "
              f"static scale ({r['static_backend']}) {r['integer_static_ms']:.3f} ms, "
              f"vs fp16 {r['integer_static_speedup_vs_fp16']:.2f}x")
    print("wrote", out)
    return 0 if tests.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
