"""GR00T VLA: Eagle-style VLM (SigLIP tower, projector, Qwen3 trunk truncated to a few
layers whose last hidden states are the VL features) and a DiT action head: blocks
alternate cross-attention to the VL features (even blocks) and self-attention (odd
blocks), AdaLN on the timestep; sequence = 1 state token + future tokens + action
tokens. Flow matching with t: 0 (noise) → 1, default 4 Euler steps, horizon 16.
Parameter names follow Isaac-GR00T N1.5, so real checkpoints map by name.

`config.variant` picks our small model ("ours") or GR00T N1.5 itself ("n15"); the
differences are listed in config.py and marked where they act below. The embodiment
(row of the per-embodiment encoders/decoder) is `config.embodiment_id`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..common import FlowMatchingVLA, Observation, PrefixCache, fit_state, init_weights, vision_tokens
from ..configs import LMConfig
from ..layers import AdaLayerNorm, DecoderLayer, FeedForward, RMSNorm, VisionTower
from .config import DiTConfig, Gr00tConfig

TIME_BUCKETS = 1000
NOISE_S = 0.999  # N1.5: t = (s − Beta(1.5, 1)) / s, so t ∈ [−0.001, 1]


class Qwen3Model(nn.Module):
    """Qwen3 decoder; `final_norm` (N1.5) keeps `model.norm`, which N1.5's VL features
    pass through (its hidden_states[select_layer] is the normed last kept layer)."""

    def __init__(self, c: LMConfig, final_norm: bool = False) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab, c.width)
        self.layers = nn.ModuleList([
            DecoderLayer(c.width, c.mlp, c.heads, c.kv_heads, c.head_dim, c.rope_theta,
                         act="silu", qk_norm=True, gemma_norm=False) for _ in range(c.layers)])
        if final_norm:
            self.norm = RMSNorm(c.width, eps=1e-6, offset=False)


class LanguageModel(nn.Module):
    def __init__(self, c: LMConfig, final_norm: bool = False) -> None:
        super().__init__()
        self.model = Qwen3Model(c, final_norm)


class EagleModel(nn.Module):
    def __init__(self, cfg: Gr00tConfig) -> None:
        super().__init__()
        v, w = cfg.vision, cfg.llm.width
        self.vision_model = VisionTower(dim=v.width, layers=v.layers, heads=v.heads, mlp=v.mlp,
                                        patch=v.patch, image_size=v.image_size)
        if cfg.n15:  # N1.5's Eagle: no pixel shuffle, one Linear (mlp_connector_layers 1)
            self.mlp1 = nn.Sequential(nn.Linear(v.width, w))
        else:
            self.mlp1 = nn.Sequential(nn.LayerNorm(4 * v.width), nn.Linear(4 * v.width, w), nn.GELU(),
                                      nn.Linear(w, w))
        self.language_model = LanguageModel(cfg.llm, final_norm=cfg.n15)


class Backbone(nn.Module):
    def __init__(self, cfg: Gr00tConfig) -> None:
        super().__init__()
        self.eagle_model = EagleModel(cfg)


class CategorySpecificLinear(nn.Module):
    """One weight matrix per embodiment: W [E, in, out], b [E, out]. The weights may be
    held at half precision (quant.float_storage: N1.5's 32 embodiment slots are 0.6 GiB
    in fp16); only the slices an inference uses are upcast."""

    HALF_STORAGE = True  # forward computes in the input's dtype whatever W's dtype

    def __init__(self, categories: int, n_in: int, n_out: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(categories, n_in, n_out) * n_in ** -0.5)
        self.b = nn.Parameter(torch.zeros(categories, n_out))

    def forward(self, x: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, self.W[cat].to(x.dtype)) + self.b[cat].to(x.dtype).unsqueeze(1)


class CategorySpecificMLP(nn.Module):
    def __init__(self, categories: int, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.layer1 = CategorySpecificLinear(categories, n_in, hidden)
        self.layer2 = CategorySpecificLinear(categories, hidden, n_out)

    def forward(self, x, cat):
        return self.layer2(F.relu(self.layer1(x, cat)), cat)


def sinusoidal(t: torch.Tensor, dim: int, shift: int = 0, cos_first: bool = False,
               rate_first: bool = False) -> torch.Tensor:
    """Transformer-style sinusoidal encoding of (integer) timesteps: [..., dim], frequencies
    10000^(−k / (dim/2 − shift)). The options reproduce N1.5's two encoders to the last bit:
    diffusers' Timesteps(flip_sin_to_cos, downscale_freq_shift=1) is `shift=1,
    cos_first=True`; its action encoder forms the exponent as −k·(ln 10⁴ / half)
    (`rate_first`, which rounds differently from ours at large widths)."""
    half = dim // 2
    k = torch.arange(half, device=t.device).float()
    if rate_first:
        expo = -k * (torch.log(torch.tensor(10000.0, device=t.device)) / (half - shift))
    else:
        expo = -math.log(10000.0) * k / (half - shift)
    ang = t.float()[..., None] * torch.exp(expo)
    parts = [torch.cos(ang), torch.sin(ang)] if cos_first else [torch.sin(ang), torch.cos(ang)]
    return torch.cat(parts, dim=-1)


class MultiEmbodimentActionEncoder(nn.Module):
    def __init__(self, categories: int, action_dim: int, width: int, n15: bool = False) -> None:
        super().__init__()
        self.W1 = CategorySpecificLinear(categories, action_dim, width)
        self.W2 = CategorySpecificLinear(categories, 2 * width, width)
        self.W3 = CategorySpecificLinear(categories, width, width)
        self.width, self.n15 = width, n15

    def forward(self, actions: torch.Tensor, t_disc: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        B, H, _ = actions.shape
        a = self.W1(actions, cat)
        tau = sinusoidal(t_disc[:, None].expand(B, H), self.width, rate_first=self.n15).to(a.dtype)
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
    """AdaLN attention block; N1.5's `norm3` has no affine (no keys in its checkpoints)."""

    def __init__(self, c: DiTConfig, cross: bool, norm3_affine: bool = True) -> None:
        super().__init__()
        self.cross = cross
        self.norm1 = AdaLayerNorm(c.dim, c.dim)
        self.attn1 = DiTAttention(c.dim, c.heads, c.head_dim, c.cross_dim if cross else c.dim)
        self.norm3 = nn.LayerNorm(c.dim, eps=1e-5, elementwise_affine=norm3_affine)
        self.ff = FeedForward(c.dim, c.ff)

    def forward(self, x, temb, context, context_mask):
        h = self.norm1(x, temb)
        x = x + (self.attn1(h, context, context_mask) if self.cross else self.attn1(h))
        return x + self.ff(self.norm3(x))


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256, n15: bool = False) -> None:
        super().__init__()
        self.freq_dim, self.n15 = freq_dim, n15
        self.linear_1 = nn.Linear(freq_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t_disc):
        f = (sinusoidal(t_disc, self.freq_dim, shift=1, cos_first=True) if self.n15
             else sinusoidal(t_disc, self.freq_dim))
        return self.linear_2(F.silu(self.linear_1(f)))


class TimestepEncoder(nn.Module):
    def __init__(self, dim: int, n15: bool = False) -> None:
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(dim, n15=n15)

    def forward(self, t_disc):
        return self.timestep_embedder(t_disc)


class DiT(nn.Module):
    def __init__(self, c: DiTConfig, out_dim: int, n15: bool = False) -> None:
        super().__init__()
        self.timestep_encoder = TimestepEncoder(c.dim, n15=n15)
        self.transformer_blocks = nn.ModuleList([DiTBlock(c, cross=i % 2 == 0, norm3_affine=not n15)
                                                 for i in range(c.blocks)])
        self.norm_out = nn.LayerNorm(c.dim, eps=1e-6, elementwise_affine=False)
        self.proj_out_1 = nn.Linear(c.dim, 2 * c.dim)
        self.proj_out_2 = nn.Linear(c.dim, out_dim)

    def forward(self, x, t_disc, context, context_mask):
        temb = self.timestep_encoder(t_disc)
        for block in self.transformer_blocks:
            x = block(x, temb, context, context_mask)
        shift, scale = self.proj_out_1(F.silu(temb)).unsqueeze(1).chunk(2, dim=-1)
        return self.proj_out_2(self.norm_out(x) * (1 + scale) + shift)


class VLSelfAttentionBlock(nn.Module):
    """N1.5's `vl_self_attention` block: pre-LayerNorm (affine, eps 1e-5) self-attention
    with biases and a GELU-tanh feed-forward (×4), no mask — pads are attended."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = DiTAttention(dim, heads, dim // heads, dim)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        return x + self.ff(self.norm3(x))


class VLSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, blocks: int) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList([VLSelfAttentionBlock(dim, heads) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.transformer_blocks:
            x = block(x)
        return x


class ActionHead(nn.Module):
    def __init__(self, cfg: Gr00tConfig) -> None:
        super().__init__()
        d = cfg.dit.dim
        E = cfg.num_embodiments
        self.vlln = nn.LayerNorm(cfg.dit.cross_dim)
        self.state_encoder = CategorySpecificMLP(E, cfg.state_dim, cfg.hidden, d)
        self.action_encoder = MultiEmbodimentActionEncoder(E, cfg.action_dim, d, n15=cfg.n15)
        self.action_decoder = CategorySpecificMLP(E, cfg.hidden, cfg.hidden, cfg.action_dim)
        self.future_tokens = nn.Embedding(cfg.future_tokens, d)
        self.position_embedding = nn.Embedding(cfg.max_seq_len, d)
        self.model = DiT(cfg.dit, cfg.hidden, n15=cfg.n15)
        if cfg.vl_blocks:
            self.vl_self_attention = VLSelfAttention(cfg.dit.cross_dim, cfg.vl_heads, cfg.vl_blocks)

    def vl_features(self, x: torch.Tensor) -> torch.Tensor:
        """The DiT's cross-attention context from the LLM's hidden states."""
        x = self.vlln(x)
        return self.vl_self_attention(x) if hasattr(self, "vl_self_attention") else x


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

    def _embodiment(self, B: int, device) -> torch.Tensor:
        return torch.full((B,), self.config.embodiment_id, dtype=torch.long, device=device)

    # The prefix in named steps (embed_prefix runs them in order; the sequential quantizer
    # runs them block by block over all calibration batches, so both compute the same).
    def vision_in(self, images: torch.Tensor) -> torch.Tensor:
        """SigLIP patch + position embeddings of every camera image: [B·C, N, Dv]."""
        return self.backbone.eagle_model.vision_model.vision_model.embeddings(images.flatten(0, 1))

    def vision_out(self, h: torch.Tensor, batch: int) -> torch.Tensor:
        """SigLIP's last layer output → projected image tokens [B, C·n, D]. Ours: 2×2 pixel
        shuffle (4× fewer tokens), MLP projector; N1.5: every SigLIP patch through one Linear."""
        em = self.backbone.eagle_model
        f = em.vision_model.vision_model.post_layernorm(h)
        f = f.view(batch, -1, *f.shape[1:])  # [B, C, N, Dv]
        B, C, N, D = f.shape
        if self.config.n15:
            return em.mlp1(f.reshape(B, C * N, D))
        s = int(math.isqrt(N))
        f = f.view(B * C, s // 2, 2, s // 2, 2, D).permute(0, 1, 3, 2, 4, 5).reshape(B, C * (s // 2) ** 2, 4 * D)
        return em.mlp1(f)

    def prefix_in(self, img: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor,
                  image_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(LLM input [B, P, D], valid mask [B, P], positions [B, P]). Ours: image tokens
        then the prompt's embeddings; N1.5 / Eagle: the prompt's IMG_CONTEXT positions take
        the image tokens, camera by camera in order (every camera, present or not: N1.5
        has no camera mask)."""
        lm = self.backbone.eagle_model.language_model.model
        B = img.shape[0]
        if self.config.n15:
            slots = tokens == self.config.image_token_id
            counts = slots.sum(1)
            if bool((counts != img.shape[1]).any()):
                raise ValueError(f"GR00T N1.5 prompt holds {counts.tolist()} image tokens (id "
                                 f"{self.config.image_token_id}) per sample; the images give {img.shape[1]} "
                                 "(use the processor's gr00t_n15 prompt)")
            x = lm.embed_tokens(tokens)
            x[slots] = img.reshape(-1, img.shape[-1]).to(x.dtype)
            mask = token_mask.bool()
        else:
            C = self.config.cameras
            per_cam = img.shape[1] // C
            img_mask = (torch.ones(B, C, dtype=torch.bool, device=img.device) if image_mask is None
                        else image_mask.bool())
            x = torch.cat([img, lm.embed_tokens(tokens)], dim=1)
            mask = torch.cat([img_mask.repeat_interleave(per_cam, dim=1), token_mask.bool()], dim=1)
        return x, mask, (mask.long().cumsum(1) - 1).clamp_min(0)

    def prefix_out(self, x: torch.Tensor, mask: torch.Tensor, state: torch.Tensor) -> PrefixCache:
        """The LLM's last hidden states (N1.5: through its final norm) → the DiT's VL
        features, plus the state token."""
        if self.config.n15:
            x = self.backbone.eagle_model.language_model.model.norm(x)
        ah = self.action_head
        B = x.shape[0]
        st = ah.state_encoder(fit_state(state, self.config.state_dim)[:, None], self._embodiment(B, x.device))
        return PrefixCache(mask=mask, features=ah.vl_features(x), state_features=st)

    def embed_prefix(self, images: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor,
                     state: torch.Tensor, image_mask: torch.Tensor | None = None) -> PrefixCache:
        lm = self.backbone.eagle_model.language_model.model
        img = vision_tokens(self, self.backbone.eagle_model.vision_model.vision_model.encoder.layers, images)
        x, mask, positions = self.prefix_in(img, tokens, token_mask, image_mask)
        for layer in lm.layers:
            x, _ = layer(x, positions, key_mask=mask, causal=True)
        return self.prefix_out(x, mask, state)

    def time_buckets(self, t: torch.Tensor) -> torch.Tensor:
        """Flow time → the integer timestep both encoders see. N1.5 truncates t·1000 without
        clamping (its training t reaches −0.001 and 1); ours clamps to [0, 999]."""
        t_disc = (t * TIME_BUCKETS).long()
        return t_disc if self.config.n15 else t_disc.clamp(0, TIME_BUCKETS - 1)

    def denoise_step(self, x_t: torch.Tensor, t: torch.Tensor, prefix: PrefixCache) -> torch.Tensor:
        ah = self.action_head
        B, H, _ = x_t.shape
        cat = self._embodiment(B, x_t.device)
        t_disc = self.time_buckets(t)
        a = ah.action_encoder(x_t, t_disc, cat) + ah.position_embedding.weight[:H][None].to(x_t.dtype)
        fut = ah.future_tokens.weight[None].expand(B, -1, -1).to(x_t.dtype)
        seq = torch.cat([prefix.state_features, fut, a], dim=1)
        context_mask = None if self.config.n15 else prefix.mask  # N1.5 attends to every position
        out = ah.model(seq, t_disc, prefix.features, context_mask)
        return ah.action_decoder(out[:, -H:], cat)

    def loss(self, observation: Observation, actions: torch.Tensor, noise: torch.Tensor | None = None,
             s: torch.Tensor | None = None, reduction: str = "mean", t: torch.Tensor | None = None,
             action_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Flow-matching MSE. Without `t` or `action_mask` the ours variant is the shared
        loss (FlowMatchingVLA.loss). `t`: flow times [B] (t = 1 − s; overrides s);
        `action_mask` [B, H, A] or [A]: 1 = real action dim, giving N1.5's masked mean
        (reduction "none" returns the masked per-element errors). N1.5 with neither `t`
        nor `s` draws as Isaac-GR00T does: noise first, then t = (0.999 − Beta(1.5, 1)) / 0.999."""
        if not self.config.n15 and t is None and action_mask is None:
            return super().loss(observation, actions, noise=noise, s=s, reduction=reduction)
        B = actions.shape[0]
        noise = torch.randn_like(actions) if noise is None else noise
        if t is None and s is not None:
            t = 1.0 - s
        elif t is None and self.config.n15:
            t = (NOISE_S - torch.distributions.Beta(1.5, 1.0).sample((B,)).to(actions.device)) / NOISE_S
        elif t is None:
            t = 1.0 - (torch.distributions.Beta(1.5, 1.0).sample((B,)).to(actions.device) * 0.999 + 0.001)
        tt = t[:, None, None]
        x_t = (1 - tt) * noise + tt * actions
        err = (self.denoise_step(x_t, t, self._prefix(observation)) - (actions - noise)) ** 2
        if action_mask is None:
            return err if reduction == "none" else err.mean()
        m = action_mask.to(err.dtype).expand_as(err)
        return err * m if reduction == "none" else (err * m).sum() / m.sum()
