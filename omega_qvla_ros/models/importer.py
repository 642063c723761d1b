"""Map a real checkpoint (safetensors) onto our modules by parameter name.

Names follow openpi's PyTorch Pi0.5 / LeRobot `pi05` and Isaac-GR00T N1.5. Accepted
variations: a leading `model.` (LeRobot wraps the policy), and transformers' older
PaliGemma layout (`paligemma.language_model.model.layers` for
`paligemma.model.language_model.layers`, `paligemma.vision_tower` /
`paligemma.multi_modal_projector` without `.model`). Every checkpoint key that maps
nowhere and every model key the checkpoint lacks is listed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

ALIASES = [
    (re.compile(r"^model\."), ""),
    (re.compile(r"paligemma\.language_model\.model\."), "paligemma.model.language_model."),
    (re.compile(r"paligemma\.language_model\.lm_head\."), "paligemma.lm_head."),
    (re.compile(r"paligemma\.(vision_tower|multi_modal_projector)\."), r"paligemma.model.\1."),
]
# keys of real checkpoints that we deliberately do not model (not an error)
IGNORED = [re.compile(p) for p in (r"lm_head\.", r"\.rotary_emb\.", r"num_batches_tracked$",
                                   r"vl_self_attention\.", r"language_model\.model\.norm\.")]


class CheckpointImportError(ValueError):
    """Base of checkpoint import errors (not Python's ImportError)."""


class CheckpointMissingKeyError(CheckpointImportError):
    pass


class CheckpointShapeError(CheckpointImportError):
    pass


@dataclass
class ImportReport:
    mapped: dict[str, str] = field(default_factory=dict)  # checkpoint key -> model key
    unmapped: list[str] = field(default_factory=list)  # checkpoint keys with no place
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys the checkpoint lacks

    def to_dict(self) -> dict:
        return {"mapped": len(self.mapped), "unmapped": self.unmapped, "ignored": self.ignored,
                "missing": self.missing}


def canonical(key: str, model_keys: set[str]) -> str:
    if key in model_keys:
        return key
    k = key
    for pat, rep in ALIASES:
        k = pat.sub(rep, k)
        if k in model_keys:
            return k
    return k


def import_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> ImportReport:
    """Load `path` into `model` by name, checking every shape. With strict=True a model
    key missing from the checkpoint raises; unmapped checkpoint keys are only reported."""
    own = model.state_dict()
    keys = set(own)
    report = ImportReport()
    new_state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        for ck in f.keys():
            mk = canonical(ck, keys)
            if mk not in keys:
                (report.ignored if any(p.search(ck) for p in IGNORED) else report.unmapped).append(ck)
                continue
            t = f.get_tensor(ck)
            if tuple(t.shape) != tuple(own[mk].shape):
                raise CheckpointShapeError(f"{ck} → {mk}: checkpoint shape {list(t.shape)}, model "
                                           f"expects {list(own[mk].shape)} (wrong size/config?)")
            new_state[mk] = t.to(own[mk].dtype)
            report.mapped[ck] = mk
    report.missing = sorted(keys - set(new_state))
    if strict and report.missing:
        raise CheckpointMissingKeyError(
            f"{len(report.missing)} model parameter(s) not in {path}: first {report.missing[0]!r}")
    model.load_state_dict({**own, **new_state}, strict=True)
    return report
