"""Weight solvers and activation scaling, with measured margins.

Margins measured when these tests were written (seeded; see the closing note of the
quantization-core issue): GPTQ output error 0.50× RTN's on correlated inputs;
block-local GPTQ between the two (0.74× RTN); per-step tables 15% lower error than
their step mean under ±40% drift; Ω-QVLA ≈3× lower error than RTN on a layer fed
×50–×100 outlier channels (10× with GPTQ on the head weights).
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
    for r in ["omega_qvla", "omega_qvla_noperstep"]:
        mm = copy.deepcopy(m)
        quantize(mm, scoped(RECIPES[r], head=True), cal, forward=stepped_forward())
        errs[r] = eval_stepped(mm, m, xs)
        q = mm.lin
        assert q.spec.act_mode == "per_step" and q.act_step_table.shape == (10, 256)
    assert errs["omega_qvla"] < 0.92 * errs["omega_qvla_noperstep"]  # measured 0.85


def test_layer_reads_step_context_and_falls_back_to_mean():
    g = torch.Generator().manual_seed(1)
    m = OneLayer(128, 64)
    mm = copy.deepcopy(m)
    quantize(mm, scoped(RECIPES["omega_qvla"], head=True),
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


def _outlier_errors(recipes, head=True, solver=None):
    g = torch.Generator().manual_seed(0)
    m = OneLayer(1024, 384)
    cal = [outlier_inputs(256, 1024, g) for _ in range(4)]
    xs = outlier_inputs(512, 1024, g)
    out = {}
    for r in recipes:
        rec = scoped(RECIPES[r], head=head)
        if solver:
            rec = dataclasses.replace(rec, action_head=dataclasses.replace(
                rec.action_head, weight_solver=solver))
        mm = copy.deepcopy(m)
        quantize(mm, rec, cal, forward=stepped_forward())
        out[r] = eval_stepped(mm, m, xs)
    return out


def test_outlier_channels_omega_vs_rtn():
    e = _outlier_errors(["rtn", "smoothquant", "hadamard", "svd", "omega_qvla"])
    # measured: rtn 0.041, omega_qvla 0.0135 (3.0×), hadamard 0.013, svd 0.016, smoothquant 0.050
    assert e["omega_qvla"] * 2.5 < e["rtn"]
    assert e["svd"] < e["rtn"] and e["hadamard"] < e["rtn"]
    e_gptq = _outlier_errors(["omega_qvla"], solver="gptq")
    assert e_gptq["omega_qvla"] * 5 < e["rtn"]  # measured 10.8×
