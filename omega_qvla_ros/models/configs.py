"""Model configurations: `tiny` (tests, < 5M parameters), `small` (the shipped default,
trainable on a CPU) and `full` (the published sizes, built on the `meta` device for
memory accounting). Facts for `full` from METHOD.md §6."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

SIZES = ("tiny", "small", "full")
FAMILIES = ("pi05", "gr00t")


@dataclass
class VisionConfig:
    width: int
    layers: int
    heads: int
    mlp: int
    patch: int
    image_size: int


@dataclass
class LMConfig:
    width: int
    layers: int
    mlp: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int = 520
    rope_theta: float = 10000.0


@dataclass
class Pi05Config:
    vision: VisionConfig
    trunk: LMConfig
    expert: LMConfig
    cameras: int = 3
    action_horizon: int = 50
    action_dim: int = 32
    num_steps: int = 10
    max_tokens: int = 48
    state_bins: int = 256
    family: str = "pi05"

    def __post_init__(self) -> None:
        if (self.trunk.layers, self.trunk.kv_heads, self.trunk.head_dim) != (
                self.expert.layers, self.expert.kv_heads, self.expert.head_dim):
            raise ValueError("the action expert must match the trunk in layers, kv heads and "
                             "head dim (joint attention shares keys/values)")


@dataclass
class DiTConfig:
    blocks: int
    dim: int
    heads: int
    head_dim: int
    ff: int
    cross_dim: int


@dataclass
class Gr00tConfig:
    vision: VisionConfig
    llm: LMConfig
    dit: DiTConfig
    hidden: int = 1024
    state_dim: int = 64
    action_dim: int = 32
    action_horizon: int = 16
    future_tokens: int = 32
    num_embodiments: int = 32
    num_steps: int = 4
    max_tokens: int = 48
    max_seq_len: int = 1024
    cameras: int = 1
    family: str = "gr00t"


def _siglip_full() -> VisionConfig:
    return VisionConfig(width=1152, layers=27, heads=16, mlp=4304, patch=14, image_size=224)


CONFIGS = {
    ("pi05", "full"): lambda: Pi05Config(
        vision=_siglip_full(),
        trunk=LMConfig(2048, 18, 16384, 8, 1, 256, vocab=257152),
        expert=LMConfig(1024, 18, 4096, 8, 1, 256, vocab=257152),
        max_tokens=200),
    # `small`: the shipped default, sized so that a 2-core CPU trains it in about an hour
    # and a half (≈0.8 s per batch of 32): one camera (cam_high) at 96², 12-pixel patches.
    ("pi05", "small"): lambda: Pi05Config(
        vision=VisionConfig(128, 3, 2, 512, 12, 96),
        trunk=LMConfig(192, 3, 768, 3, 1, 64),
        expert=LMConfig(128, 3, 512, 2, 1, 64),
        cameras=1),
    ("pi05", "tiny"): lambda: Pi05Config(
        vision=VisionConfig(64, 2, 2, 128, 16, 64),
        trunk=LMConfig(128, 2, 256, 2, 1, 64),
        expert=LMConfig(64, 2, 128, 2, 1, 64),
        action_horizon=10, max_tokens=32),
    ("gr00t", "full"): lambda: Gr00tConfig(
        vision=_siglip_full(),
        llm=LMConfig(2048, 12, 6144, 16, 8, 128, vocab=151680, rope_theta=1e6),
        dit=DiTConfig(blocks=16, dim=1536, heads=32, head_dim=48, ff=6144, cross_dim=2048)),
    ("gr00t", "small"): lambda: Gr00tConfig(
        vision=VisionConfig(128, 3, 2, 512, 12, 96),
        llm=LMConfig(192, 3, 768, 3, 1, 64),
        dit=DiTConfig(blocks=4, dim=192, heads=3, head_dim=64, ff=768, cross_dim=192),
        hidden=192, state_dim=32, future_tokens=8, num_embodiments=1, cameras=1),
    ("gr00t", "tiny"): lambda: Gr00tConfig(
        vision=VisionConfig(64, 2, 2, 128, 16, 64),
        llm=LMConfig(128, 2, 256, 2, 1, 64),
        dit=DiTConfig(blocks=4, dim=128, heads=2, head_dim=64, ff=256, cross_dim=128),
        hidden=128, state_dim=32, action_horizon=8, future_tokens=4, num_embodiments=1,
        max_tokens=32, cameras=2),
}


def get_config(family: str, size: str):
    try:
        return CONFIGS[(family, size)]()
    except KeyError:
        raise ValueError(f"no config for family={family!r} size={size!r}; families {FAMILIES}, "
                         f"sizes {SIZES}") from None


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict):
    d = dict(d)
    fam = d.get("family")
    v = VisionConfig(**d.pop("vision"))
    if fam == "pi05":
        return Pi05Config(vision=v, trunk=LMConfig(**d.pop("trunk")), expert=LMConfig(**d.pop("expert")), **d)
    if fam == "gr00t":
        return Gr00tConfig(vision=v, llm=LMConfig(**d.pop("llm")), dit=DiTConfig(**d.pop("dit")), **d)
    raise ValueError(f"unknown model family {fam!r}")
