"""Import a real checkpoint: find it, ask the families which one it is, read its sizes
from its tensor shapes (and its config.json where present), map its tensors onto our
modules by name, and take its processor files along.

What a family's `checkpoint` module provides (see pi05/checkpoint.py, gr00t/checkpoint.py):
- `detect(source) -> str | None`: a short description ("LeRobot pi05", …) if the
  checkpoint is one of this family's, else None;
- `load(source, options) -> Imported`: config, processor config, the tokenizer file to
  carry, and the name aliases / ignored keys for the tensor mapping.

Tensors are read lazily (safetensors, memory-mapped) into a model built on the `meta`
device, so importing needs about the checkpoint's size in memory, never a random-init
copy beside it. Every checkpoint key that maps nowhere and every model key the
checkpoint lacks is reported; a missing key or a shape mismatch is an error naming it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

WEIGHT_FILES = ("model.safetensors",)
INDEX_FILE = "model.safetensors.index.json"


class CheckpointImportError(ValueError):
    """Base of checkpoint import errors (not Python's ImportError); one clear line."""


class CheckpointMissingKeyError(CheckpointImportError):
    pass


class CheckpointShapeError(CheckpointImportError):
    pass


class CheckpointFormatError(CheckpointImportError):
    pass


def read_json_object(p: Path) -> dict | None:
    """A JSON object file of a checkpoint folder; None when absent; one-line errors."""
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointFormatError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointFormatError(f"{p}: expected a JSON object")
    return d


# ---------------------------------------------------------------------------- source
@dataclass
class CheckpointSource:
    """A checkpoint on disk: one safetensors file or a sharded index, plus the folder's
    JSON/processor files. Tensor data are read only on `get`."""

    root: Path  # the folder
    files: list[Path]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    where: dict[str, Path] = field(default_factory=dict)
    _handles: dict[Path, Any] = field(default_factory=dict, repr=False)

    @property
    def config_json(self) -> dict | None:
        return read_json_object(self.root / "config.json")

    def get(self, key: str) -> torch.Tensor:
        f = self.where[key]
        if f not in self._handles:
            self._handles[f] = safe_open(str(f), framework="pt")
        return self._handles[f].get_tensor(key)

    def close(self) -> None:
        self._handles.clear()


def open_checkpoint(path: str | Path) -> CheckpointSource:
    """A checkpoint folder (model.safetensors or model.safetensors.index.json inside) or a
    .safetensors file. Raises CheckpointImportError with the reason."""
    p = Path(path)
    if not p.exists():
        raise CheckpointFormatError(f"{p}: no such file or folder")
    if p.is_file():
        root, files = p.parent, [p]
    elif (p / INDEX_FILE).is_file():
        try:
            index = json.loads((p / INDEX_FILE).read_text())
            files = sorted({p / f for f in index["weight_map"].values()})
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointFormatError(f"{p / INDEX_FILE}: not a safetensors index ({e})") from None
        root = p
    else:
        found = [p / n for n in WEIGHT_FILES if (p / n).is_file()] or sorted(p.glob("*.safetensors"))
        found = [f for f in found if not f.name.startswith(("policy_", "reference", "optimizer"))]
        if not found:
            raise CheckpointFormatError(f"{p}: no model.safetensors (or sharded index) in this folder")
        root, files = p, found[:1]
    src = CheckpointSource(root, files)
    for f in files:
        if not f.is_file():
            raise CheckpointFormatError(f"{f}: listed in the index but missing")
        try:
            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    sl = h.get_slice(k)
                    src.shapes[k] = tuple(sl.get_shape())
                    src.dtypes[k] = str(sl.get_dtype())
                    src.where[k] = f
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointFormatError(f"{f}: not a readable safetensors file ({e})") from None
    if not src.shapes:
        raise CheckpointFormatError(f"{p}: the checkpoint holds no tensors")
    return src


# ---------------------------------------------------------------------------- mapping
# Accepted layout variations of the public checkpoints (tried in order, cumulatively):
# a leading `model.` (LeRobot wraps the policy), and transformers' older PaliGemma
# layout (`paligemma.language_model.model.layers` for
# `paligemma.model.language_model.layers`, `paligemma.vision_tower` /
# `paligemma.multi_modal_projector` without `.model`).
ALIASES = [
    (re.compile(r"^model\."), ""),
    (re.compile(r"paligemma\.language_model\.model\."), "paligemma.model.language_model."),
    (re.compile(r"paligemma\.language_model\.lm_head\."), "paligemma.lm_head."),
    (re.compile(r"paligemma\.(vision_tower|multi_modal_projector)\."), r"paligemma.model.\1."),
]
# keys of real checkpoints that we deliberately do not model (not an error)
IGNORED = [re.compile(p) for p in (r"lm_head\.", r"\.rotary_emb\.", r"num_batches_tracked$",
                                   r"vl_self_attention\.", r"language_model\.model\.norm\.")]


@dataclass
class ImportReport:
    mapped: dict[str, str] = field(default_factory=dict)  # checkpoint key -> model key
    unmapped: list[str] = field(default_factory=list)  # checkpoint keys with no place
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys the checkpoint lacks
    tied: dict[str, str] = field(default_factory=dict)  # model key -> checkpoint key it was tied to

    def to_dict(self) -> dict:
        return {"mapped": len(self.mapped), "unmapped": self.unmapped, "ignored": self.ignored,
                "missing": self.missing, "tied": self.tied}


def canonical(key: str, model_keys: set[str], aliases=ALIASES) -> str:
    if key in model_keys:
        return key
    k = key
    for pat, rep in aliases:
        k = pat.sub(rep, k)
        if k in model_keys:
            return k
    return k


def _model_shapes(model: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict(keep_vars=True).items()}


def plan_import(model: nn.Module, source: CheckpointSource, strict: bool = True, aliases=ALIASES,
                ignored=IGNORED, tied: dict[str, str] | None = None) -> tuple[dict[str, str], ImportReport]:
    """Which checkpoint tensor fills which model tensor ({model key: checkpoint key}),
    every shape checked, without reading any tensor data. The model may be on `meta`.
    `tied`: model key -> checkpoint key to use when the model key itself is absent
    (tied embeddings). With strict=True a model key missing from the checkpoint raises."""
    own = _model_shapes(model)
    keys = set(own)
    report = ImportReport()
    chosen: dict[str, str] = {}
    for ck in sorted(source.shapes):
        mk = canonical(ck, keys, aliases)
        if mk not in keys:
            (report.ignored if any(p.search(ck) for p in ignored) else report.unmapped).append(ck)
            continue
        if tuple(source.shapes[ck]) != own[mk][0]:
            raise CheckpointShapeError(f"{ck} → {mk}: checkpoint shape {list(source.shapes[ck])}, model "
                                       f"expects {list(own[mk][0])} (wrong size or config?)")
        chosen[mk] = ck
        report.mapped[ck] = mk
    for mk, ck in (tied or {}).items():
        if mk in keys and mk not in chosen and ck in source.shapes:
            if tuple(source.shapes[ck]) != own[mk][0]:
                raise CheckpointShapeError(f"{ck} (tied to {mk}): shape {list(source.shapes[ck])}, model "
                                           f"expects {list(own[mk][0])}")
            chosen[mk] = ck
            report.tied[mk] = ck
            if ck in report.ignored:
                report.ignored.remove(ck)
    report.missing = sorted(keys - set(chosen))
    if strict and report.missing:
        raise CheckpointMissingKeyError(
            f"{len(report.missing)} model tensor(s) not in the checkpoint {source.root}: first "
            f"{report.missing[0]!r}")
    return chosen, report


def import_tensors(model: nn.Module, source: CheckpointSource, strict: bool = True,
                   aliases=ALIASES, ignored=IGNORED, tied: dict[str, str] | None = None,
                   dtype: torch.dtype | None = None) -> ImportReport:
    """Load `source` into `model` by name (see plan_import). The model may live on the
    `meta` device (its tensors are then replaced, never allocated twice)."""
    chosen, report = plan_import(model, source, strict, aliases, ignored, tied)
    own = _model_shapes(model)
    state = {}
    for mk, ck in chosen.items():
        target = own[mk][1]
        if dtype is not None and target.is_floating_point:
            target = dtype
        state[mk] = source.get(ck).to(target)
    meta = any(p.is_meta for p in model.parameters())
    if meta and report.missing:
        raise CheckpointMissingKeyError(f"cannot leave {report.missing[0]!r} uninitialised")
    if meta:
        model.load_state_dict(state, strict=True, assign=True)
    else:
        model.load_state_dict({**model.state_dict(), **state}, strict=True)
    return report


def import_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> ImportReport:
    """Load the safetensors checkpoint at `path` into `model` by name (shapes checked)."""
    src = open_checkpoint(path)
    try:
        return import_tensors(model, src, strict=strict)
    finally:
        src.close()


# ---------------------------------------------------------------------------- families
@dataclass
class ImportOptions:
    tokenizer: str | None = None  # tokenizer file or folder
    joint_names: list[str] | None = None
    cameras: list[str] | None = None
    norm_stats: str | None = None  # openpi norm_stats.json
    vision_heads: int | None = None
    strict: bool = True
    embodiment_id: int | None = None  # GR00T N1.5: row of its per-embodiment encoders (default: from the files, else 0)


@dataclass
class Imported:
    """What a family's checkpoint reader found."""

    config: Any  # the family config (sizes from the shapes)
    processor: Any  # ProcessorConfig
    tokenizer_file: Path | None  # copied into the pack
    kind: str  # "LeRobot pi05", …
    aliases: list = field(default_factory=lambda: list(ALIASES))
    ignored: list = field(default_factory=lambda: list(IGNORED))
    tied: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # assumptions worth telling the user


def detect_family(source: CheckpointSource, family: str | None = None):
    """(Family, description) of the checkpoint; `family` forces one."""
    from .registry import families, get_family

    if family:
        fam = get_family(family)
        return fam, fam.checkpoint.detect(source) or f"{family} (forced)"
    hits = [(f, d) for f in families().values() if f.checkpoint is not None
            for d in [f.checkpoint.detect(source)] if d]
    if not hits:
        raise CheckpointFormatError(f"{source.root}: not a checkpoint of a known family "
                                    f"({', '.join(sorted(families()))}); give --family to force one")
    if len(hits) > 1:
        raise CheckpointFormatError(f"{source.root}: ambiguous checkpoint ({[d for _, d in hits]}); give --family")
    return hits[0]


def _plan(src: CheckpointSource, options: ImportOptions, family: str | None, strict: bool):
    """(Imported, chosen {model key: checkpoint key}, ImportReport, model on `meta`)."""
    from .registry import build_model

    fam, _desc = detect_family(src, family)
    imp: Imported = fam.checkpoint.load(src, options)
    model = build_model(fam.name, config=imp.config, device="meta")
    chosen, report = plan_import(model, src, strict=strict, aliases=imp.aliases, ignored=imp.ignored,
                                 tied=imp.tied)
    return imp, chosen, report, model


def import_to_pack(path: str | Path, out: str | Path, options: ImportOptions | None = None,
                   family: str | None = None, float_dtype: torch.dtype | None = None,
                   extra: dict | None = None):
    """Stream a checkpoint into an FP pack: tensors go from the memory-mapped checkpoint to
    pack shards one at a time (never the whole model in memory). Returns (Imported,
    ImportReport, the model on `meta`)."""
    from omega_qvla_ros.quant.pack import PackWriter
    from omega_qvla_ros.quant.recipes import RECIPES

    from . import model_info

    options = options or ImportOptions()
    src = open_checkpoint(path)
    try:
        imp, chosen, report, model = _plan(src, options, family, strict=True)
        own = _model_shapes(model)
        writer = PackWriter(out, float_dtype)
        for mk in model.state_dict():
            target = own[mk][1]
            if float_dtype is not None and target.is_floating_point:
                target = float_dtype
            writer.add({mk: src.get(chosen[mk]).to(target)})
    finally:
        src.close()
    assets = {imp.processor.tokenizer: imp.tokenizer_file} if imp.tokenizer_file else {}
    writer.finish(model_info(model), recipe=RECIPES["fp16"].to_dict(), processor=imp.processor.to_dict(),
                  assets=assets, extra={"imported_from": {"path": str(path), "kind": imp.kind, "notes": imp.notes},
                                        **(extra or {})})
    return imp, report, model


def describe_checkpoint(path: str | Path, options: ImportOptions | None = None, family: str | None = None):
    """(Imported, ImportReport, model on `meta`) without reading tensor data."""
    options = options or ImportOptions()
    src = open_checkpoint(path)
    try:
        imp, _chosen, report, model = _plan(src, options, family, strict=options.strict)
    finally:
        src.close()
    return imp, report, model


def load_checkpoint(path: str | Path, options: ImportOptions | None = None, family: str | None = None):
    """(model on the CPU in eval mode, Imported, ImportReport) for a real checkpoint."""
    from .registry import build_model

    options = options or ImportOptions()
    src = open_checkpoint(path)
    try:
        fam, _desc = detect_family(src, family)
        imp: Imported = fam.checkpoint.load(src, options)
        model = build_model(fam.name, config=imp.config, device="meta")
        report = import_tensors(model, src, strict=options.strict, aliases=imp.aliases, ignored=imp.ignored,
                                tied=imp.tied)
    finally:
        src.close()
    return model.eval(), imp, report
