"""Model packs: a directory with the weights in safetensors + `manifest.json`. Never pickle.

Weights: `model.safetensors`, or for big models several shards
`model-00001-of-0000N.safetensors` listed in `model.safetensors.index.json` (the Hugging
Face layout). `PackWriter` streams a pack shard by shard, so the sequential quantizer
never holds a whole model; `load_pack` builds the model on the `meta` device (no
random-init copy) and fills it shard by shard from memory-mapped files.

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
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from . import cpu_kernel
from .int_gemm import int4_bf16_available, pick_backend
from .qlinear import KERNEL_WEIGHTS, LayerSpec, QuantLinear, link_input_groups, storage_dtype

FORMAT = "omega-qvla-pack"
FORMAT_VERSION = 2  # 2: weights may be sharded (each tensor names its file); 1 is read too
READ_VERSIONS = (1, 2)
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
MANIFEST = "manifest.json"
SHARD_BYTES = 1 << 30
LARGE_BYTES = 512 << 20  # load_pack's "auto" choices: above this, parts count as large
KERNEL_LARGE_BYTES = 128 << 20  # "auto" kernel weights: int4 weights above this stay int4

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


def stored_state(module: nn.Module, prefix: str = "", float_dtype: torch.dtype | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """(tensors as a pack stores them, LayerSpec dicts of the QuantLinear layers) of
    `module`, names prefixed with `prefix`. Quantization state goes to its storage
    dtype (qlinear.storage_dtype: int32 packed codes, fp16 scales/rotations/tables,
    int16 permutations) — it is already held at that precision, so this is lossless;
    `float_dtype` casts the kept-in-float parts (None keeps their dtype)."""
    qnames = quantized_layers(module)
    tensors: dict[str, torch.Tensor] = {}
    for k, v in module.state_dict().items():
        v = v.detach().cpu()
        owner, leaf = k.rsplit(".", 1) if "." in k else ("", k)
        if owner in qnames:
            stored = storage_dtype(leaf, v)
            if v.is_floating_point() and not torch.equal(v.to(stored).to(v.dtype), v):
                raise ValueError(f"{prefix + k}: quantization state is not at its stored precision "
                                 f"({stored}); build layers with QuantLinear.from_parts")
            v = v.to(stored)
        elif float_dtype is not None and v.is_floating_point():
            v = v.to(float_dtype)
        tensors[prefix + k] = v.contiguous()
    return tensors, {prefix + n: spec.to_dict() for n, spec in qnames.items()}


class PackWriter:
    """Writes a pack as it is produced: `add()` tensors (or `add_module()`) in any number
    of calls, each shard flushed to disk once it holds `shard_bytes`; `finish()` names
    the shards, writes the index and the manifest. Memory: one shard's worth."""

    def __init__(self, out_dir: str | os.PathLike, float_dtype: torch.dtype | None = None,
                 shard_bytes: int = SHARD_BYTES) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.float_dtype, self.shard_bytes = float_dtype, shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.parts: list[tuple[Path, list[str]]] = []
        self.meta: dict[str, dict] = {}
        self.layers: dict[str, dict] = {}

    def add_module(self, module: nn.Module, prefix: str = "") -> None:
        tensors, layers = stored_state(module, prefix, self.float_dtype)
        self.layers.update(layers)
        self.add(tensors)

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for k, v in tensors.items():
            if k in self.meta or k in self.pending:
                raise ValueError(f"tensor {k!r} written twice")
            self.pending[k] = v.contiguous()
            self.pending_bytes += v.numel() * v.element_size()
            if self.pending_bytes >= self.shard_bytes:
                self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        path = self.out / f".part-{len(self.parts):05d}.safetensors"
        save_file(self.pending, str(path), metadata={"format": FORMAT})
        for k, v in self.pending.items():
            self.meta[k] = {"shape": list(v.shape), "dtype": _dtype_name(v)}
        self.parts.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self, model_info: dict, recipe: dict | None = None, calibration: dict | None = None,
               extra: dict | None = None, processor: dict | None = None,
               assets: dict[str, str | os.PathLike] | None = None, ignore: list[str] | None = None) -> Path:
        self.flush()
        if not self.parts:  # a model without tensors still gets a (empty) weights file
            save_file({}, str(self.out / WEIGHTS), metadata={"format": FORMAT})
            names = [WEIGHTS]
        elif len(self.parts) == 1:
            os.replace(self.parts[0][0], self.out / WEIGHTS)
            names = [WEIGHTS]
        else:
            names = [f"model-{i + 1:05d}-of-{len(self.parts):05d}.safetensors" for i in range(len(self.parts))]
            for (path, _), name in zip(self.parts, names):
                os.replace(path, self.out / name)
        for (_, keys), name in zip(self.parts, names):
            os.chmod(self.out / name, 0o644)
            for k in keys:
                self.meta[k]["file"] = name
        files = {n: {"bytes": (self.out / n).stat().st_size, "sha256": sha256_file(self.out / n)} for n in names}
        if len(names) > 1:
            index = {"metadata": {"total_size": sum(f["bytes"] for f in files.values())},
                     "weight_map": {k: m["file"] for k, m in sorted(self.meta.items())}}
            (self.out / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True))
            files[INDEX] = {"bytes": (self.out / INDEX).stat().st_size, "sha256": sha256_file(self.out / INDEX)}
        for name, src in (assets or {}).items():
            if Path(name).name != name or name in (WEIGHTS, MANIFEST, INDEX) or name.startswith("model-"):
                raise ValueError(f"asset name {name!r}: a plain file name other than the pack's own files")
            dst = self.out / name
            if Path(src).resolve() != dst.resolve():
                shutil.copyfile(src, dst)
            files[name] = {"bytes": dst.stat().st_size, "sha256": sha256_file(dst)}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model_info,
            "recipe": recipe,
            "layers": self.layers,
            "tensors": self.meta,
            "calibration": calibration or {},
            "extra": extra or {},
            "files": files,
        }
        if processor is not None:
            manifest["processor"] = processor
        if self.layers:
            from .ct_format import quantization_config

            manifest["quantization_config"] = quantization_config(self.layers, recipe, ignore=ignore)
        (self.out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        return self.out


def save_pack(model: nn.Module, out_dir: str | os.PathLike, model_info: dict,
              recipe: dict | None = None, calibration: dict | None = None,
              extra: dict | None = None, float_dtype: torch.dtype | None = None,
              processor: dict | None = None, assets: dict[str, str | os.PathLike] | None = None,
              shard_bytes: int = SHARD_BYTES) -> Path:
    """Write `model` (FP or quantized) as a pack. `model_info` = {"family", "config", …}.
    `processor`: the processor config (a dict); `assets`: {name in the pack: source file}
    copied beside the weights and checksummed like them (e.g. a tokenizer file). The
    quantized layers are also described as a compressed-tensors `quantization_config`
    (quant/ct_format.py); unquantized linears are its ignore list."""
    w = PackWriter(out_dir, float_dtype, shard_bytes)
    w.add_module(model)
    ignore = sorted(n for n, m in model.named_modules() if type(m) is nn.Linear)
    return w.finish(model_info, recipe, calibration, extra, processor, assets, ignore=ignore)


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
    if m.get("format_version") not in READ_VERSIONS:
        raise PackVersionError(f"{path}: pack format version {m.get('format_version')!r}, "
                               f"this build reads versions {', '.join(map(str, READ_VERSIONS))}")
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
    if not _is(m["files"], dict):
        bad("field 'files' must map file names to their bytes and sha256")
    for k, meta in m["tensors"].items():
        if (not _is(meta, dict) or not _is(meta.get("shape"), list) or not all(_is(d, int) and d >= 0
                                                                               for d in meta["shape"])
                or not _is(meta.get("dtype"), str)):
            bad(f"entry for tensor {k!r} needs 'shape' (list of ints) and 'dtype'")
        if meta.get("file", WEIGHTS) not in m["files"]:
            bad(f"tensor {k!r} lives in {meta.get('file', WEIGHTS)!r}, which 'files' does not list")
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


def weight_files(manifest: dict) -> dict[str, list[str]]:
    """Weights file -> the tensor names the manifest puts in it (v1: all in model.safetensors)."""
    out: dict[str, list[str]] = {}
    for k, meta in manifest["tensors"].items():
        out.setdefault(meta.get("file", WEIGHTS), []).append(k)
    return out


def iter_tensors(pack_dir: str | os.PathLike, manifest: dict, device: str = "cpu"):
    """(name, tensor) for every tensor of the pack, one shard at a time (memory-mapped),
    checking names, shapes and dtypes against the manifest."""
    expected = manifest["tensors"]
    for fname, names in weight_files(manifest).items():
        f = Path(pack_dir) / fname
        try:
            handle = safe_open(str(f), framework="pt", device=device)
        except Exception as e:  # noqa: BLE001 - SafetensorError or an OS error: not a safetensors file
            raise PackFormatError(f"{f}: not a safetensors file ({type(e).__name__}: {e})") from None
        with handle as st:
            present = set(st.keys())
            for k in names:
                if k not in present:
                    raise PackMissingTensorError(f"{f}: tensor {k!r} listed in the manifest is missing")
            extra = sorted(present - set(names))
            if extra:
                raise PackUnexpectedTensorError(f"{f}: tensor {extra[0]!r} is not in the manifest")
            for k in names:
                t = st.get_tensor(k)
                meta = expected[k]
                if list(t.shape) != list(meta["shape"]):
                    raise PackShapeError(f"{f}: tensor {k!r} has shape {list(t.shape)}, "
                                         f"manifest says {meta['shape']}")
                if _dtype_name(t) != meta["dtype"]:
                    raise PackDtypeError(f"{f}: tensor {k!r} has dtype {_dtype_name(t)}, "
                                         f"manifest says {meta['dtype']}")
                yield k, t


def read_tensors(pack_dir: str | os.PathLike, manifest: dict, device: str = "cpu"
                 ) -> dict[str, torch.Tensor]:
    """Every tensor of a pack (checked); for small packs — `load_pack` streams instead."""
    return dict(iter_tensors(pack_dir, manifest, device))


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


def assign_tensor(model: nn.Module, name: str, t: torch.Tensor) -> None:
    """Put `t` in place of the parameter or buffer `name` (no copy into old storage)."""
    owner, leaf = name.rsplit(".", 1) if "." in name else ("", name)
    mod = model.get_submodule(owner)
    if leaf in mod._parameters:
        old = mod._parameters[leaf]
        mod._parameters[leaf] = nn.Parameter(t.to(old.dtype), requires_grad=old.requires_grad)
    else:
        mod._buffers[leaf] = t.to(mod._buffers[leaf].dtype)


def load_state_checked(model: nn.Module, tensors) -> None:
    """Fill `model` (on any device, `meta` too) from (name, tensor) pairs: every model
    tensor must come exactly once with its shape; tensors are assigned, not copied
    into existing storage, so a `meta` model never holds a second copy."""
    own = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    seen: set[str] = set()
    for k, t in (tensors.items() if isinstance(tensors, dict) else tensors):
        if k not in own:
            raise PackUnexpectedTensorError(f"pack tensor {k!r} has no place in the model")
        if tuple(t.shape) != own[k]:
            raise PackShapeError(f"tensor {k!r}: pack has shape {list(t.shape)}, model expects {list(own[k])}")
        assign_tensor(model, k, t)
        seen.add(k)
    missing = sorted(set(own) - seen)
    if missing:
        raise PackMissingTensorError(f"model expects tensor {missing[0]!r}, the pack has none")
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m._cache.clear()


def tensor_bytes(meta: dict) -> int:
    """Bytes of one manifest tensor entry ({"shape", "dtype"})."""
    return math.prod(meta["shape"]) * getattr(torch, meta["dtype"]).itemsize


def float_bytes(manifest: dict) -> int:
    """Bytes of a pack's floating-point tensors outside its quantized layers."""
    owners = set(manifest.get("layers") or {})
    return sum(tensor_bytes(meta) for k, meta in manifest["tensors"].items()
               if k.rsplit(".", 1)[0] not in owners and meta["dtype"] in ("float16", "bfloat16", "float32"))


def quantized_weight_bytes(manifest: dict) -> int:
    """Bytes of a pack's packed int4 weights."""
    return sum(tensor_bytes(meta) for k, meta in manifest["tensors"].items() if k.endswith(".weight_packed"))


def load_pack(pack_dir: str | os.PathLike, build_model: ModelBuilder | None = None,
              device: str | torch.device = "cpu", path: str = "auto", backend: str = "auto",
              float_storage: str = "float32", integer_codes: str = "keep",
              kernel_weights: str = "hold") -> tuple[nn.Module, dict]:
    """Verify and load a pack; returns (model in eval mode on `device`, manifest). The
    model is built on the `meta` device and filled shard by shard, so loading needs
    about the weights' size, never a random-init model beside them; integer-kernel
    caches are built here, not on the first inference.

    Memory options (the runtime uses the lean ones, see runtime/policy.py):
    `float_storage`: "float32" (the unquantized parts in float32), "stored" (large ones
    stay at the pack's fp16/bf16 and are upcast per call, float_storage.py) or "auto"
    ("stored" when they exceed 512 MiB). `integer_codes`: "drop" gives back a layer's
    packed int4 codes once its integer kernel holds them (the model can then run, not
    be saved again). `kernel_weights`: "hold" (integer kernels keep int8 weights, one
    byte per weight: twice the int4 codes; the fastest at small widths; at published widths
    "int4_avx2" measured within about 5% of it either way, bench/results/full_*.json), "int4_avx2" (our AVX2 kernel holds
    the int4 codes at half a byte per weight and unpacks them per tile: the pack's memory,
    exact; x86 CPUs with AVX2, where it is the `auto` backend), "int4_bf16" (the int4 codes held
    at half a byte per weight in torch's CPU int4 kernel: the pack's memory, outputs
    rounded to bf16, ≤ 2^-8 relative per layer), "per_call" (int8 weights rebuilt from the
    int4 codes on each call: the pack's memory, exact, slow — ~8 ns per weight here) or
    "auto": for a pack whose int4 weights exceed KERNEL_LARGE_BYTES (published sizes), every
    integer layer on "int4_avx2" where the layers' backend is our AVX2 kernel (x86 with
    AVX2), else "int4_bf16" where torch has that kernel (CPU), else "per_call" — no
    layer then holds unpacked weights; "hold" for smaller packs (bit-exact, fastest). The
    bf16 rounding is not bit-equal to the exact kernels, but no worse against FP: shipped
    Pi0.5 W4A4, 40 expert-episode observations, action rel-MSE vs FP 0.00958 (int4_bf16)
    vs 0.00962 (hold); a rounding flip moves an activation code, so the two differ from
    each other about as much as each differs from FP."""
    if kernel_weights not in KERNEL_WEIGHTS + ("auto",):
        raise ValueError(f"kernel_weights must be one of {KERNEL_WEIGHTS + ('auto',)}, got {kernel_weights!r}")
    on_cpu = torch.device(device).type == "cpu"
    int4_ok = on_cpu and int4_bf16_available()
    if kernel_weights == "int4_bf16" and not int4_ok:
        raise ValueError("kernel_weights 'int4_bf16' needs a CPU device and torch's CPU int4 kernel "
                         "(aten._weight_int4pack_mm_for_cpu); use hold or per_call")
    if kernel_weights == "int4_avx2" and not (on_cpu and cpu_kernel.available()):
        raise ValueError("kernel_weights 'int4_avx2' needs a CPU device and our AVX2 kernel "
                         f"({cpu_kernel.unavailable_reason() or device}); use hold, int4_bf16 or per_call")
    manifest = read_manifest(pack_dir)
    verify_files(pack_dir, manifest)
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
        with torch.device("meta"):
            model = build_model(info)
    except (ValueError, TypeError, KeyError) as e:
        raise PackFormatError(f"{pack_dir}: the manifest's model config does not build: {e}") from None
    with torch.device("meta"):
        install_quant_layers(model, manifest["layers"], path=path, backend=backend)
    if float_storage == "auto":
        float_storage = "stored" if float_bytes(manifest) > LARGE_BYTES else "float32"
    if float_storage == "stored":
        from .float_storage import eligible, keep_half

        by_dtype: dict[str, dict] = {}
        for name, m in eligible(model).items():
            dt = next((manifest["tensors"][k]["dtype"] for k in (f"{name}.{pn}" for pn, _ in
                       m.named_parameters(recurse=False)) if k in manifest["tensors"]), None)
            if dt in ("float16", "bfloat16"):
                by_dtype.setdefault(dt, {})[name] = m
        for dt, mods in by_dtype.items():
            keep_half(model, getattr(torch, dt), modules=mods)
    elif float_storage != "float32":
        raise ValueError(f"float_storage must be float32, stored or auto, got {float_storage!r}")
    load_state_checked(model, iter_tensors(pack_dir, manifest))
    model = model.to(device).eval()
    try:
        link_input_groups(model)
    except ValueError as e:
        raise PackFormatError(f"{pack_dir}: {e}") from None
    if kernel_weights == "auto":
        big = quantized_weight_bytes(manifest) > KERNEL_LARGE_BYTES
        if not big:
            kernel_weights = "hold"
        elif on_cpu and pick_backend(torch.device("cpu"), backend) == "avx2":
            kernel_weights = "int4_avx2"  # exact, and faster than int4_bf16 (with AVX-512 too)
        else:
            kernel_weights = "int4_bf16" if int4_ok else "per_call"
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.set_kernel_weights(kernel_weights, release_codes=integer_codes == "drop")
    return model, manifest


def pack_bytes(pack_dir: str | os.PathLike) -> dict[str, Any]:
    """Bytes on disk per tensor kind (for reports)."""
    manifest = read_manifest(pack_dir)
    sizes: dict[str, int] = {}
    for k, meta in manifest["tensors"].items():
        kind = k.rsplit(".", 1)[-1]
        sizes[kind] = sizes.get(kind, 0) + tensor_bytes(meta)
    return sizes
