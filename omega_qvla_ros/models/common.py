"""Pieces both VLA families share: observation batches, the prefix cache, image
handling, initialisation."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .flow import euler_sample


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


def vision_tokens(model: nn.Module, layers, images: torch.Tensor) -> torch.Tensor:
    """A family's projected image tokens: `model.vision_in` (patch embeddings of every
    camera), each SigLIP layer, `model.vision_out` — the steps the sequential quantizer
    runs one stage at a time (sequential.vision_stages)."""
    h = model.vision_in(images)
    for layer in layers:
        h = layer(h)
    return model.vision_out(h, images.shape[0])


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


class FlowMatchingVLA(nn.Module):
    """Sampling and training shared by both families. A family defines `embed_prefix`,
    `denoise_step` and `T_NOISE`, the flow time at which x is pure noise (Pi0.5: 1,
    integrating down to 0; GR00T: 0, integrating up to 1). With s the noise fraction,
    x = s·noise + (1 − s)·actions and the velocity target is dx/dt."""

    T_NOISE: float = 1.0

    def _prefix(self, o: Observation) -> PrefixCache:
        return self.embed_prefix(o.images, o.tokens, o.token_mask, o.state, o.image_mask)

    def sample_actions(self, observation: Observation, num_steps: int | None = None,
                       noise: torch.Tensor | None = None) -> torch.Tensor:
        """Action chunk [B, horizon, action_dim] (normalised); deterministic given `noise`.
        The prefix is computed once; every denoising step runs in its step context."""
        prefix = self._prefix(observation)
        if noise is None:
            noise = self.initial_noise(observation.batch_size, observation.images.device)
        return self.sample_from_prefix(prefix, noise, num_steps)

    def initial_noise(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """A fresh draw of the flow's starting point [batch, horizon, action_dim]."""
        c = self.config
        return torch.randn(batch, c.action_horizon, c.action_dim, device=device)

    def sample_from_prefix(self, prefix: PrefixCache, noise: torch.Tensor,
                           num_steps: int | None = None) -> torch.Tensor:
        """The denoising loop from a computed prefix (sample_actions' second half)."""
        return euler_sample(lambda x, t: self.denoise_step(x, t, prefix), noise,
                            num_steps or self.config.num_steps, self.T_NOISE, 1.0 - self.T_NOISE)

    def loss(self, observation: Observation, actions: torch.Tensor, noise: torch.Tensor | None = None,
             s: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
        """Flow-matching MSE at noise fractions s ~ Beta(1.5, 1) (more weight on noisy);
        reduction "none" gives the per-element loss [B, H, A] (LeRobot's PI05Pytorch.forward)."""
        B = actions.shape[0]
        noise = torch.randn_like(actions) if noise is None else noise
        if s is None:
            s = torch.distributions.Beta(1.5, 1.0).sample((B,)).to(actions.device) * 0.999 + 0.001
        x_t = s[:, None, None] * noise + (1 - s[:, None, None]) * actions
        t = s if self.T_NOISE == 1.0 else 1.0 - s
        target = (noise - actions) if self.T_NOISE == 1.0 else (actions - noise)
        return F.mse_loss(self.denoise_step(x_t, t, self._prefix(observation)), target, reduction=reduction)
