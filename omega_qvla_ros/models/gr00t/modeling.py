"""GR00T-N1.5-style VLA: Eagle-style VLM (SigLIP tower, 2×2 pixel shuffle, MLP projector,
Qwen3 trunk truncated to a few layers whose last hidden states are the VL features)
and a DiT action head: blocks alternate cross-attention to the VL features (even
blocks) and self-attention (odd blocks), AdaLN on the timestep; sequence = 1 state
token + future tokens + action tokens. Flow matching with t: 0 (noise) → 1, default 4
Euler steps, horizon 16. Parameter names follow Isaac-GR00T N1.5.

Left out of N1.5: the small `vl_self_attention` transformer over VL features and
multi-embodiment routing (one embodiment id, 0, is used; the weights keep the
per-embodiment layout so a real checkpoint maps by name).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..common import FlowMatchingVLA, PrefixCache, fit_state, image_tokens, init_weights
from ..configs import LMConfig
from ..layers import AdaLayerNorm, DecoderLayer, FeedForward, VisionTower
from .config import DiTConfig, Gr00tConfig

TIME_BUCKETS = 1000


class Qwen3Model(nn.Module):
    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab, c.width)
        self.layers = nn.ModuleList([
            DecoderLayer(c.width, c.mlp, c.heads, c.kv_heads, c.head_dim, c.rope_theta,
                         act="silu", qk_norm=True, gemma_norm=False) for _ in range(c.layers)])


class LanguageModel(nn.Module):
    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.model = Qwen3Model(c)


class EagleModel(nn.Module):
    def __init__(self, cfg: Gr00tConfig) -> None:
        super().__init__()
        v, w = cfg.vision, cfg.llm.width
        self.vision_model = VisionTower(dim=v.width, layers=v.layers, heads=v.heads, mlp=v.mlp,
                                        patch=v.patch, image_size=v.image_size)
        self.mlp1 = nn.Sequential(nn.LayerNorm(4 * v.width), nn.Linear(4 * v.width, w), nn.GELU(),
                                  nn.Linear(w, w))
        self.language_model = LanguageModel(cfg.llm)


class Backbone(nn.Module):
    def __init__(self, cfg: Gr00tConfig) -> None:
        super().__init__()
        self.eagle_model = EagleModel(cfg)


class CategorySpecificLinear(nn.Module):
    """One weight matrix per embodiment: W [E, in, out], b [E, out]."""

    def __init__(self, categories: int, n_in: int, n_out: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(categories, n_in, n_out) * n_in ** -0.5)
        self.b = nn.Parameter(torch.zeros(categories, n_out))

    def forward(self, x: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, self.W[cat]) + self.b[cat].unsqueeze(1)


class CategorySpecificMLP(nn.Module):
    def __init__(self, categories: int, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.layer1 = CategorySpecificLinear(categories, n_in, hidden)
        self.layer2 = CategorySpecificLinear(categories, hidden, n_out)

    def forward(self, x, cat):
        return self.layer2(F.relu(self.layer1(x, cat)), cat)


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sinusoidal encoding of (integer) timesteps: [..., dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device).float() / half)
    ang = t.float()[..., None] * freqs
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)


class MultiEmbodimentActionEncoder(nn.Module):
    def __init__(self, categories: int, action_dim: int, width: int) -> None:
        super().__init__()
        self.W1 = CategorySpecificLinear(categories, action_dim, width)
        self.W2 = CategorySpecificLinear(categories, 2 * width, width)
        self.W3 = CategorySpecificLinear(categories, width, width)
        self.width = width

    def forward(self, actions: torch.Tensor, t_disc: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        B, H, _ = actions.shape
        a = self.W1(actions, cat)
        tau = sinusoidal(t_disc[:, None].expand(B, H), self.width).to(a.dtype)
        x = F.silu(self.W2(torch.cat([a, tau], dim=-1), cat))
        return self.W3(x, cat)


class DiTAttention(nn.Module):
    """diffusers-style attention: to_q, to_k, to_v, to_out.0 (no RoPE)."""

    def __init__(self, dim: int, heads: int, head_dim: int, kv_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(kv_dim, inner)
        self.to_v = nn.Linear(kv_dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        ctx = x if context is None else context
        sh = lambda t: t.view(B, t.shape[1], self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        mask = None if context_mask is None else context_mask[:, None, None, :]
        o = F.scaled_dot_product_attention(sh(self.to_q(x)), sh(self.to_k(ctx)), sh(self.to_v(ctx)),
                                           attn_mask=mask)
        return self.to_out[0](o.transpose(1, 2).reshape(B, T, -1))


class DiTBlock(nn.Module):
    def __init__(self, c: DiTConfig, cross: bool) -> None:
        super().__init__()
        self.cross = cross
        self.norm1 = AdaLayerNorm(c.dim, c.dim)
        self.attn1 = DiTAttention(c.dim, c.heads, c.head_dim, c.cross_dim if cross else c.dim)
        self.norm3 = nn.LayerNorm(c.dim, eps=1e-5)
        self.ff = FeedForward(c.dim, c.ff)

    def forward(self, x, temb, context, context_mask):
        h = self.norm1(x, temb)
        x = x + (self.attn1(h, context, context_mask) if self.cross else self.attn1(h))
        return x + self.ff(self.norm3(x))


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.linear_1 = nn.Linear(freq_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t_disc):
        return self.linear_2(F.silu(self.linear_1(sinusoidal(t_disc, self.freq_dim))))


class TimestepEncoder(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(dim)

    def forward(self, t_disc):
        return self.timestep_embedder(t_disc)


class DiT(nn.Module):
    def __init__(self, c: DiTConfig, out_dim: int) -> None:
        super().__init__()
        self.timestep_encoder = TimestepEncoder(c.dim)
        self.transformer_blocks = nn.ModuleList([DiTBlock(c, cross=i % 2 == 0) for i in range(c.blocks)])
        self.norm_out = nn.LayerNorm(c.dim, eps=1e-6, elementwise_affine=False)
        self.proj_out_1 = nn.Linear(c.dim, 2 * c.dim)
        self.proj_out_2 = nn.Linear(c.dim, out_dim)

    def forward(self, x, t_disc, context, context_mask):
        temb = self.timestep_encoder(t_disc)
        for block in self.transformer_blocks:
            x = block(x, temb, context, context_mask)
        shift, scale = self.proj_out_1(F.silu(temb)).unsqueeze(1).chunk(2, dim=-1)
        return self.proj_out_2(self.norm_out(x) * (1 + scale) + shift)


class ActionHead(nn.Module):
    def __init__(self, cfg: Gr00tConfig) -> None:
        super().__init__()
        d = cfg.dit.dim
        E = cfg.num_embodiments
        self.vlln = nn.LayerNorm(cfg.dit.cross_dim)
        self.state_encoder = CategorySpecificMLP(E, cfg.state_dim, cfg.hidden, d)
        self.action_encoder = MultiEmbodimentActionEncoder(E, cfg.action_dim, d)
        self.action_decoder = CategorySpecificMLP(E, cfg.hidden, cfg.hidden, cfg.action_dim)
        self.future_tokens = nn.Embedding(cfg.future_tokens, d)
        self.position_embedding = nn.Embedding(cfg.max_seq_len, d)
        self.model = DiT(cfg.dit, cfg.hidden)


class Gr00tModel(FlowMatchingVLA):
    T_NOISE = 0.0  # noise at t = 0, Euler steps up to t = 1

    def __init__(self, cfg: Gr00tConfig) -> None:
        super().__init__()
        if cfg.llm.width != cfg.dit.cross_dim:
            raise ValueError("DiT cross_dim must equal the VLM width (VL features)")
        self.config = cfg
        self.backbone = Backbone(cfg)
        self.action_head = ActionHead(cfg)
        if not any(p.is_meta for p in self.parameters()):
            init_weights(self)

    def _vision_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """SigLIP patches, 2×2 pixel shuffle (4× fewer tokens), MLP projector."""
        em = self.backbone.eagle_model
        f = image_tokens(em.vision_model, images)  # [B, C, N, Dv]
        B, C, N, D = f.shape
        s = int(math.isqrt(N))
        f = f.view(B * C, s // 2, 2, s // 2, 2, D).permute(0, 1, 3, 2, 4, 5).reshape(B, C * (s // 2) ** 2, 4 * D)
        return em.mlp1(f)

    def embed_prefix(self, images: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor,
                     state: torch.Tensor, image_mask: torch.Tensor | None = None) -> PrefixCache:
        lm = self.backbone.eagle_model.language_model.model
        B, C = images.shape[:2]
        img = self._vision_tokens(images)
        per_cam = img.shape[1] // C
        img_mask = (torch.ones(B, C, dtype=torch.bool, device=images.device) if image_mask is None
                    else image_mask.bool())
        x = torch.cat([img, lm.embed_tokens(tokens)], dim=1)
        mask = torch.cat([img_mask.repeat_interleave(per_cam, dim=1), token_mask.bool()], dim=1)
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)
        for layer in lm.layers:
            x, _ = layer(x, positions, key_mask=mask, causal=True)
        ah = self.action_head
        cat = torch.zeros(B, dtype=torch.long, device=images.device)
        st = ah.state_encoder(fit_state(state, self.config.state_dim)[:, None], cat)
        return PrefixCache(mask=mask, features=ah.vlln(x), state_features=st)

    def denoise_step(self, x_t: torch.Tensor, t: torch.Tensor, prefix: PrefixCache) -> torch.Tensor:
        ah = self.action_head
        B, H, _ = x_t.shape
        cat = torch.zeros(B, dtype=torch.long, device=x_t.device)
        t_disc = (t * TIME_BUCKETS).long().clamp(0, TIME_BUCKETS - 1)
        a = ah.action_encoder(x_t, t_disc, cat) + ah.position_embedding.weight[:H][None]
        fut = ah.future_tokens.weight[None].expand(B, -1, -1)
        seq = torch.cat([prefix.state_features, fut, a], dim=1)
        out = ah.model(seq, t_disc, prefix.features, prefix.mask)
        return ah.action_decoder(out[:, -H:], cat)
