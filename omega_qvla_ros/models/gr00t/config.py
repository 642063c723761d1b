"""GR00T configuration and size presets.

Two variants of one network (`Gr00tConfig.variant`), recorded in every pack:
- "ours" (default; every pack written before the field existed): our small GR00T-style
  model — images first then the bare instruction, 2×2 pixel shuffle + MLP projector, no
  final LLM norm, VL features masked in the DiT, sin-first timestep encoding.
- "n15": GR00T N1.5 as Isaac-GR00T / LeRobot run it — SigLIP features through one Linear
  written over the IMG_CONTEXT positions of the Eagle chat prompt, final Qwen3 norm,
  `vl_self_attention` after `vlln`, nothing masked after the LLM, diffusers timestep
  encoding, DiT `norm3` without affine, N1.5's flow-time sampling in the loss.
`full` is N1.5 at its published size (nvidia/GR00T-N1.5-3B; METHOD.md §6).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..configs import LMConfig, VisionConfig, build_nested, siglip_so400m

VARIANTS = ("ours", "n15")
IMG_CONTEXT_ID = 151669  # Eagle 2.5's <IMG_CONTEXT> in the Qwen3 vocabulary


def n15_max_tokens(cameras: int, image_tokens: int, text: int = 128) -> int:
    """Token budget of N1.5's chat prompt: 3 (user turn) + per camera `<image k><img>` (6)
    + image tokens + `</img>` + the task (`text`) + 5 (end of turn, assistant turn)."""
    return 8 + cameras * (image_tokens + 7) + text


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
    variant: str = "ours"  # "ours" | "n15" (see the module docstring)
    embodiment_id: int = 0  # row of the per-embodiment state/action encoders and decoder
    image_token_id: int = IMG_CONTEXT_ID  # n15: token id whose positions receive image features
    vl_blocks: int = 0  # blocks of vl_self_attention after vlln (N1.5: 4; 0 = none)
    vl_heads: int = 32  # its heads (head_dim = LLM width / vl_heads)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"gr00t variant {self.variant!r}; choose from {VARIANTS}")
        if not 0 <= self.embodiment_id < self.num_embodiments:
            raise ValueError(f"embodiment_id {self.embodiment_id} outside the model's "
                             f"{self.num_embodiments} embodiments")
        if self.vl_blocks and self.llm.width % self.vl_heads:
            raise ValueError(f"vl_self_attention: width {self.llm.width} not divisible by {self.vl_heads} heads")

    @property
    def n15(self) -> bool:
        return self.variant == "n15"

    @property
    def default_prompt(self) -> str:
        """The processor prompt this network expects (models/processor.py)."""
        return "gr00t_n15" if self.n15 else "instruction"

    @property
    def image_tokens_per_camera(self) -> int:
        """Tokens one camera adds to the prefix (n15: IMG_CONTEXT placeholders the prompt holds)."""
        n = (self.vision.image_size // self.vision.patch) ** 2
        return n if self.n15 else n // 4

    @classmethod
    def from_dict(cls, d: dict) -> "Gr00tConfig":
        return build_nested(cls, d, {"vision": VisionConfig, "llm": LMConfig, "dit": DiTConfig})


SIZES = {
    # N1.5: Eagle 2.5 (SigLIP so400m + Qwen3-1.7B truncated to 12 layers), 32 × 48 DiT
    # heads, 4-block vl_self_attention of 32 × 64; one 224 px camera = 256 image tokens.
    "full": lambda: Gr00tConfig(
        vision=siglip_so400m(),
        llm=LMConfig(2048, 12, 6144, 16, 8, 128, vocab=151680, rope_theta=1e6),
        dit=DiTConfig(blocks=16, dim=1536, heads=32, head_dim=48, ff=6144, cross_dim=2048),
        max_tokens=n15_max_tokens(1, 256), variant="n15", vl_blocks=4, vl_heads=32),
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
