"""The model-family registry: every tool, the pack loader, memory accounting, recipes'
module scopes and the checkpoint importer ask it, never a hard-coded list.

A family is one sub-package of `omega_qvla_ros.models` whose `__init__.py` defines
`FAMILY = Family(...)`; `load_families()` finds and registers them all. Adding a third
family (say, SmolVLA-style) is one new folder: config.py (config dataclass + size
presets), modeling.py (the nn.Module), checkpoint.py (detect / import a real
checkpoint), scopes.py (what W4A4 quantizes) and the `FAMILY` entry.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class Scopes:
    """Module-name regular expressions (re.search on qualified names)."""

    backbone: tuple[str, ...]  # the VLM's decoder linears (W4A4, backbone side of a recipe)
    action_head: tuple[str, ...]  # the action expert / DiT linears (action-head side)
    vision: str  # the vision tower (kept in floating point by the paper)
    action_parts: str  # everything that belongs to the action head, for memory accounting
    trunk: str


@dataclass(frozen=True)
class Family:
    name: str
    config_class: type  # dataclass with from_dict(); `family` field = name
    model_class: type  # nn.Module taking the config
    sizes: dict[str, Callable[[], Any]]  # preset name -> config factory
    scopes: Scopes
    shipped: str | None = None  # FP pack under models/ used as this family's default
    checkpoint: Any = None  # module with detect(dir) -> str | None and load(...)
    stages: Callable | None = None  # (model, observations, noise) -> iterator of sequential.Stage
    paper: dict = field(default_factory=dict)  # published W4A4 memory numbers

    def config(self, size: str):
        try:
            return self.sizes[size]()
        except KeyError:
            raise ValueError(f"family {self.name!r} has no size {size!r}; presets: {sorted(self.sizes)}, "
                             "or import a checkpoint (sizes are read from its shapes)") from None

    def config_from_dict(self, d: dict):
        return self.config_class.from_dict(d)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    from omega_qvla_ros.quant.pack import register_family as register_pack_builder

    _FAMILIES[family.name] = family
    # packs are loaded into a model built on the meta device (no random-init copy)
    register_pack_builder(family.name, lambda info, f=family: build_model(f.name, config=info["config"],
                                                                          device="meta"))
    return family


def load_families() -> dict[str, Family]:
    """Import every family sub-package (each registers itself through its FAMILY)."""
    pkg = importlib.import_module("omega_qvla_ros.models")
    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.ispkg:
            sub = importlib.import_module(f"omega_qvla_ros.models.{mod.name}")
            fam = getattr(sub, "FAMILY", None)
            if isinstance(fam, Family) and fam.name not in _FAMILIES:
                register_family(fam)
    return dict(_FAMILIES)


def families() -> dict[str, Family]:
    return dict(_FAMILIES) if _FAMILIES else load_families()


def family_names() -> list[str]:
    return sorted(families())


def get_family(name: str) -> Family:
    fams = families()
    if name not in fams:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(fams)}")
    return fams[name]


def family_of(model: nn.Module) -> Family:
    return get_family(model.config.family)


def build_model(family: str, size: str | None = None, config=None, device: str | torch.device = "cpu",
                seed: int = 0) -> nn.Module:
    """Build a model from (family, size preset) or an explicit config (object or dict).
    `device="meta"` allocates nothing (use it for the full published sizes)."""
    fam = get_family(family)
    if config is None:
        if size is None:
            raise ValueError("build_model needs a size preset or a config")
        cfg = fam.config(size)
    elif isinstance(config, dict):
        cfg = fam.config_from_dict(config)
    else:
        cfg = config
    if cfg.family != fam.name:
        raise ValueError(f"config is for family {cfg.family!r}, not {fam.name!r}")
    torch.manual_seed(seed)
    with torch.device(device):
        return fam.model_class(cfg)
