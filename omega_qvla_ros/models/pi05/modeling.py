"""Pi0.5 VLA: SigLIP vision tower + Gemma trunk over the prefix (images, prompt), and a
narrower Gemma action expert that attends to the cached prefix keys/values and its own
action tokens, conditioned on the flow time by adaptive RMSNorm. Flow matching, Euler
steps from t = 1 (noise) to t = 0. Parameter names follow openpi's PyTorch model /
LeRobot `pi05`, and with `state_encoding="prompt"` the computation is LeRobot's
`PI05Pytorch` (tested against it in test_peer_lerobot.py).

State, per `config.state_encoding`: "prompt" (LeRobot / openpi) — the processor writes
the 256-bin discretised state into the prompt text and the network sees none;
"tokens" (our small models) — each normalised state value becomes one of 256 bin
tokens appended after the instruction.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..common import FlowMatchingVLA, PrefixCache, fit_state, init_weights, vision_tokens
from ..configs import LMConfig
from ..layers import AdaptiveRMSNorm, Attention, DecoderLayer, GatedMLP, RMSNorm, VisionTower, sincos_embedding
from ..tokenizer import STATE_OFFSET
from .config import Pi05Config


class GemmaModel(nn.Module):
    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab, c.width)
        self.layers = nn.ModuleList([
            DecoderLayer(c.width, c.mlp, c.heads, c.kv_heads, c.head_dim, c.rope_theta,
                         act="gelu_tanh", qk_norm=False, gemma_norm=True) for _ in range(c.layers)])
        self.norm = RMSNorm(c.width)


class MultiModalProjector(nn.Module):
    def __init__(self, vis: int, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(vis, width)

    def forward(self, x):
        return self.linear(x)


class PaliGemmaInner(nn.Module):
    def __init__(self, cfg: Pi05Config) -> None:
        super().__init__()
        v = cfg.vision
        self.vision_tower = VisionTower(dim=v.width, layers=v.layers, heads=v.heads, mlp=v.mlp,
                                        patch=v.patch, image_size=v.image_size)
        self.multi_modal_projector = MultiModalProjector(v.width, cfg.trunk.width)
        self.language_model = GemmaModel(cfg.trunk)


class PaliGemma(nn.Module):
    def __init__(self, cfg: Pi05Config) -> None:
        super().__init__()
        self.model = PaliGemmaInner(cfg)


class ExpertLayer(nn.Module):
    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.input_layernorm = AdaptiveRMSNorm(c.width, c.width)
        self.self_attn = Attention(c.width, c.heads, c.kv_heads, c.head_dim, c.rope_theta)
        self.post_attention_layernorm = AdaptiveRMSNorm(c.width, c.width)
        self.mlp = GatedMLP(c.width, c.mlp, "gelu_tanh")


class ExpertModel(nn.Module):
    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([ExpertLayer(c) for _ in range(c.layers)])
        self.norm = AdaptiveRMSNorm(c.width, c.width)


class GemmaExpert(nn.Module):
    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.model = ExpertModel(c)


class PaliGemmaWithExpert(nn.Module):
    def __init__(self, cfg: Pi05Config) -> None:
        super().__init__()
        self.paligemma = PaliGemma(cfg)
        self.gemma_expert = GemmaExpert(cfg.expert)


class Pi05Model(FlowMatchingVLA):
    T_NOISE = 1.0  # noise at t = 1, Euler steps down to t = 0

    def __init__(self, cfg: Pi05Config) -> None:
        super().__init__()
        self.config = cfg
        we = cfg.expert.width
        self.paligemma_with_expert = PaliGemmaWithExpert(cfg)
        self.action_in_proj = nn.Linear(cfg.action_dim, we)
        self.action_out_proj = nn.Linear(we, cfg.action_dim)
        self.time_mlp_in = nn.Linear(we, we)
        self.time_mlp_out = nn.Linear(we, we)
        if not any(p.is_meta for p in self.parameters()):
            init_weights(self)
            self._init_adaptive()

    def _init_adaptive(self) -> None:
        """Adaptive norms start as plain RMSNorm with an open residual gate (gate = 1)."""
        for m in self.modules():
            if isinstance(m, AdaptiveRMSNorm):
                d = m.dense.out_features // 3
                nn.init.normal_(m.dense.weight, std=0.2 * m.dense.in_features ** -0.5)
                with torch.no_grad():
                    m.dense.bias.zero_()
                    m.dense.bias[2 * d:] = 1.0

    # ---------------------------------------------------------------- prefix
    @property
    def _pg(self) -> PaliGemmaInner:
        return self.paligemma_with_expert.paligemma.model

    def state_tokens(self, state: torch.Tensor) -> torch.Tensor:
        bins = self.config.state_bins
        s = fit_state(state, self.config.action_dim).clamp(-1, 1)
        return ((s + 1) / 2 * bins).long().clamp(0, bins - 1) + STATE_OFFSET

    # The prefix in named steps (embed_prefix runs them in order; the sequential quantizer
    # runs them block by block over all calibration batches, so both compute the same).
    def vision_in(self, images: torch.Tensor) -> torch.Tensor:
        """SigLIP patch + position embeddings of every camera image: [B·C, N, Dv]."""
        return self._pg.vision_tower.vision_model.embeddings(images.flatten(0, 1))

    def vision_out(self, h: torch.Tensor, batch: int) -> torch.Tensor:
        """SigLIP's last layer output → projected image tokens [B, C, N, W]."""
        pg = self._pg
        f = pg.vision_tower.vision_model.post_layernorm(h)
        return pg.multi_modal_projector(f.view(batch, -1, *f.shape[1:]))

    def prefix_in(self, img: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor,
                  state: torch.Tensor, image_mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(trunk input [B, P, W], valid mask [B, P], positions [B, P]) of the prefix:
        image tokens, scaled prompt embeddings (and state tokens in "tokens" mode)."""
        lm = self._pg.language_model
        B, C, N = img.shape[:3]
        img_mask = (torch.ones(B, C, dtype=torch.bool, device=img.device) if image_mask is None
                    else image_mask.bool())
        scale = math.sqrt(lm.embed_tokens.embedding_dim)
        parts = [img.reshape(B, C * N, -1), lm.embed_tokens(tokens) * scale]
        masks = [img_mask.repeat_interleave(N, dim=1), token_mask.bool()]
        if self.config.state_encoding == "tokens":
            st = self.state_tokens(state)
            parts.append(lm.embed_tokens(st) * scale)
            masks.append(torch.ones_like(st, dtype=torch.bool))
        mask = torch.cat(masks, dim=1)
        return torch.cat(parts, dim=1), mask, (mask.long().cumsum(1) - 1).clamp_min(0)

    def embed_prefix(self, images: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor,
                     state: torch.Tensor, image_mask: torch.Tensor | None = None) -> PrefixCache:
        pg = self._pg
        img = vision_tokens(self, pg.vision_tower.vision_model.encoder.layers, images)
        x, mask, positions = self.prefix_in(img, tokens, token_mask, state, image_mask)
        keys, values = [], []
        for layer in pg.language_model.layers:
            x, (k, v) = layer(x, positions, key_mask=mask)
            keys.append(k)
            values.append(v)
        return PrefixCache(mask=mask, keys=keys, values=values, next_position=mask.sum(1))

    # ---------------------------------------------------------------- suffix
    def time_condition(self, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """adaRMS conditioning from the flow time, in the compute dtype (the weights may be
        held at half precision, float_storage.py)."""
        e = sincos_embedding(t, self.config.expert.width).to(dtype)
        return F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(e))))

    def denoise_step(self, x_t: torch.Tensor, t: torch.Tensor, prefix: PrefixCache) -> torch.Tensor:
        """Velocity v(x_t, t) for action tokens x_t [B, H, A]."""
        expert = self.paligemma_with_expert.gemma_expert.model
        B, H, _ = x_t.shape
        cond = self.time_condition(t, x_t.dtype)
        h = self.action_in_proj(x_t)
        positions = prefix.next_position[:, None] + torch.arange(H, device=x_t.device)[None]
        key_mask = torch.cat([prefix.mask, torch.ones(B, H, dtype=torch.bool, device=x_t.device)], 1)
        for i, layer in enumerate(expert.layers):
            hn, gate = layer.input_layernorm(h, cond)
            a, _ = layer.self_attn(hn, positions, key_mask, prefix_kv=(prefix.keys[i], prefix.values[i]))
            h = h + gate * a
            hn, gate = layer.post_attention_layernorm(h, cond)
            h = h + gate * layer.mlp(hn)
        hn, _ = expert.norm(h, cond)
        return self.action_out_proj(hn)
