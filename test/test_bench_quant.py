"""`omega-qvla bench quant --quick --json` runs end to end and reports the documented JSON."""
from __future__ import annotations

import json
import subprocess
import sys


def test_bench_quant_quick_json():
    out = subprocess.run([sys.executable, "-m", "omega_qvla_ros.tools.cli", "bench", "quant",
                          "--quick", "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    for suite in ("gaussian", "outliers", "step_drift"):
        errs = r["error"][suite]
        assert set(errs) >= {"rtn", "omega_qvla_paper", "omega_qvla_int", "hadamard", "svd", "smoothquant"}
        assert all(0 < v < 1 for v in errs.values()), (suite, errs)
    # per-step scaling pays off on the drifting suite
    assert r["error"]["step_drift"]["omega_qvla_paper"] < r["error"]["step_drift"]["omega_qvla_noperstep"]
    for row in r["latency"]:
        assert row["integer_vs_reference_max_rel_diff"] < 1e-5
        assert row["fp32_ms"] > 0 and row["integer_ms"] > 0
    assert "mean" in r["minilm"] or "skipped" in r["minilm"]


def test_committed_cuda_results_render_and_agree():
    """The lent GPU's JSON (bench/cuda_check.py) renders into the README table, and what it
    recorded meets what test_cuda.py asserts (integer == reference on the GPU)."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("make_table", root / "bench" / "make_table.py")
    mt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mt)
    files = sorted((root / "bench" / "results").glob("quant_cuda_*.json"))
    assert files, "no committed CUDA results"
    for f in files:
        r = json.loads(f.read_text())
        assert r["pytest_test_cuda"]["returncode"] == 0
        agree = r.get("agreement", [])  # a run of some sections only (--tag) may leave it out
        assert all(a["integer_vs_reference_max_rel"] < 1e-5 for a in agree)
        assert sum(a["activation_codes_differing_from_cpu"] for a in agree) <= 1e-4 * sum(
            a["activation_codes"] for a in agree)
        for k in r.get("kernels", []):  # the one-kernel layer computes what the two kernels do
            assert k["one_vs_two_kernels_max_abs"] == 0.0
            T, K, _ = k["shape"]  # the rotation on tensor cores keeps the fp32 rotation's codes (runs since run3)
            assert k.get("tf32x3_vs_ieee_codes_differing", 0) <= max(1, 1e-4 * T * K)
            assert k.get("int8_vs_int4_gemm_max_abs", 0.0) == 0.0  # the int8-copy trial: the same sums
        for p in r.get("policy", []):  # the node's runtime on the GPU, as test_cuda.py bounds it
            assert p["finite"]
            if p["recipe"] == "fp16":
                assert p["max_abs_action_diff_rad"] < 1e-4
            else:
                assert p["mean_abs_action_diff_rad"] < 0.5 * p["w4a4_vs_fp_mean_rad"]
        for c in r.get("chunk", []):  # CUDA graphs replay the eager chunk, as test_cuda.py bounds it
            assert "error" not in c and c["graph_runs"]["eager"] == 0 and c["finite"]
            assert c["graph_vs_eager_max_abs"] < (1e-4 if c["recipe"] == "fp16" else 0.05)
        text = mt.cuda_section(f)
        assert r["device"] in text
        assert sum(line.startswith("| (") for line in text.splitlines()) == len(r.get("latency", [])) + len(
            r.get("kernels", []))
        assert r.get("latency") or r.get("kernels") or r.get("chunk"), f"{f.name}: nothing measured"


def test_cuda_section_renders_the_int8_copy_trial(tmp_path):
    """A run that timed the int8-copy GEMM (cuda_check since the trial) shows it beside the
    int4 GEMM in each table: a kernels column and ratio, the chunk's GEMM weights, the stack's
    column and ratio; earlier runs render as before (test above)."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("make_table", root / "bench" / "make_table.py")
    mt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mt)
    r = json.loads((root / "bench" / "results" / "quant_cuda_nvidia_h200_run2.json").read_text())
    for k in r["kernels"]:  # made-up times, only the layout is checked
        k["int8_gemm_only_ms"], k["two_kernels_int8_fp16_ms"] = k["gemm_only_ms"] / 2, k["fp16_ms"] / 1.25
    for c in r["chunk"]:
        c["gemm_weights"] = "int4"
    r["chunk"].append({**r["chunk"][-1], "gemm_weights": "int8"})
    for part in ("trunk", "expert", "chunk_equivalent"):
        r["stack"][part]["w4a4_int8_fp16_graph_ms"] = r["stack"][part]["fp16_graph_ms"] / 1.5
    mt.ROOT = tmp_path  # the table names its file relative to the repository root
    f = tmp_path / "quant_cuda_x.json"
    f.write_text(json.dumps(r))
    lines = mt.cuda_section(f).splitlines()
    kern = [ln for ln in lines if ln.startswith("| (")]
    assert len(kern) == len(r["kernels"]) and all(ln.endswith("| 1.25× |") for ln in kern)
    assert any("int8-copy GEMM alone" in ln for ln in lines)
    chunk = [ln for ln in lines if ln.startswith(f"| {r['chunk'][-1]['pack']} |")]
    assert chunk[-1].count("| int8 |") == 1 and chunk[0].count("| int4 |") == 1
    stack = [ln for ln in lines if ln.startswith(("| trunk", "| expert", "| chunk |"))]
    assert len(stack) == 3 and all(ln.endswith("| 1.50× |") for ln in stack)


def test_tf32x3_emulation_and_its_committed_counts():
    """bench/tf32x3_rotation_codes.py: its TF32 rounding keeps 10 mantissa bits (to nearest),
    the hi/lo split carries fp32's accuracy, and the committed counts say the rotation on
    tensor cores moves codes about as rarely as an exact product does."""
    import importlib.util

    import torch
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("tf32x3_codes", root / "bench" / "tf32x3_rotation_codes.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    a = torch.randn(10000, generator=torch.Generator().manual_seed(0)) * 100
    hi = m.tf32(a)
    assert (hi.view(torch.int32) & 0x1FFF).eq(0).all()
    assert ((a - hi).abs() <= a.abs() * 2.0 ** -11).all() and (hi != a).any()
    lo = m.tf32(a - hi)
    assert ((hi.double() + lo.double() - a.double()).abs() <= a.abs().double() * 2.0 ** -21).all()
    r = json.loads((root / "bench" / "results" / "tf32x3_rotation_codes.json").read_text())
    for part in ("shipped", "random"):
        t = r[part]
        assert t["codes"] > 1e6 and t["tf32x3_vs_fp32_max_code_step"] <= 1
        assert t["tf32x3_vs_fp32_differing"] <= 1e-5 * t["codes"]
