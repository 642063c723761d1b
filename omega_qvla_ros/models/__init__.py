"""VLA model families in plain PyTorch (Pi0.5, GR00T N1.5). Imports no ROS.

Every family is one sub-package registered in `registry` (see its docstring for how to
add one); everything else asks the registry."""
from __future__ import annotations

from torch import nn

from .common import Observation, PrefixCache
from .configs import config_to_dict
from .registry import (Family, build_model, families, family_names, family_of, get_family,
                       load_families, register_family)

load_families()


def model_info(model: nn.Module, size: str | None = None) -> dict:
    """The pack manifest's `model` entry for a VLA model."""
    cfg = model.config
    return {"family": cfg.family, "size": size, "config": config_to_dict(cfg)}


def get_config(family: str, size: str):
    return get_family(family).config(size)


__all__ = ["Observation", "PrefixCache", "Family", "build_model", "model_info", "get_config", "families",
           "family_names", "family_of", "get_family", "register_family"]
