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
        assert set(errs) >= {"rtn", "omega_qvla", "omega_qvla_int", "hadamard", "svd", "smoothquant"}
        assert all(0 < v < 1 for v in errs.values()), (suite, errs)
    # per-step scaling pays off on the drifting suite
    assert r["error"]["step_drift"]["omega_qvla"] < r["error"]["step_drift"]["omega_qvla_noperstep"]
    for row in r["latency"]:
        assert row["integer_vs_reference_max_rel_diff"] < 1e-5
        assert row["fp32_ms"] > 0 and row["integer_ms"] > 0
    assert "mean" in r["minilm"] or "skipped" in r["minilm"]
