"""Quantizing a VLA: calibration batches run the whole inference (prefix once, every
denoising step under its step context), so backbone layers see prefix tokens and
action-head layers see per-step inputs."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from omega_qvla_ros.quant.quantize import quantize
from omega_qvla_ros.quant.recipes import Recipe, get_recipe

from .common import Observation
from .registry import family_of
from .tokenizer import ByteTokenizer

INSTRUCTIONS = ["transfer the cube to the other arm", "insert the peg into the socket"]


def synthetic_observations(cfg, n: int, batch: int = 2, seed: int = 0) -> list[Observation]:
    """Random but well-formed observations (images in [-1, 1], real instruction tokens,
    state in [-1, 1]) for random-init models and tests."""
    g = torch.Generator().manual_seed(seed)
    tok = ByteTokenizer()
    out = []
    for i in range(n):
        S = cfg.vision.image_size
        images = torch.rand(batch, cfg.cameras, 3, S, S, generator=g) * 2 - 1
        texts = [INSTRUCTIONS[(i + b) % len(INSTRUCTIONS)] for b in range(batch)]
        tokens, mask = tok.encode_batch(texts, cfg.max_tokens)
        state = torch.rand(batch, 14, generator=g) * 2 - 1
        out.append(Observation(images, tokens, mask, state))
    return out


def synthetic_batches(processor, n: int, batch: int = 2, seed: int = 0) -> list[Observation]:
    """Random raw observations through a model's processor: uint8 images of every camera
    at the model's image size, joint positions spread over the normalisation range,
    the two instructions — well-formed input for any model (its own prompt format and
    tokenizer), for calibrating random-init or imported models without recorded data."""
    import numpy as np

    rng = np.random.default_rng(seed)
    S = processor.config.image_size
    out = []
    for i in range(n):
        frames = [{c: rng.integers(0, 256, (S, S, 3), dtype=np.uint8) for c in processor.cameras}
                  for _ in range(batch)]
        z = torch.from_numpy(rng.uniform(-0.9, 0.9, (batch, processor.dof)))
        q = processor.config.state_norm.unnormalize(z).double().numpy()
        texts = [INSTRUCTIONS[(i + b) % len(INSTRUCTIONS)] for b in range(batch)]
        out.append(processor.batch(frames, texts, q))
    return out


def calibration_forward(seed: int = 0):
    """forward(model, observation) for quantize(): a full sampling run with fixed noise."""
    def fwd(model: nn.Module, obs: Observation):
        c = model.config
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(obs.batch_size, c.action_horizon, c.action_dim, generator=g)
        return model.sample_actions(obs, noise=noise.to(obs.images.device))
    return fwd


def scoped_recipe(model: nn.Module, recipe: "str | Recipe") -> Recipe:
    """`recipe` applied to the modules the model's family quantizes."""
    sc = family_of(model).scopes
    return get_recipe(recipe).with_scopes(backbone=list(sc.backbone), action_head=list(sc.action_head))


def quantize_model(model: nn.Module, recipe: "str | Recipe", observations: Iterable[Observation],
                   progress: bool = False, seed: int = 0, **kw) -> nn.Module:
    """Quantize a VLA in place with `recipe` on its family's scopes, calibrated by full
    sampling runs over `observations`."""
    return quantize(model, scoped_recipe(model, recipe), list(observations), forward=calibration_forward(seed),
                    progress=progress, seed=seed, **kw)
