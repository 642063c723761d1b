"""bench/kernel_share.py: the kernel's thread shares timed side by side give bit-equal
outputs, and the committed result renders in the README's section."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from omega_qvla_ros.quant import cpu_kernel

ROOT = Path(__file__).resolve().parents[1]


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


@pytest.mark.skipif(not cpu_kernel.available(), reason=str(cpu_kernel.unavailable_reason()))
def test_shares_timed_side_by_side():
    ks = _module("kernel_share")
    r = ks.run(rounds=1, shapes=[("t", "few rows", 9, 1030, 1100), ("t", "many rows", 70, 130, 200)])
    assert [x["layer"] for x in r["rows"]] == ["few rows"] * 2 + ["many rows"] * 2
    for x in r["rows"]:
        assert x["outputs_equal"] and min(x["rows_ms"], x["columns_ms"], x["auto_ms"]) > 0
    text = ks.format_markdown(r)
    assert text.count("| t |") == 4 and "NO" not in text


def test_committed_result_renders():
    f = ROOT / "bench" / "results" / "kernel_share.json"
    r = json.loads(f.read_text())
    assert all(x["outputs_equal"] for x in r["rows"])
    assert "by columns ms" in _module("kernel_share").format_markdown(r)
