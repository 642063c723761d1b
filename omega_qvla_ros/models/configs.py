"""Configuration pieces the families share (vision tower, decoder LM). Each family's
own config and its size presets live in its folder (`pi05/config.py`, …)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class VisionConfig:
    width: int
    layers: int
    heads: int
    mlp: int
    patch: int
    image_size: int


@dataclass
class LMConfig:
    width: int
    layers: int
    mlp: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int = 520
    rope_theta: float = 10000.0


def siglip_so400m() -> VisionConfig:
    """The SigLIP tower of the published Pi0.5 and GR00T N1.5 (so400m, 224 px)."""
    return VisionConfig(width=1152, layers=27, heads=16, mlp=4304, patch=14, image_size=224)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def build_nested(cls, d: dict, nested: dict[str, type]):
    """`cls(**d)` with the dataclass fields named in `nested` built from their dicts;
    unknown keys are an error that names them (a manifest from another build)."""
    d = dict(d)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {unknown}")
    for key, sub in nested.items():
        if key in d and isinstance(d[key], dict):
            d[key] = sub(**d[key])
    return cls(**d)
