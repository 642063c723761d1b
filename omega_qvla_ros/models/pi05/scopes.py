"""What W4A4 quantizes in Pi0.5 (the paper's scope): the Gemma trunk's and the action
expert's attention and MLP linears. Kept in floating point: vision tower, projector,
embeddings, norms, adaRMS dense layers, action/time projections."""
from ..registry import Scopes

SCOPES = Scopes(
    backbone=(r"paligemma\.model\.language_model\.layers\.\d+\."
              r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$",),
    action_head=(r"gemma_expert\.model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$",),
    vision=r"vision_tower\.",
    action_parts=r"(gemma_expert|action_in_proj|action_out_proj|time_mlp_)",
    trunk=r"language_model",
)
