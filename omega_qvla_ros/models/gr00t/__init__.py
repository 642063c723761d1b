"""GR00T N1.5 (Isaac-GR00T): config, network, checkpoint name map, quantization scopes —
registered as the family "gr00t"."""
from ..registry import Family
from . import checkpoint, stages
from .config import SIZES, DiTConfig, Gr00tConfig
from .modeling import Gr00tModel
from .scopes import SCOPES

FAMILY = Family(
    name="gr00t", config_class=Gr00tConfig, model_class=Gr00tModel, sizes=SIZES, scopes=SCOPES,
    shipped="gr00t_small_aloha", checkpoint=checkpoint, stages=stages.stages,
    paper={"quantized_params": 1.07e9, "fp16_gib": 1.99, "w4a4_mib": 586, "reduction": 0.713},
)

__all__ = ["FAMILY", "DiTConfig", "Gr00tConfig", "Gr00tModel"]
