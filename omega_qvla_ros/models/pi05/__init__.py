"""Pi0.5 (LeRobot / openpi `pi05`): config, network, processor defaults, checkpoint import,
quantization scopes — registered as the family "pi05"."""
from ..registry import Family
from . import checkpoint, stages
from .config import SIZES, Pi05Config
from .modeling import Pi05Model
from .scopes import SCOPES

FAMILY = Family(
    name="pi05", config_class=Pi05Config, model_class=Pi05Model, sizes=SIZES, scopes=SCOPES,
    shipped="pi05_small_aloha", checkpoint=checkpoint, stages=stages.stages,
    paper={"quantized_params": 2.29e9, "fp16_gib": 4.27, "w4a4_mib": 1.20 * 1024, "reduction": 0.720},
)

__all__ = ["FAMILY", "Pi05Config", "Pi05Model"]
