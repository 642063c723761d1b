"""bench/node_inference.py: the node's executable, fed from the benchmark's own process,
reports per-chunk inference times and its tick rate; the committed result renders."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("rclpy")

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("node_inference", ROOT / "bench" / "node_inference.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def test_a_short_run_of_the_node_executable():
    ni = _module()
    r = ni.node_run(str(ROOT / "models" / "pi05_small_aloha_w4a4"), "true", 3.0, 64, 48)
    assert r["inference_ms"] and min(r["inference_ms"]) > 0 and len(r["inference_ms"]) == len(r["observation_age_ms"])
    assert r["ticks_per_s"] > 5 and r["chunks_per_s"] > 0
    s = ni.summarize([r], 3.0)
    assert s["chunks"] == len(r["inference_ms"]) and s["inference_ms_p90"] >= s["inference_ms_median"]


def test_committed_result_renders():
    r = json.loads((ROOT / "bench" / "results" / "node_inference.json").read_text())
    text = _module().format_markdown(r)
    assert "| own process |" in text and "| node thread |" in text and "ticks/s" in text
