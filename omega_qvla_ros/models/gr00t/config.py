"""GR00T N1.5 configuration and size presets (facts for `full` from METHOD.md §6)."""
from __future__ import annotations

from dataclasses import dataclass

from ..configs import LMConfig, VisionConfig, build_nested, siglip_so400m


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

    @classmethod
    def from_dict(cls, d: dict) -> "Gr00tConfig":
        return build_nested(cls, d, {"vision": VisionConfig, "llm": LMConfig, "dit": DiTConfig})


SIZES = {
    "full": lambda: Gr00tConfig(
        vision=siglip_so400m(),
        llm=LMConfig(2048, 12, 6144, 16, 8, 128, vocab=151680, rope_theta=1e6),
        dit=DiTConfig(blocks=16, dim=1536, heads=32, head_dim=48, ff=6144, cross_dim=2048)),
    "small": lambda: Gr00tConfig(
        vision=VisionConfig(128, 3, 2, 512, 12, 96),
        llm=LMConfig(192, 3, 768, 3, 1, 64),
        dit=DiTConfig(blocks=4, dim=192, heads=3, head_dim=64, ff=768, cross_dim=192),
        hidden=192, state_dim=32, future_tokens=8, num_embodiments=1, cameras=1),
    "tiny": lambda: Gr00tConfig(
        vision=VisionConfig(64, 2, 2, 128, 16, 64),
        llm=LMConfig(128, 2, 256, 2, 1, 64),
        dit=DiTConfig(blocks=4, dim=128, heads=2, head_dim=64, ff=256, cross_dim=128),
        hidden=128, state_dim=32, action_horizon=8, future_tokens=4, num_embodiments=1,
        max_tokens=32, cameras=2),
}
