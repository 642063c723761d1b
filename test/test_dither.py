"""Subtractive dither of the int4 activations (`omega_qvla_dither`, qlinear._dither_bank):
the offsets land half a code step either way, the integer path and the group run it as
the reference path does, the rounding error averages out over the bank's draws, and a
pack keeps it."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from omega_qvla_ros.models import build_model, model_info
from omega_qvla_ros.models.calibrate import quantize_model, synthetic_observations
from omega_qvla_ros.quant import RECIPES, cpu_kernel, int_gemm, quantize
from omega_qvla_ros.quant.context import denoising_step
from omega_qvla_ros.quant.pack import load_pack, save_pack
from omega_qvla_ros.quant.qlinear import LayerSpec

# the input-group tests' toy: three linears reading one input (one group), one reading another
from test_input_groups import STEPS, Siblings, _batches, _layers  # noqa: E402


def _quantized(side: str, recipe: str = "omega_qvla_dither"):
    m = copy.deepcopy(Siblings((128, 96, 128)).eval())
    quantize(m, RECIPES[recipe].with_scopes(**{side: [r"attn\.[abcd]$"]}), _batches(3, 0))
    return m


def _fresh(model, path: str = "auto", linked: bool = True, backend: str = "auto"):
    """A copy whose draws start again (the caches hold each layer's draw)."""
    m = copy.deepcopy(model)
    for q in _layers(m).values():
        q.path, q.backend = path, backend
        if not linked:
            q.siblings = None
        q._clear_caches()
    return m


def test_spec_refuses_dither_without_one_tensor_scale():
    with pytest.raises(ValueError, match="act_dither"):
        LayerSpec(64, 64, False, group_size=None, act_mode="dynamic", act_dither=16)
    with pytest.raises(ValueError, match="act_dither"):
        LayerSpec(64, 64, False, group_size=None, act_mode="static_tensor", act_dither=-1)


@pytest.mark.parametrize("side,mode", [("backbone", "static_tensor"), ("action_head", "per_step_factorized")])
def test_offsets_are_half_a_code_step(side, mode):
    """Each offset of the bank, through the layer's own input transform, is a uniform draw
    in [-1/2, 1/2) code steps per channel (the rotation's int8 storage bends it slightly)."""
    m = _quantized(side)
    for q in _layers(m).values():
        assert q.spec.act_mode == mode and q.spec.act_dither == 16
        e, c = q._dither_bank()
        assert e.shape == (16, q.in_features) and c.shape == (16, q.out_features)
        u = q._transformed_input(e)  # code units ("static_tensor": its scale is inside the transform)
        assert float(u.abs().max()) < 0.52
        assert abs(float(u.std()) - 12 ** -0.5) < 0.02


BACKENDS = ["exact", "int_mm"] + (["fbgemm"] if int_gemm.fbgemm_available() else []) + \
    (["avx2"] if cpu_kernel.available() else [])


@pytest.mark.parametrize("side", ["backbone", "action_head"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_path_and_group_run_the_reference_dither(side, backend):
    """Every CPU kernel, its layers one by one and as an input group (one draw for the
    group; on AVX2 the group's own call, InputGroup._avx2_outputs), called twice so the
    second call takes the short AVX2 forward and draws other offsets."""
    m = _quantized(side)
    assert any(q.siblings is not None and q.uses_integer_path() for q in _layers(m).values())
    x = _batches(1, 4)[0]
    with torch.no_grad():
        y = _fresh(m, backend=backend)(x)
        run = _fresh(m, backend=backend)
        y2 = [run(x) for _ in range(2)]
        ref = _fresh(m, path="reference", linked=False)
        r2 = [ref(x) for _ in range(2)]
        plain = _fresh(_quantized(side, "omega_qvla"), backend=backend)(x)
    for a, b in zip(y2, r2):
        assert float((a - b).abs().max() / b.abs().max()) < 1e-5
    assert torch.equal(y, y2[0])  # a fixed seed: a pack runs the same everywhere
    assert not torch.allclose(y2[0], y2[1])  # the next call draws other offsets
    assert not torch.allclose(y, plain)  # the dither is on
    if backend == "avx2":
        assert any(q.siblings is not None and q._group().runs_on_avx2() for q in _layers(run).values())


@pytest.mark.parametrize("side", ["backbone", "action_head"])
def test_rounding_error_averages_over_the_draws(side):
    """The point of it: undithered, a layer's error is the same for the same input in every
    call; dithered, the mean over the bank's draws comes much closer to the layer with its
    activations in float (same int4 weights): the error a fixed bank cannot average is the
    clipping of the few inputs beyond the calibrated range."""
    m = _quantized(side)
    plain = _quantized(side, "omega_qvla")
    x = _batches(1, 7)[0]
    for name, q in _layers(_fresh(m, linked=False)).items():
        if name == "attn.d":  # it reads the model's hidden state, not x
            continue
        ref = copy.deepcopy(q)
        ref.spec = dataclasses.replace(ref.spec, act_dither=0, act_mode="none")
        ref._clear_caches()
        undithered = _layers(plain)[name]
        undithered.siblings = None
        with torch.no_grad(), denoising_step(1, STEPS):
            target = ref(x)
            draws = torch.stack([q(x) for _ in range(64)])
            err0 = float((undithered(x) - target).norm() / target.norm())
        err1 = float((draws[0] - target).norm() / target.norm())
        err_mean = float((draws.mean(0) - target).norm() / target.norm())
        assert err1 < 1.5 * err0, name  # one draw: about the same size as the rounding it replaces
        assert err_mean < 0.7 * err0, (name, err0, err_mean)  # clipping stays: it is not random


def test_pack_keeps_the_dither(tmp_path):
    fp = build_model("pi05", "tiny", seed=1).eval()
    obs = synthetic_observations(fp.config, 2, seed=3)
    q = quantize_model(copy.deepcopy(fp), "omega_qvla_dither", obs, seed=0)
    assert all(m.spec.act_dither == 16 for m in _layers(q).values())
    d = save_pack(q, tmp_path / "pack", model_info(q, "tiny"), recipe=q.quantization_report["recipe_dict"])
    c = fp.config
    noise = torch.randn(obs[0].batch_size, c.action_horizon, c.action_dim, generator=torch.Generator().manual_seed(5))

    def actions(model):
        with torch.inference_mode():
            return model.sample_actions(obs[0], noise=noise)
    ref = actions(_fresh(q))
    loaded, _ = load_pack(d)
    assert all(m.spec.act_dither == 16 for m in _layers(loaded).values())
    assert torch.equal(actions(loaded), ref)
    assert not torch.equal(actions(loaded), ref)  # the next chunk draws other offsets
    lean, _ = load_pack(d, integer_codes="drop")  # the bank is built before the codes go
    assert float((actions(lean) - ref).abs().max() / ref.abs().max()) < 1e-4
