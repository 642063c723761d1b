"""A pack's layers as a compressed-tensors `quantization_config` (what `config.json`
holds under "quantization_config" in a Hugging Face folder), so that compressed-tensors,
llm-compressor, transformers and vLLM can read our int4 weights.

Pure dict building: no torch, no model-family knowledge. Input is the manifest's
`layers` (LayerSpec dicts by module name) and `recipe`.

What maps onto stock compressed-tensors (verified against CT_VERSION by
test/test_ct_interop.py, which decompresses our tensors with compressed-tensors' own
pack-quantized compressor and compares bit for bit):
- weights: `format` "pack-quantized", int4 symmetric. Tensors `weight_packed` [out,
  ceil(in/8)] int32, `weight_scale` [out, G], `weight_shape` [2] are read unchanged.
  group_size None → strategy "channel"; group_size g dividing in_features → strategy
  "group". Ragged groups (g does not divide in_features; our last group is shorter):
  compressed-tensors' "group" dequantizer refuses them (ValueError "tensor column shape
  must be divisble by the given group_size"), but strategy "block" with
  block_structure [1, g] pads the last block and dequantizes exactly our layout, so
  such layers get that strategy (the extension says so per group: a runtime that only
  knows group/channel int4 kernels cannot take them as group layers).
  Scales are fp16 in the pack: load in float16 or float32 (bfloat16 rounds them).
- dynamic per-token int4 activations → input_activations {strategy "token", dynamic}.
  Caveat (extension): our per-token scale is max|x|/7, compressed-tensors' symmetric
  rule is max|x|/7.5, so the activation codes differ at the top of the range.
- rotation "hadamard" held in fp16 with no tail block (in_features % block == 0,
  block a power of 4 so 1/√block is exact in fp16) → `transform_config` scheme
  "hadamard" with head_dim = block, locations "input" (online: x·H) + "weight_input"
  inverse (offline: the stored weight already holds W·H), as llm-compressor's QuIP
  writes it; our H_block is the same Sylvester matrix. (transformers 5.24 itself
  does not read transform_config; compressed-tensors' apply_transform_config does.)

Everything else is an extension under EXTENSION_KEY ("omega_qvla", version
EXTENSION_VERSION) inside the quantization_config; compressed-tensors ignores unknown
keys there. `omega_qvla.config_groups[name]` describes the layers of the stock group of
the same name:
- weight_layout: "channel" | "group" | "group_ragged_as_block".
- input_rotation (modes "omega", "svd", "random_hadamard", and "hadamard" held as int8
  or with a tail block): per-layer learned block matrices and a permutation, which no
  compressed-tensors transform expresses (its transforms are one generated matrix per
  size, no permutation, no tail). With tensors (names relative to the layer):
      x̃ = x[:, perm] · blockdiag(R_1 … R_m, R_tail)
      R_b = input_rot_blocks[b] (· input_rot_blocks_scale[b] when stored as int8),
      R_tail = input_rot_tail (· input_rot_tail_scale); perm = input_perm (absent:
      identity); blocks of `block` channels, a tail of in_features % block.
- input_channel_div: z = x̃ / input_channel_div (SmoothQuant-style divisor folded
  into the weights).
- activations (mode "static", "static_tensor", "per_step", "per_step_factorized"): a scale per input
  channel or per denoising step, not a compressed-tensors activation scheme; stock
  readers see these layers as weight-only. a = clamp(round(z / s), -8, 7) · s with
  s = act_scale [in] | act_step_table[t] [in] | act_step_scale[t] (scalar); t = the
  denoising step's row (nearest calibrated step; outside the loop, the step mean).
- output_rotation: y = (a Ŵᵀ) · blockdiag(Q_1 … Q_m, Q_tail)ᵀ + bias, Q_b from
  output_rot_blocks / output_rot_tail (+ _scale), blocks of `block` output rows, no
  permutation (the stored weight is blockdiag(Q)ᵀ·W̃).
- stock_forward_exact: whether a stock compressed-tensors forward reproduces the
  layer's output (weights are exact in every group either way).
"""
from __future__ import annotations

import json
from typing import Any

CT_METHOD = "compressed-tensors"
CT_FORMAT = "pack-quantized"
CT_VERSION = "0.20.1"  # the compressed-tensors version the layout is verified against
EXTENSION_KEY = "omega_qvla"
EXTENSION_VERSION = 1
ACT_EXTENSION_MODES = ("static", "static_tensor", "per_step", "per_step_factorized")

_INT4 = {"num_bits": 4, "type": "int", "symmetric": True, "dynamic": False}

MATH = {
    "input_rotation": "x̃ = x[:, perm] · blockdiag(R_1 … R_m, R_tail); R = stored block "
                      "(int8 codes · per-block scale, or fp16)",
    "input_channel_div": "z = x̃ / input_channel_div",
    "activations": "a = clamp(round(z / s), -8, 7) · s; dynamic s = max_j |z_j| / 7 per "
                   "token; static s = act_scale (per channel); static_tensor s = act_scale (one "
                   "value, after the channel divisor); per_step s = act_step_table[t]; "
                   "per_step_factorized s = act_step_scale[t]",
    "weights": "Ŵ = codes · weight_scale (expanded per group; the last group may be short)",
    "output": "y = (a Ŵᵀ) · blockdiag(Q)ᵀ + bias (output_rotation), else a Ŵᵀ + bias",
}


def group_count(in_features: int, group_size: int | None) -> int:
    """Columns of weight_scale: 1 (per channel) or ceil(in / group_size)."""
    if group_size is None or group_size >= in_features:
        return 1
    return -(-in_features // group_size)


def weight_args(spec: dict) -> tuple[dict, str]:
    """compressed-tensors weight args for a layer, and our layout name for it."""
    n, g = spec["in_features"], spec.get("group_size")
    if group_count(n, g) == 1:
        return {**_INT4, "strategy": "channel"}, "channel"
    if n % g == 0:
        return {**_INT4, "strategy": "group", "group_size": g}, "group"
    # "group" refuses a short last group; "block" [1, g] pads it and reads our scales
    return {**_INT4, "strategy": "block", "block_structure": [1, g]}, "group_ragged_as_block"


def input_activation_args(spec: dict) -> dict | None:
    """Stock activation args where our mode maps (dynamic per token), else None."""
    if spec.get("act_mode") == "dynamic":
        return {**_INT4, "strategy": "token", "dynamic": True}
    return None


def _is_power_of_4(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0 and (n.bit_length() - 1) % 2 == 0


def stock_hadamard(spec: dict) -> bool:
    """True when the input rotation is exactly compressed-tensors' "hadamard" transform:
    identical H_block blocks (no permutation, no tail) held exactly (fp16, 1/√block a
    power of two)."""
    block = spec.get("block", 64)
    return (spec.get("rotation") == "hadamard" and spec.get("rotation_storage") == "fp16"
            and spec["in_features"] % block == 0 and _is_power_of_4(block))


def _rot_tensors(prefix: str, n: int, block: int, int8: bool, perm: bool) -> dict:
    """Tensor names (relative to the layer) holding a block rotation of n channels."""
    names: dict[str, str | None] = {"perm": f"{prefix}_perm" if perm else None}
    for part, present in (("blocks", n >= block), ("tail", n % block != 0)):
        names[part] = f"{prefix}_rot_{part}" if present else None
        names[f"{part}_scale"] = f"{prefix}_rot_{part}_scale" if present and int8 else None
    return names


def input_rotation(spec: dict) -> dict | None:
    mode = spec.get("rotation", "none")
    if mode == "none":
        return None
    n, block = spec["in_features"], spec.get("block", 64)
    storage = spec.get("rotation_storage", "int8")
    return {"mode": mode, "block": block, "tail_size": n % block, "storage": storage,
            "in_transform_config": stock_hadamard(spec),
            "tensors": _rot_tensors("input", n, block, storage == "int8",
                                    perm=mode in ("omega", "svd"))}


def output_rotation(spec: dict) -> dict | None:
    if not spec.get("out_rotation"):
        return None
    n, block = spec["out_features"], spec.get("block", 64)
    storage = spec.get("rotation_storage", "int8")
    return {"block": block, "tail_size": n % block, "storage": storage,
            "tensors": _rot_tensors("output", n, block, storage == "int8", perm=False)}


def activations(spec: dict) -> dict:
    mode = spec.get("act_mode", "dynamic")
    out: dict[str, Any] = {"mode": mode, "in_input_activations": mode == "dynamic"}
    if mode == "dynamic":
        out["scale"] = "max|z| / 7 per token (compressed-tensors: max|z| / 7.5)"
    elif mode in ACT_EXTENSION_MODES:
        out["tensor"] = {"static": "act_scale", "static_tensor": "act_scale", "per_step": "act_step_table",
                         "per_step_factorized": "act_step_scale"}[mode]
        out["steps"] = spec.get("steps", 0)
    return out


def extension(spec: dict) -> dict:
    """Everything about a layer that stock compressed-tensors does not say."""
    rot_in, rot_out = input_rotation(spec), output_rotation(spec)
    act = activations(spec)
    exact = ((rot_in is None or rot_in["in_transform_config"]) and rot_out is None
             and not spec.get("channel_div") and act["mode"] == "none")
    return {"weight_layout": weight_args(spec)[1], "input_rotation": rot_in,
            "output_rotation": rot_out,
            "input_channel_div": "input_channel_div" if spec.get("channel_div") else None,
            "activations": act, "stock_forward_exact": bool(exact)}


def scheme(spec: dict) -> dict:
    """The stock part of a layer's description (targets added by the caller)."""
    return {"weights": weight_args(spec)[0], "input_activations": input_activation_args(spec),
            "output_activations": None, "format": CT_FORMAT}


def _group_layers(layers: dict[str, dict]) -> list[tuple[dict, dict, list[str]]]:
    """(scheme, extension, names) per distinct description, in sorted-name order."""
    groups: dict[str, tuple[dict, dict, list[str]]] = {}
    for name in sorted(layers):
        sch, ext = scheme(layers[name]), extension(layers[name])
        key = json.dumps([sch, ext], sort_keys=True)
        groups.setdefault(key, (sch, ext, []))[2].append(name)
    return list(groups.values())


def _transform_config(hadamard: dict[int, list[str]]) -> dict:
    """Stock "hadamard" transforms (per block size) in llm-compressor's QuIP layout."""
    return {"config_groups": {
        f"hadamard_{block}": {"type": "hadamard", "head_dim": block, "apply": [
            {"targets": names, "location": "input"},
            {"targets": names, "location": "weight_input", "inverse": True},
        ]} for block, names in sorted(hadamard.items())}}


def quantization_config(layers: dict[str, dict], recipe: dict | None = None,
                        ignore: list[str] | None = None) -> dict:
    """compressed-tensors quantization_config for quantized `layers` (LayerSpec dicts by
    module name, as in a manifest). `ignore`: linears left in float (the caller knows
    the model). Targets are the exact module names (compressed-tensors matches a plain
    target by equality)."""
    config_groups, ext_groups = {}, {}
    hadamard: dict[int, list[str]] = {}
    for i, (sch, ext, names) in enumerate(_group_layers(layers)):
        config_groups[f"group_{i}"] = {"targets": names, **sch}
        ext_groups[f"group_{i}"] = ext
        if ext["input_rotation"] and ext["input_rotation"]["in_transform_config"]:
            hadamard.setdefault(ext["input_rotation"]["block"], []).extend(names)
    out: dict[str, Any] = {
        "quant_method": CT_METHOD, "format": CT_FORMAT, "version": CT_VERSION,
        "quantization_status": "compressed", "config_groups": config_groups,
        "ignore": sorted(ignore or []), "kv_cache_scheme": None,
    }
    if hadamard:
        out["transform_config"] = _transform_config(hadamard)
    out[EXTENSION_KEY] = {
        "version": EXTENSION_VERSION,
        "recipe": (recipe or {}).get("name"),
        "math": MATH,
        "config_groups": ext_groups,
    }
    return out
