"""bench/profile_chunk.py on the shipped Pi0.5 packs: every part's time is counted once,
the quantized linears are found on both sides, and the README section renders it."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "profile_chunk.py"


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def test_profile_of_the_shipped_pi05_packs(tmp_path):
    out = tmp_path / "profile.json"
    p = subprocess.run([sys.executable, str(SCRIPT), "--w4a4", str(ROOT / "models" / "pi05_small_aloha_w4a4"),
                        "--fp", str(ROOT / "models" / "pi05_small_aloha"), "--chunks", "1", "--top", "4",
                        "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(out.read_text())
    for name, run in r["runs"].items():
        for part in ("trunk", "action_head"):  # the quantized scope, timed on both sides
            assert run[f"{part}_quantized_linears_s"] > 0, (name, part)
        assert run["vision_float_modules_s"] > 0  # the vision tower stays float
        parts = sum(v for k, v in run.items() if k.endswith("_s") and k not in ("chunk_s", "outside_modules_s"))
        assert 0 < parts < run["chunk_s"]  # no time counted twice
        assert abs(parts + run["outside_modules_s"] - run["chunk_s"]) < 1e-9
        slowest = run["slowest_modules"]  # --top: layers pooled, within the parts
        assert len(slowest) == 4 and sum(slowest.values()) <= parts + 1e-9 and any("layers.*." in k for k in slowest)
    w, f = r["runs"]["w4a4"]["slowest_modules"], r["runs"]["fp32"]["slowest_modules"]
    assert list(w.values()) == sorted(w.values(), reverse=True) and list(f) == list(w)  # W4A4's slowest, both sides
    assert r["runs"]["w4a4"]["quantized"] and not r["runs"]["fp32"]["quantized"]
    table = _module("make_table", ROOT / "bench" / "make_table.py")
    text = table.profile_section(out)
    assert "| trunk: linears W4A4 quantizes |" in text and "whole chunk" in text and "`--top 4`" in text
    # the header, then one row per timed part, the outside and the whole chunk
    assert sum(line.startswith("| ") for line in text.splitlines()) == 1 + len(
        [k for k in r["runs"]["w4a4"] if k.endswith("_s")])


def test_profile_names_a_missing_pack_in_one_line(tmp_path):
    p = subprocess.run([sys.executable, str(SCRIPT), "--w4a4", str(tmp_path / "nope"),
                        "--fp", str(ROOT / "models" / "pi05_small_aloha")], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "nope" in p.stderr


def test_committed_profiles_render():
    table = _module("make_table", ROOT / "bench" / "make_table.py")
    for f in sorted((ROOT / "bench" / "results").glob("profile_*.json")):
        r = json.loads(f.read_text())
        for run in r["runs"].values():
            assert run["outside_modules_s"] >= 0
        assert "whole chunk" in table.profile_section(f)
