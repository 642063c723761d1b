"""Pieces both VLA families share: observation batches, the prefix cache, image
handling, initialisation."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Observation:
    """A model-ready batch. images: float [B, cameras, 3, S, S] in [-1, 1];
    tokens/token_mask: [B, L] instruction tokens; state: float [B, state_dim] in [-1, 1]
    (normalised); image_mask: [B, cameras] (False = camera missing)."""

    images: torch.Tensor
    tokens: torch.Tensor
    token_mask: torch.Tensor
    state: torch.Tensor
    image_mask: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> "Observation":
        return Observation(*(None if t is None else t.to(device) for t in (
            self.images, self.tokens, self.token_mask, self.state, self.image_mask)))


@dataclass
class PrefixCache:
    """Everything the denoising loop needs from the prefix, computed once per inference."""

    mask: torch.Tensor  # [B, P] valid prefix tokens
    keys: list[torch.Tensor] = field(default_factory=list)  # Pi0.5: per layer [B, kv, P, D]
    values: list[torch.Tensor] = field(default_factory=list)
    next_position: torch.Tensor | None = None  # Pi0.5: [B] first suffix position
    features: torch.Tensor | None = None  # GR00T: VL features [B, P, D]
    state_features: torch.Tensor | None = None  # GR00T: [B, 1, D]


def fit_state(state: torch.Tensor, dim: int) -> torch.Tensor:
    """Zero-pad (or reject) a state vector to the model's state/action width."""
    if state.shape[-1] > dim:
        raise ValueError(f"state has {state.shape[-1]} dims, the model takes at most {dim}")
    return F.pad(state, (0, dim - state.shape[-1]))


def image_tokens(vision: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Run the vision tower over every camera: [B, C, 3, S, S] -> [B, C, N, D]."""
    B, C = images.shape[:2]
    feats = vision(images.flatten(0, 1))
    return feats.view(B, C, *feats.shape[1:])


def init_weights(model: nn.Module) -> None:
    """Fan-in scaled init (std 1/sqrt(fan_in)) so that every residual branch of a
    random-init model matters to its output (tests of the quantized path need that)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=m.in_features ** -0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=m.embedding_dim ** -0.5)
