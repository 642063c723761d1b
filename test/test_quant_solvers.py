"""Weight solvers and activation scaling, with measured margins.

Margins measured when these tests were written (seeded; see the closing note of the
quantization-core issue): GPTQ output error 0.50× RTN's on correlated inputs;
block-local GPTQ between the two (0.74× RTN); per-step tables 15% lower error than
their step mean under ±40% drift; Ω-QVLA ≈3× lower error than RTN on a layer fed
×50–×100 outlier channels in the action-head scope (10× with GPTQ on the head weights; the
rest is the RTN weight error: W4A16 alone gives 0.0098 of the 0.0128); 10.5× in the
backbone scope (static per-channel activations; the per-token variant is no better than RTN).
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from omega_qvla_ros.quant import RECIPES, quantize
from omega_qvla_ros.quant.context import current_step, denoising_step
from omega_qvla_ros.quant.gptq import gptq_blocklocal, gptq_quantize, output_error
from omega_qvla_ros.quant.int4 import dequantize_weight, quantize_weight_rtn
from omega_qvla_ros.tools.quant_suites import (OneLayer, drift_inputs, eval_stepped,
                                               outlier_inputs, scoped, stepped_forward)


@pytest.fixture(scope="module")
def correlated():
    g = torch.Generator().manual_seed(0)
    n, out = 256, 128
    A = torch.randn(n, n, generator=g) * 0.3 + torch.eye(n)
    X = torch.randn(4096, n, generator=g) @ A
    H = (X.T @ X / X.shape[0]).double()
    W = torch.randn(out, n, generator=g)
    return W, H


@pytest.mark.parametrize("group", [128, None])
def test_gptq_beats_rtn_and_blocklocal(correlated, group):
    W, H = correlated
    c, s = quantize_weight_rtn(W, group)
    e_rtn = output_error(W, dequantize_weight(c, s, group), H)
    c, s = gptq_quantize(W, H, group)
    e_gptq = output_error(W, dequantize_weight(c, s, group), H)
    c, s = gptq_quantize(W, H, group, act_order=True)
    e_act = output_error(W, dequantize_weight(c, s, group), H)
    c, s = gptq_blocklocal(W, H, group)
    e_local = output_error(W, dequantize_weight(c, s, group), H)
    assert e_gptq < 0.6 * e_rtn  # measured 0.50
    assert e_act < 0.6 * e_rtn
    assert e_gptq < e_local < e_rtn  # measured 0.50 < 0.74 < 1 (relative to RTN)


def test_step_context_nesting_and_bounds():
    assert current_step() is None
    with denoising_step(3, 10):
        assert current_step() == (3, 10)
    assert current_step() is None
    with pytest.raises(ValueError):
        with denoising_step(10, 10):
            pass


def test_per_step_table_beats_step_mean_under_drift():
    g = torch.Generator().manual_seed(0)
    m = OneLayer(256, 192)
    cal = [drift_inputs(128, 256, g, drift=0.4) for _ in range(3)]
    xs = drift_inputs(256, 256, g, drift=0.4)
    errs = {}
    for r in ["omega_qvla_paper", "omega_qvla_noperstep"]:
        mm = copy.deepcopy(m)
        quantize(mm, scoped(RECIPES[r], head=True), cal, forward=stepped_forward())
        errs[r] = eval_stepped(mm, m, xs)
        q = mm.lin
        assert q.spec.act_mode == "per_step" and q.act_step_table.shape == (10, 256)
    assert errs["omega_qvla_paper"] < 0.92 * errs["omega_qvla_noperstep"]  # measured 0.85


def test_layer_reads_step_context_and_falls_back_to_mean():
    g = torch.Generator().manual_seed(1)
    m = OneLayer(128, 64)
    mm = copy.deepcopy(m)
    quantize(mm, scoped(RECIPES["omega_qvla_paper"], head=True),
             [drift_inputs(64, 128, g)], forward=stepped_forward())
    q = mm.lin
    x = torch.randn(4, 128)
    z = q._rotation("input").apply(x)
    with denoising_step(0, 10):
        assert torch.equal(q.activation_scale(z), q.act_step_table[0])
    with denoising_step(9, 10):
        assert torch.equal(q.activation_scale(z), q.act_step_table[9])
    assert torch.allclose(q.activation_scale(z), q.act_step_table.mean(0))
    # a sampler with another step count maps to the nearest calibrated step by progress
    with denoising_step(4, 5):
        assert torch.equal(q.activation_scale(z), q.act_step_table[9])


def _outlier_errors(recipes, head=True, **side_overrides):
    """Relative output MSE per recipe on one 1024→384 layer fed ×50–×100 outlier
    channels, the layer scoped as action head (head=True) or backbone; keyword
    arguments override fields of that side's recipe (solver, activation mode)."""
    g = torch.Generator().manual_seed(0)
    m = OneLayer(1024, 384)
    cal = [outlier_inputs(256, 1024, g) for _ in range(4)]
    xs = outlier_inputs(512, 1024, g)
    side = "action_head" if head else "backbone"
    out = {}
    for r in recipes:
        rec = scoped(RECIPES[r], head=head)
        if side_overrides:
            rec = dataclasses.replace(rec, **{side: dataclasses.replace(getattr(rec, side),
                                                                         **side_overrides)})
        mm = copy.deepcopy(m)
        quantize(mm, rec, cal, forward=stepped_forward())
        out[r] = eval_stepped(mm, m, xs)
    return out


def test_outlier_channels_action_head_scope():
    """The paper's head recipe: RTN weights, per-step static activation tables."""
    e = _outlier_errors(["rtn", "smoothquant", "hadamard", "svd", "omega_qvla_paper"])
    # measured: rtn 0.0398, omega_qvla 0.0128 (3.1×), hadamard 0.0131, svd 0.0166,
    # smoothquant 0.0505
    assert e["omega_qvla_paper"] * 2.5 < e["rtn"]
    assert e["svd"] < e["rtn"] and e["hadamard"] < e["rtn"]
    e_gptq = _outlier_errors(["omega_qvla_paper"], weight_solver="gptq")
    assert e_gptq["omega_qvla_paper"] * 5 < e["rtn"]  # measured 10.8× (not the paper's head recipe)
    # Why not 5× with RTN head weights: what is left is weight error. W4A16 (activations
    # unquantized) gives omega_qvla 0.0098 of its 0.0128. The layer's weights keep
    # nn.Linear's uniform init, the one distribution RTN fits best unrotated (rtn W4A16
    # 0.0051); any rotation makes them Gaussian-like.
    e_w = _outlier_errors(["omega_qvla_paper", "rtn"], act_mode="none")
    assert e_w["omega_qvla_paper"] > 0.6 * e["omega_qvla_paper"]
    assert e_w["rtn"] * 1.5 < e_w["omega_qvla_paper"]


def test_outlier_channels_backbone_scope():
    """The paper's backbone recipe as its code runs it: GPTQ weights, static
    per-input-channel activation scales (q0.999/7). Its text's per-token dynamic
    variant loses to RTN here: the composite U_b·H_64 rotation spreads a spike channel
    less evenly than H_64 alone (U_b maps the spike onto a dense unit vector, which
    H_64 does not flatten), so the token's max — and every channel's step — stays large."""
    e = _outlier_errors(["rtn", "hadamard", "svd", "smoothquant", "omega_qvla_paper",
                         "omega_qvla_pertoken"], head=False)
    # measured: rtn 0.0398, omega_qvla 0.0038 (10.5×), hadamard 0.0038, svd 0.0040,
    # smoothquant 0.0505; per-token omega_qvla_pertoken 0.0435 (0.91×)
    assert e["omega_qvla_paper"] * 5 < e["rtn"]
    assert e["hadamard"] * 5 < e["rtn"] and e["svd"] * 5 < e["rtn"]
    assert e["smoothquant"] > e["rtn"]
    assert e["omega_qvla_pertoken"] > 0.8 * e["rtn"]
    e_tok = _outlier_errors(["hadamard"], head=False, act_mode="dynamic")
    # measured: per-token Hadamard 0.0146 (2.7× below rtn), 3.0× better than per-token Ω-QVLA
    assert e_tok["hadamard"] * 2 < e["rtn"] and e["omega_qvla_pertoken"] > 2 * e_tok["hadamard"]
    e_rtn_static = _outlier_errors(["rtn"], head=False, act_mode="static")
    # measured: rtn with static per-channel scales 0.0075: the rotation halves it
    assert e["omega_qvla_paper"] * 1.5 < e_rtn_static["rtn"]


def test_composite_rotation_spreads_a_spike_less_than_hadamard():
    """Row j of R is where a spike on channel j lands: ‖e_j H‖∞ = 1/8 for every j, while
    U_b first maps the spike onto a dense unit vector that H does not flatten."""
    from omega_qvla_ros.quant.rotation import build_input_rotation
    w = torch.randn(256, 64, generator=torch.Generator().manual_seed(3))
    spread_h = build_input_rotation(w, "hadamard").dense().abs().amax(1)
    spread_o = build_input_rotation(w, "omega").dense().abs().amax(1)
    assert torch.allclose(spread_h, torch.full_like(spread_h, 1 / 8))
    assert spread_o.median() > 2 / 8
