"""Pi0.5 configuration and size presets. Facts for `full` from METHOD.md §6 and
../shared/LEROBOT_PI05.md (LeRobot 0.6.1 / openpi)."""
from __future__ import annotations

from dataclasses import dataclass

from ..configs import LMConfig, VisionConfig, build_nested, siglip_so400m

STATE_ENCODINGS = ("tokens", "prompt")


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
    # How the joint state reaches the model. "prompt": LeRobot / openpi Pi0.5 — the
    # processor writes the 256-bin discretised state into the prompt text, the network
    # sees no state. "tokens": our small models — one extra token per state dimension
    # after the instruction (they were trained so; kept as an explicit, recorded choice).
    state_encoding: str = "tokens"
    family: str = "pi05"

    def __post_init__(self) -> None:
        if (self.trunk.layers, self.trunk.kv_heads, self.trunk.head_dim) != (
                self.expert.layers, self.expert.kv_heads, self.expert.head_dim):
            raise ValueError("the action expert must match the trunk in layers, kv heads and "
                             "head dim (joint attention shares keys/values)")
        if self.state_encoding not in STATE_ENCODINGS:
            raise ValueError(f"state_encoding must be one of {STATE_ENCODINGS}, got {self.state_encoding!r}")

    @property
    def default_prompt(self) -> str:
        """The processor prompt this network expects (models/processor.py)."""
        return "pi05" if self.state_encoding == "prompt" else "instruction"

    @classmethod
    def from_dict(cls, d: dict) -> "Pi05Config":
        return build_nested(cls, d, {"vision": VisionConfig, "trunk": LMConfig, "expert": LMConfig})


SIZES = {
    # the published Pi0.5 (Gemma-2B trunk + Gemma-300M expert), LeRobot/openpi conventions
    "full": lambda: Pi05Config(
        vision=siglip_so400m(),
        trunk=LMConfig(2048, 18, 16384, 8, 1, 256, vocab=257152),
        expert=LMConfig(1024, 18, 4096, 8, 1, 256, vocab=257152),
        max_tokens=200, state_encoding="prompt"),
    # `small`: the shipped default, sized so that a 2-core CPU trains it in about an hour
    # and a half (≈0.8 s per batch of 32): one camera (cam_high) at 96², 12-pixel patches.
    "small": lambda: Pi05Config(
        vision=VisionConfig(128, 3, 2, 512, 12, 96),
        trunk=LMConfig(192, 3, 768, 3, 1, 64),
        expert=LMConfig(128, 3, 512, 2, 1, 64),
        cameras=1),
    "tiny": lambda: Pi05Config(
        vision=VisionConfig(64, 2, 2, 128, 16, 64),
        trunk=LMConfig(128, 2, 256, 2, 1, 64),
        expert=LMConfig(64, 2, 128, 2, 1, 64),
        action_horizon=10, max_tokens=32),
}
