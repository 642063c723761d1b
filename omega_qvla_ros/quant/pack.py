"""Model packs: a directory with `model.safetensors` + `manifest.json`. Never pickle.

manifest.json holds the format name and version, the model family and config, the
recipe, a LayerSpec per quantized layer, the name/shape/dtype of every tensor, a
calibration summary, the processor that turns observations into model input (camera
order, image handling, prompt, tokenizer, normalisation statistics; its tokenizer file,
if any, is one of the pack's files), free-form `extra` data and the size and sha256 of
every file. `load_pack` checks, in this order, and raises the
specific PackError subclass naming the first mismatch: manifest readable → format
and version → files present → file sizes (truncation) → sha256 → tensor names →
shapes → dtypes → the model skeleton's own state_dict names and shapes.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .qlinear import LayerSpec, QuantLinear, storage_dtype

FORMAT = "omega-qvla-pack"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"

ModelBuilder = Callable[[dict], nn.Module]
_FAMILIES: dict[str, ModelBuilder] = {}


class PackError(ValueError):
    """A pack cannot be loaded; the message names the first mismatch."""


class PackFormatError(PackError):
    pass


class PackVersionError(PackError):
    pass


class PackMissingFileError(PackError):
    pass


class PackTruncatedError(PackError):
    pass


class PackChecksumError(PackError):
    pass


class PackMissingTensorError(PackError):
    pass


class PackUnexpectedTensorError(PackError):
    pass


class PackShapeError(PackError):
    pass


class PackDtypeError(PackError):
    pass


def register_family(name: str, builder: ModelBuilder) -> None:
    """Make `load_pack` able to rebuild models of `family` from their manifest entry."""
    _FAMILIES[name] = builder


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def quantized_layers(model: nn.Module) -> dict[str, LayerSpec]:
    return {n: m.spec for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def save_pack(model: nn.Module, out_dir: str | os.PathLike, model_info: dict,
              recipe: dict | None = None, calibration: dict | None = None,
              extra: dict | None = None, float_dtype: torch.dtype | None = None,
              processor: dict | None = None, assets: dict[str, str | os.PathLike] | None = None) -> Path:
    """Write `model` (FP or quantized) as a pack. `model_info` = {"family", "config", …}.
    `processor`: the processor config (a dict); `assets`: {name in the pack: source file}
    copied beside the weights and checksummed like them (e.g. a tokenizer file).

    Quantization state is stored compactly (qlinear.storage_dtype: int32 packed codes,
    fp16 scales/rotations/tables, int16 permutations); it is already held at that
    precision, so this is lossless. `float_dtype` (e.g. torch.float16) casts the
    kept-in-float parts; None keeps their dtype.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    qnames = quantized_layers(model)
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        owner, leaf = k.rsplit(".", 1) if "." in k else ("", k)
        if owner in qnames:
            stored = storage_dtype(leaf, v)
            if v.is_floating_point() and not torch.equal(v.to(stored).to(v.dtype), v):
                raise ValueError(f"{k}: quantization state is not at its stored precision "
                                 f"({stored}); build layers with QuantLinear.from_parts")
            v = v.to(stored)
        elif float_dtype is not None and v.is_floating_point():
            v = v.to(float_dtype)
        tensors[k] = v.contiguous()
    save_file(tensors, str(out / WEIGHTS), metadata={"format": FORMAT})
    files = {WEIGHTS: {"bytes": (out / WEIGHTS).stat().st_size, "sha256": sha256_file(out / WEIGHTS)}}
    for name, src in (assets or {}).items():
        if Path(name).name != name or name in (WEIGHTS, MANIFEST):
            raise ValueError(f"asset name {name!r}: a plain file name other than {WEIGHTS}/{MANIFEST}")
        dst = out / name
        if Path(src).resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        files[name] = {"bytes": dst.stat().st_size, "sha256": sha256_file(dst)}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model_info,
        "recipe": recipe,
        "layers": {n: s.to_dict() for n, s in qnames.items()},
        "tensors": {k: {"shape": list(v.shape), "dtype": _dtype_name(v)} for k, v in tensors.items()},
        "calibration": calibration or {},
        "extra": extra or {},
        "files": files,
    }
    if processor is not None:
        manifest["processor"] = processor
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return out


def read_manifest(pack_dir: str | os.PathLike) -> dict:
    path = Path(pack_dir) / MANIFEST
    if not path.is_file():
        raise PackMissingFileError(f"{path}: no manifest.json (is this a model pack directory?)")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackFormatError(f"{path}: manifest is not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise PackFormatError(f"{path}: not an {FORMAT} manifest (format={m.get('format') if isinstance(m, dict) else None!r})")
    if m.get("format_version") != FORMAT_VERSION:
        raise PackVersionError(f"{path}: pack format version {m.get('format_version')!r}, "
                               f"this build reads version {FORMAT_VERSION}")
    check_manifest(m, path)
    return m


def _is(x, kind) -> bool:
    return isinstance(x, kind) and not (kind is int and isinstance(x, bool))


def check_manifest(m: dict, path) -> None:
    """Every field the loader reads, with its type; PackFormatError names the first bad one."""
    def bad(what: str):
        raise PackFormatError(f"{path}: manifest {what}")

    for key in ("model", "layers", "tensors", "files"):
        if key not in m:
            bad(f"lacks {key!r}")
    model = m["model"]
    if not _is(model, dict) or not _is(model.get("family"), str) or not _is(model.get("config"), dict):
        bad("field 'model' needs a 'family' name and a 'config' object")
    if not _is(m["layers"], dict) or not all(_is(v, dict) for v in m["layers"].values()):
        bad("field 'layers' must map layer names to layer specs")
    if not _is(m["tensors"], dict):
        bad("field 'tensors' must map tensor names to their shape and dtype")
    for k, meta in m["tensors"].items():
        if (not _is(meta, dict) or not _is(meta.get("shape"), list) or not all(_is(d, int) and d >= 0
                                                                               for d in meta["shape"])
                or not _is(meta.get("dtype"), str)):
            bad(f"entry for tensor {k!r} needs 'shape' (list of ints) and 'dtype'")
    if not _is(m["files"], dict) or WEIGHTS not in m["files"]:
        bad(f"field 'files' must list {WEIGHTS}")
    for name, meta in m["files"].items():
        if not _is(name, str) or Path(name).name != name or name in ("", ".", ".."):
            bad(f"lists a file outside the pack folder: {name!r}")
        if not _is(meta, dict) or not _is(meta.get("bytes"), int) or not _is(meta.get("sha256"), str):
            bad(f"entry for file {name!r} needs 'bytes' and 'sha256'")
    for key in ("recipe", "processor", "calibration", "extra"):
        if m.get(key) is not None and not _is(m[key], dict):
            bad(f"field {key!r} must be an object")


def verify_files(pack_dir: str | os.PathLike, manifest: dict) -> None:
    root = Path(pack_dir)
    for name, meta in manifest["files"].items():
        f = root / name
        if not f.is_file():
            raise PackMissingFileError(f"{f}: listed in the manifest but missing")
        size = f.stat().st_size
        if size != meta["bytes"]:
            kind = "truncated" if size < meta["bytes"] else "larger than recorded"
            raise PackTruncatedError(f"{f}: {kind}: {size} bytes, manifest says {meta['bytes']}")
        digest = sha256_file(f)
        if digest != meta["sha256"]:
            raise PackChecksumError(f"{f}: sha256 {digest[:16]}… does not match the manifest's "
                                    f"{meta['sha256'][:16]}… (corrupt or modified file)")


def read_tensors(pack_dir: str | os.PathLike, manifest: dict, device: str = "cpu"
                 ) -> dict[str, torch.Tensor]:
    f = Path(pack_dir) / WEIGHTS
    expected = manifest["tensors"]
    out: dict[str, torch.Tensor] = {}
    try:
        handle = safe_open(str(f), framework="pt", device=device)
    except Exception as e:  # noqa: BLE001 - SafetensorError or an OS error: not a safetensors file
        raise PackFormatError(f"{f}: not a safetensors file ({type(e).__name__}: {e})") from None
    with handle as st:
        names = set(st.keys())
        for k in expected:
            if k not in names:
                raise PackMissingTensorError(f"{f}: tensor {k!r} listed in the manifest is missing")
        for k in sorted(names):
            if k not in expected:
                raise PackUnexpectedTensorError(f"{f}: tensor {k!r} is not in the manifest")
        for k, meta in expected.items():
            t = st.get_tensor(k)
            if list(t.shape) != list(meta["shape"]):
                raise PackShapeError(f"{f}: tensor {k!r} has shape {list(t.shape)}, "
                                     f"manifest says {meta['shape']}")
            if _dtype_name(t) != meta["dtype"]:
                raise PackDtypeError(f"{f}: tensor {k!r} has dtype {_dtype_name(t)}, "
                                     f"manifest says {meta['dtype']}")
            out[k] = t
    return out


def install_quant_layers(model: nn.Module, layers: dict[str, dict], path: str = "auto",
                         backend: str = "auto") -> None:
    """Replace the named nn.Linear modules by empty QuantLinear of the recorded specs."""
    for name, spec_d in layers.items():
        try:
            spec = LayerSpec.from_dict(spec_d)
        except (ValueError, TypeError) as e:
            raise PackFormatError(f"quantized layer {name!r}: bad layer spec ({e})") from None
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise PackShapeError(f"quantized layer {name!r} does not exist in the model") from None
        if not isinstance(old, (nn.Linear, QuantLinear)) or (
                old.in_features, old.out_features) != (spec.in_features, spec.out_features):
            raise PackShapeError(f"layer {name!r}: pack has {spec.in_features}→{spec.out_features}, "
                                 f"model has {type(old).__name__} "
                                 f"{getattr(old, 'in_features', '?')}→{getattr(old, 'out_features', '?')}")
        model.set_submodule(name, QuantLinear(spec, path=path, backend=backend))


def load_state_checked(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for k, v in own.items():
        if k not in tensors:
            raise PackMissingTensorError(f"model expects tensor {k!r}, the pack has none")
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise PackShapeError(f"tensor {k!r}: pack has shape {list(tensors[k].shape)}, "
                                 f"model expects {list(v.shape)}")
    for k in tensors:
        if k not in own:
            raise PackUnexpectedTensorError(f"pack tensor {k!r} has no place in the model")
    model.load_state_dict({k: t.to(own[k].dtype) for k, t in tensors.items()}, strict=True)


def load_pack(pack_dir: str | os.PathLike, build_model: ModelBuilder | None = None,
              device: str | torch.device = "cpu", path: str = "auto", backend: str = "auto"
              ) -> tuple[nn.Module, dict]:
    """Verify and load a pack; returns (model in eval mode on `device`, manifest)."""
    manifest = read_manifest(pack_dir)
    verify_files(pack_dir, manifest)
    tensors = read_tensors(pack_dir, manifest)
    info = manifest["model"]
    if build_model is None:
        family = info.get("family")
        if family not in _FAMILIES:
            # the project's own families register on import of omega_qvla_ros.models; a
            # process that loads a pack first (a fresh node, a test run alone) has not
            # imported it yet. Plain import by name: the quantization core stays free of
            # model code otherwise.
            importlib.import_module("omega_qvla_ros.models")
        if family not in _FAMILIES:
            raise PackFormatError(f"unknown model family {family!r}; known: {sorted(_FAMILIES)}")
        build_model = _FAMILIES[family]
    try:
        model = build_model(info)
    except (ValueError, TypeError, KeyError) as e:
        raise PackFormatError(f"{pack_dir}: the manifest's model config does not build: {e}") from None
    install_quant_layers(model, manifest["layers"], path=path, backend=backend)
    load_state_checked(model, tensors)
    return model.to(device).eval(), manifest


def pack_bytes(pack_dir: str | os.PathLike) -> dict[str, Any]:
    """Bytes on disk per tensor kind (for reports)."""
    manifest = read_manifest(pack_dir)
    sizes: dict[str, int] = {}
    for k, meta in manifest["tensors"].items():
        n = 1
        for d in meta["shape"]:
            n *= d
        item = torch.empty(0, dtype=getattr(torch, meta["dtype"])).element_size()
        kind = k.rsplit(".", 1)[-1]
        sizes[kind] = sizes.get(kind, 0) + n * item
    return sizes
