"""VLA model families in plain PyTorch (Pi0.5-style, GR00T-N1.5-style). Imports no ROS."""
from __future__ import annotations

import torch
from torch import nn

from omega_qvla_ros.quant.pack import register_family

from .common import Observation, PrefixCache
from .configs import FAMILIES, SIZES, config_from_dict, config_to_dict, get_config
from .gr00t import Gr00tModel
from .pi05 import Pi05Model

MODEL_CLASSES = {"pi05": Pi05Model, "gr00t": Gr00tModel}


def build_model(family: str, size: str | None = None, config=None, device: str | torch.device = "cpu",
                seed: int = 0) -> nn.Module:
    """Build a model from (family, size) or an explicit config. `device="meta"` allocates
    nothing (use it for the full-size configs)."""
    if family not in MODEL_CLASSES:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    cfg = config if config is not None else get_config(family, size)
    torch.manual_seed(seed)
    with torch.device(device):
        return MODEL_CLASSES[family](cfg)


def model_info(model: nn.Module, size: str | None = None) -> dict:
    """The pack manifest's `model` entry for a VLA model."""
    cfg = model.config
    return {"family": cfg.family, "size": size, "config": config_to_dict(cfg)}


def _from_manifest(info: dict) -> nn.Module:
    cfg = config_from_dict(info["config"])
    return build_model(cfg.family, config=cfg)


for _family in MODEL_CLASSES:
    register_family(_family, _from_manifest)

__all__ = ["Observation", "PrefixCache", "Pi05Model", "Gr00tModel", "build_model", "model_info",
           "get_config", "SIZES", "FAMILIES"]
