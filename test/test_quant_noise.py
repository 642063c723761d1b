"""Quantization-noise fine-tuning (models/quant_noise.py): the rounding it puts in the
training forward pass, its straight-through gradient, and its install/remove life cycle
on a real model."""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from omega_qvla_ros.models import build_model  # noqa: E402
from omega_qvla_ros.models.calibrate import synthetic_observations  # noqa: E402
from omega_qvla_ros.models.quant_noise import BLOCK, QuantNoise, fake_w4a4_linear  # noqa: E402
from omega_qvla_ros.quant.hadamard import hadamard_matrix  # noqa: E402


def _on_grid(rows: int, k: int, seed: int) -> torch.Tensor:
    """Rows whose block-Hadamard rotation is exactly int4 codes × a per-row scale with a
    code of 7 in each row (what the fake quantizer keeps unchanged)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-7, 8, (rows, k), generator=g).double()
    codes[:, 0] = 7
    scale = torch.rand(rows, 1, generator=g, dtype=torch.float64) + 0.5
    h = hadamard_matrix(BLOCK, dtype=torch.float64)
    return ((codes * scale).reshape(rows, k // BLOCK, BLOCK) @ h.T).reshape(rows, k)


def test_values_on_the_rotated_int4_grid_pass_unchanged():
    """Inputs and weights whose rotations are int4 codes come out as the exact product:
    the rotation of x and of W match (x·Wᵀ is kept) and the scales are absmax/7."""
    x, w = _on_grid(5, 128, 0), _on_grid(3, 128, 1)
    b = torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(fake_w4a4_linear(x, w, b), F.linear(x, w, b), rtol=1e-6, atol=1e-6)  # weight scales in float32


def test_rounding_error_and_straight_through_gradient():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 7, 128, generator=g, requires_grad=True)
    w = torch.randn(32, 128, generator=g, requires_grad=True)
    y = fake_w4a4_linear(x, w, None)
    ref = F.linear(x, w)
    rel = float(((y - ref) ** 2).mean().detach() / (ref ** 2).mean().detach())
    assert 1e-4 < rel < 0.1  # rounded, not destroyed
    gy = torch.randn(y.shape, generator=g)
    (y * gy).sum().backward()
    # straight-through: the gradient of a linear in the rounded (rotated) operands, rotated back
    h = hadamard_matrix(BLOCK)
    rot = lambda t: (t.reshape(*t.shape[:-1], -1, BLOCK) @ h).reshape(t.shape)  # noqa: E731
    with torch.no_grad():
        xr = rot(x)
        sx = xr.abs().amax(dim=(1, 2), keepdim=True) / 7
        xq = torch.clamp(torch.round(xr / sx), -8, 7) * sx
        # d/dW of xq·Q(W·H)ᵀ through the straight-through rounding: (gyᵀ·xq)·Hᵀ
        want_w = (torch.einsum("btn,btk->nk", gy, xq).reshape(32, -1, BLOCK) @ h.T).reshape(32, 128)
    assert torch.isfinite(w.grad).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(w.grad, want_w, rtol=1e-4, atol=1e-4)


def test_quant_noise_on_a_model_is_switchable_and_leaves_no_trace():
    model = build_model("pi05", "tiny", seed=0).eval()
    obs = synthetic_observations(model.config, 1, batch=2, seed=0)[0]
    noise = torch.randn(2, model.config.action_horizon, model.config.action_dim,
                        generator=torch.Generator().manual_seed(0))
    keys = list(model.state_dict())
    with torch.no_grad():
        ref = model.sample_actions(obs, noise=noise)
    qn = QuantNoise(model, probability=0.5, seed=0)
    names = set(qn.targets)
    assert names and all("vision" not in n for n in names)  # the W4A4 scope: trunk and action expert
    with qn.installed(), torch.no_grad():
        qn.active = False
        off = model.sample_actions(obs, noise=noise)
        qn.active = True
        on = model.sample_actions(obs, noise=noise)
    torch.testing.assert_close(off, ref, rtol=0, atol=0)
    assert not torch.allclose(on, ref, atol=1e-4)
    assert all("forward" not in m.__dict__ for m in qn.targets.values()) and not qn.active
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model.sample_actions(obs, noise=noise), ref, rtol=0, atol=0)
    # the draw: its share of batches, reproducible from the seed
    draws = [qn.draw() for _ in range(400)]
    assert 0.4 < sum(draws) / 400 < 0.6
    qn.reseed(0)
    assert [qn.draw() for _ in range(400)] == draws
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        QuantNoise(model, probability=1.5)


def test_train_with_quant_noise_records_it(tmp_path, capsys):
    """`omega-qvla train --quant-noise 1`: every step trains through the rounding (the loss
    differs from a run without it), the checkpoint and the exported pack record it."""
    import json

    import numpy as np

    from omega_qvla_ros.sim.aloha import AlohaSim
    from omega_qvla_ros.sim.record import record_episode, write_shard
    from omega_qvla_ros.tools.cli import main

    with AlohaSim("transfer_cube", image_size=48, cameras=("cam_high", "cam_left_wrist")) as sim:
        shard = write_shard([record_episode(sim, seed=5, steps=30)], tmp_path / "shard.safetensors")
    base = ["train", "--family", "gr00t", "--size", "tiny", "--data", str(shard), "--steps", "3", "--batch", "2",
            "--include-failed", "--json"]
    assert main(base + ["--out", str(tmp_path / "plain")]) == 0
    assert main(base + ["--out", str(tmp_path / "qn"), "--quant-noise", "1", "--export", str(tmp_path / "fp")]) == 0
    plain = json.loads((tmp_path / "plain" / "checkpoint" / "state.json").read_text())
    st = json.loads((tmp_path / "qn" / "checkpoint" / "state.json").read_text())
    assert st["quant_noise_steps"] == 3 and st["quant_noise"]["probability"] == 1.0
    assert "quant_noise" not in plain
    man = json.loads((tmp_path / "fp" / "manifest.json").read_text())
    assert man["recipe"]["name"] == "fp16"
    assert man["extra"]["training"]["quant_noise"] == {**st["quant_noise"], "steps": 3}
    from safetensors.torch import load_file
    a = load_file(str(tmp_path / "plain" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "qn" / "checkpoint" / "model.safetensors"))
    assert any(not np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)  # the noise changed the training
    # the recipe's own calibrated forward (calibrated_noise.py), quantized again every 2 batches
    calibrated = ["--quant-noise", "1", "--quant-noise-from", "calibrated", "--quant-noise-refresh", "2",
                  "--quant-noise-frames", "6"]
    assert main(base + ["--out", str(tmp_path / "cal")] + calibrated) == 0
    st = json.loads((tmp_path / "cal" / "checkpoint" / "state.json").read_text())
    assert st["quant_noise_steps"] == 3
    assert st["quant_noise"] | {"layers": 0} == {"probability": 1.0, "layers": 0, "source": "calibrated",
                                                 "refresh_every": 2, "calibration_frames": 6}
    c = load_file(str(tmp_path / "cal" / "checkpoint" / "model.safetensors"))
    assert any(not np.array_equal(a[k].numpy(), c[k].numpy()) for k in a)
    assert any(not np.array_equal(b[k].numpy(), c[k].numpy()) for k in a)  # not the Hadamard noise
    capsys.readouterr()
    for bad in (["--quant-noise", "2"], calibrated[:-1] + ["0"], calibrated[2:]):
        assert main(base + ["--out", str(tmp_path / "bad")] + bad) != 0
        err = capsys.readouterr().err
        assert "--quant-noise" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
