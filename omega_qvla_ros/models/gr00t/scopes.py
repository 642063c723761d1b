"""What W4A4 quantizes in GR00T N1.5 (the paper's scope): the Qwen3 trunk's attention
and MLP linears and the DiT's attention and feed-forward linears (1.07B weights at the
published size). Kept in floating point: vision tower, projector, embeddings, norms,
AdaLN, state/action encoders, and N1.5's `vl_self_attention` (0.2B, run once per
inference on the prefix; outside the paper's count, hence anchored to the DiT here)."""
from ..registry import Scopes

SCOPES = Scopes(
    backbone=(r"language_model\.model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$",),
    action_head=(r"action_head\.model\.transformer_blocks\.\d+\."
                 r"(attn1\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))$",),
    vision=r"vision_model\.",
    action_parts=r"action_head",
    trunk=r"language_model",
)
