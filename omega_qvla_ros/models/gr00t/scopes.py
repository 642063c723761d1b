"""What W4A4 quantizes in GR00T N1.5 (the paper's scope): the Qwen3 trunk's attention
and MLP linears and the DiT's attention and feed-forward linears. Kept in floating
point: vision tower, projector, embeddings, norms, AdaLN, state/action encoders."""
from ..registry import Scopes

SCOPES = Scopes(
    backbone=(r"language_model\.model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$",),
    action_head=(r"transformer_blocks\.\d+\.(attn1\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))$",),
    vision=r"vision_model\.",
    action_parts=r"action_head",
    trunk=r"language_model",
)
