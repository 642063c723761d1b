"""Quantization-aware fine-tuning through the calibrated W4A4 forward
(models/calibrated_noise.py): with the latent weights at their calibration values the
training forward is the calibrated quantized model — its sampling, and each sample's
denoising step inside one training batch — gradients reach the FP weights, the recipe's
parts refresh on schedule, and removing the noise leaves the model as it was."""
from __future__ import annotations

import copy

import pytest
import torch

from omega_qvla_ros.models import build_model, get_config
from omega_qvla_ros.models.calibrate import quantize_model, synthetic_observations
from omega_qvla_ros.models.calibrated_noise import CalibratedQuantNoise
from omega_qvla_ros.quant.context import denoising_step
from omega_qvla_ros.quant.qlinear import QuantLinear


@pytest.fixture(scope="module", params=["pi05", "gr00t"])
def setup(request):
    torch.manual_seed(0)
    model = build_model(request.param, "tiny", seed=0).eval()
    obs = synthetic_observations(model.config, 3, batch=2, seed=1)
    twin = quantize_model(copy.deepcopy(model), "omega_qvla", obs, seed=0)
    for q in twin.modules():  # the reference path: the codes of the training forward's arithmetic
        if isinstance(q, QuantLinear):
            q.path = "reference"
    return model, obs, twin


def _noise_for(model, obs, **kw):
    qn = CalibratedQuantNoise(model, obs, probability=1.0, seed=0, **kw)
    qn.refresh()
    return qn


def test_sampling_through_the_noise_is_the_calibrated_w4a4_model(setup):
    model, obs, twin = setup
    qn = _noise_for(model, obs)
    modes = {layer.mode for layer in qn.layers.values()}
    assert {"static_tensor", "per_step_factorized"} <= modes, modes  # both sides of the default recipe
    c = model.config
    noise = torch.randn(2, c.action_horizon, c.action_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        fp = model.sample_actions(obs[0], noise=noise)
        ref = twin.sample_actions(obs[0], noise=noise)
        with qn.installed():
            qn.active = True
            got = model.sample_actions(obs[0], noise=noise)
    gap = (ref - fp).abs().max()
    assert gap > 1e-3  # W4A4 moves the actions: the comparison below can fail
    assert (got - ref).abs().max() < 1e-3 * gap.item() + 1e-5, ((got - ref).abs().max(), gap)


def test_each_sample_of_a_training_batch_gets_its_own_step_scales(setup):
    model, obs, twin = setup
    qn = _noise_for(model, obs)
    c = model.config
    steps = c.num_steps
    idx = [2, steps - 1]
    s = torch.tensor([1.0 - i / steps for i in idx])  # the noise fractions of sampler steps 2 and N-1
    t = s if model.T_NOISE == 1.0 else 1.0 - s
    x = torch.randn(2, c.action_horizon, c.action_dim, generator=torch.Generator().manual_seed(6))
    with torch.no_grad(), qn.installed():
        qn.active = True
        got = model.denoise_step(x, t, model._prefix(obs[0]))
        assert qn.noisy is None  # the batch's fractions do not outlive the step
    with torch.no_grad():
        prefix = twin._prefix(obs[0])
        for b, i in enumerate(idx):
            with denoising_step(i, steps):
                ref = twin.denoise_step(x, t, prefix)[b]
            with denoising_step(0 if i else 1, steps):
                other = twin.denoise_step(x, t, prefix)[b]
            assert (got[b] - ref).abs().max() < 1e-3 * (ref - other).abs().max().item() + 1e-5


def test_gradients_reach_the_fp_weights_and_parts_refresh(setup):
    model, obs, _ = setup
    m = copy.deepcopy(model).train()
    qn = CalibratedQuantNoise(m, obs, probability=1.0, seed=0, refresh_every=2)
    name, lin = next(iter(qn.targets.items()))
    c = m.config
    actions = torch.rand(2, c.action_horizon, c.action_dim) * 2 - 1
    with qn.installed():
        assert qn.draw() and qn.refreshes == 1
        before = qn.layers[name].delta.clone()
        loss = m.loss(obs[0], actions)
        loss.backward()
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
        with torch.no_grad():
            lin.weight.add_(0.05 * torch.randn_like(lin.weight))
        qn.draw()
        assert qn.refreshes == 1  # every 2 draws
        qn.draw()
        assert qn.refreshes == 2 and not torch.equal(qn.layers[name].delta, before)
    assert m.training  # refreshing quantizes a copy in eval mode, the model keeps its mode
    assert "forward" not in lin.__dict__ and "denoise_step" not in m.__dict__
    assert set(m.state_dict()) == set(model.state_dict())


def test_bad_settings_are_refused(setup):
    model, obs, _ = setup
    with pytest.raises(ValueError, match="probability"):
        CalibratedQuantNoise(model, obs, probability=1.5)
    with pytest.raises(ValueError, match="refresh_every"):
        CalibratedQuantNoise(model, obs, refresh_every=0)
    with pytest.raises(ValueError, match="observations"):
        CalibratedQuantNoise(model, [])
