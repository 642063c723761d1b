"""The sensitivity benchmark's parts: each quantizes exactly its share of the family's
scope, the layer thirds of a side partition that side, and weights-only keeps float
activations."""
from __future__ import annotations

import pytest
import torch

from omega_qvla_ros.models import build_model
from omega_qvla_ros.models.calibrate import scoped_recipe
from omega_qvla_ros.tools.bench_sensitivity import _layer_index, parts


@pytest.mark.parametrize("family", ["pi05", "gr00t"])
def test_parts_partition_the_scope(family):
    model = build_model(family, "tiny", seed=0)
    full = scoped_recipe(model, "omega_qvla")
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]

    def chosen(rec):
        return {n for n in linears if rec.side_of(n) is not None}

    everything = chosen(full)
    got = dict(parts(model, "omega_qvla"))
    assert chosen(got["all"]) == everything
    wo = got["weights only (A16)"]
    assert chosen(wo) == everything and all(sr.act_mode == "none" for _s, sr in wo.sides())
    bb, ah = chosen(got["backbone"]), chosen(got["action head"])
    assert bb and ah and not (bb & ah) and bb | ah == everything
    for side, whole in (("backbone", bb), ("action head", ah)):
        thirds = [chosen(r) for k, r in got.items() if k.startswith(side + " layers")]
        assert len(thirds) >= 2
        assert set().union(*thirds) == whole and sum(map(len, thirds)) == len(whole)
        for t in thirds:  # whole layers, never part of one
            idx = {_layer_index(n) for n in t}
            assert {n for n in whole if _layer_index(n) in idx} == t


def test_perturbed_model_adds_error_of_the_asked_size():
    """The control rows' model: white noise at a relative MSE of the chunk's own power, on
    the robot's dimensions only, seeded, everything else delegated."""
    from omega_qvla_ros.tools.bench_sensitivity import PerturbedModel

    class Fixed:
        config = "cfg"

        def sample_actions(self, obs, noise=None, num_steps=None):
            return torch.linspace(-1, 2, 50 * 32).reshape(1, 50, 32)

    ref = Fixed().sample_actions(None)
    a = PerturbedModel(Fixed(), 0.01, dof=14, seed=3)
    out = a.sample_actions(None, noise=None, num_steps=10)
    rel = float((out - ref)[..., :14].pow(2).mean() / ref[..., :14].pow(2).mean())
    assert 0.008 < rel < 0.012 and torch.equal(out[..., 14:], ref[..., 14:])
    assert torch.equal(PerturbedModel(Fixed(), 0.01, 14, seed=3).sample_actions(None), out)
    assert a.config == "cfg"


def test_unknown_part_is_refused_before_any_work(capsys):
    """`bench sensitivity --parts`: a label that names no part fails before calibration or
    rollouts, naming the parts there are; the CLI says it in one line."""
    from omega_qvla_ros.tools.bench_sensitivity import run
    from omega_qvla_ros.tools.cli import main

    with pytest.raises(ValueError, match=r"unknown part\(s\) \['the gripper'\]; choose from \['all'"):
        run("random:pi05:tiny", only=["all", "the gripper"])
    capsys.readouterr()
    assert main(["bench", "sensitivity", "--model", "random:pi05:tiny", "--parts", "backbone,the gripper"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("omega-qvla bench: unknown part(s) ['the gripper']") and err.count("\n") == 1


def test_calibration_draws_pool_per_recipe_and_source(tmp_path):
    """bench/calibration_draws.py groups eval JSONs by recipe, task and calibration source,
    one row per draw in seed order, with the mean and range of successes; FP (no
    calibration) and recipes left out by --recipes do not appear; the README renders it."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def load(name):
        spec = importlib.util.spec_from_file_location(name, root / "bench" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    cd, mt = load("calibration_draws"), load("make_table")

    def ev(source, seed, ok, rewards):
        task = {"episodes": 4, "successes": ok, "max_rewards": rewards}
        return {"fp16": {"t": task}, "omega_qvla": {"t": task}, "rtn": {"t": task},
                "_meta": {"calibration": {"source": source, "observations": 10, "seeds": [seed, seed + 1]},
                          "eval_seeds": [100000, 100003], "command": "omega-qvla eval ..."}}
    files = []
    for i, e in enumerate([ev("policy", 90200, 1, [3, 1, 0, 0]), ev("policy", 90000, 3, [3, 3, 3, 2]),
                           ev("expert", 90000, 2, [3, 3, 2, 0])]):
        files.append(tmp_path / f"e{i}.json")
        files[-1].write_text(json.dumps(e))
    out = root / "bench" / "results" / "calibration_draws_test_tmp.json"
    try:
        assert cd.main([*map(str, files), "--recipes", "omega_qvla", "--out", str(out)]) == 0
        r = json.loads(out.read_text())
        assert sorted(r["groups"]) == ["omega_qvla, t, expert calibration (10 observations)",
                                       "omega_qvla, t, policy calibration (10 observations)"]
        g = r["groups"]["omega_qvla, t, policy calibration (10 observations)"]
        assert [d["calibration_seeds"][0] for d in g["draws"]] == [90000, 90200]
        assert [d["touched_lifted_handover"] for d in g["draws"]] == [[4, 4, 3], [2, 1, 1]]
        assert (g["successes_mean"], g["successes_min"], g["successes_max"]) == (2.0, 1, 3)
        text = mt.calibration_draws_section(out)
        assert "90000: 3 (4/4/3); 90200: 1 (2/1/1) | 2.0/4 | 1–3 |" in text
    finally:
        out.unlink(missing_ok=True)
    assert cd.main([str(tmp_path / "missing.json"), "--out", str(out)]) == 1
