"""compressed-tensors reads our packs: its own parser takes our quantization_config and
its own pack-quantized compressor decompresses our weight_packed + weight_scale to
exactly the weights QuantLinear dequantizes (per channel, 128-groups, ragged groups).
"""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

ct = pytest.importorskip("compressed_tensors")  # pinned in requirements/dev.txt

from compressed_tensors.compressors import ModelCompressor  # noqa: E402
from compressed_tensors.compressors.pack_quantized.base import (  # noqa: E402
    PackedQuantizationCompressor)
from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig,  # noqa: E402
                                             QuantizationScheme, apply_quantization_config)
from compressed_tensors.quantization.utils.helpers import (  # noqa: E402
    compute_dynamic_scales_and_zp)
from compressed_tensors.transform import TransformConfig, apply_transform_config  # noqa: E402
from transformers import CompressedTensorsConfig  # noqa: E402

from omega_qvla_ros.quant import RECIPES, quantize, read_manifest, save_pack  # noqa: E402
from omega_qvla_ros.quant.ct_format import (CT_VERSION, EXTENSION_KEY,  # noqa: E402
                                            quantization_config)
from omega_qvla_ros.quant.int4 import per_token_scales  # noqa: E402
from omega_qvla_ros.quant.pack import read_tensors  # noqa: E402
from omega_qvla_ros.tools.quant_suites import drift_inputs, stepped_forward  # noqa: E402

STEPS = 4
STOCK = {"weight_packed", "weight_scale", "weight_shape", "bias"}


def _hadamard_fp16():
    r = RECIPES["hadamard"]
    return dataclasses.replace(r, backbone=dataclasses.replace(r.backbone, rotation_storage="fp16"))


# name: (recipe, side, in, out) — per channel and 128-groups, in multiple of 128 or ragged
CASES = {
    "ch_256": ("omega_qvla_int", "backbone", 256, 72),
    "ch_203": ("omega_qvla_int", "backbone", 203, 40),
    "head_200": ("omega_qvla_int", "action_head", 200, 72),
    "g128_256": ("rtn", "backbone", 256, 40),
    "g128_200": ("rtn", "backbone", 200, 40),
    "g128_1030": ("omega_qvla_paper", "action_head", 1030, 72),
    "had_256": ("hadamard_fp16", "backbone", 256, 40),
}
RAGGED = {"g128_200", "g128_1030"}
LAYOUT = {"ch_256": "channel", "ch_203": "channel", "head_200": "channel", "g128_256": "group",
          "g128_200": "group_ragged_as_block", "g128_1030": "group_ragged_as_block",
          "had_256": "group"}


def _quantized_layer(recipe: str, side: str, n_in: int, n_out: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    rec = _hadamard_fp16() if recipe == "hadamard_fp16" else RECIPES[recipe]
    rec = rec.with_scopes(**{side: [r"^0$"]})
    seq = nn.Sequential(nn.Linear(n_in, n_out))
    cal = drift_inputs(16, n_in, torch.Generator().manual_seed(seed), steps=STEPS)
    quantize(seq, rec, [cal], forward=stepped_forward(STEPS))
    return seq[0]


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """A pack of every case under `blocks.<case>`, its manifest, tensors and config."""
    model = nn.Module()
    model.blocks = nn.ModuleDict({k: _quantized_layer(*v, seed=i) for i, (k, v) in enumerate(CASES.items())})
    out = save_pack(model, tmp_path_factory.mktemp("ct") / "pack", {"family": "ct_test", "config": {}})
    manifest = read_manifest(out)
    cfg = json.loads(json.dumps(quantization_config(manifest["layers"], manifest["recipe"])))
    return model, manifest, read_tensors(out, manifest), cfg


def _skeleton(dtype: torch.dtype) -> nn.Module:
    """The float model a compressed-tensors reader would build (empty nn.Linear)."""
    with torch.device("meta"):
        m = nn.Module()
        m.blocks = nn.ModuleDict({k: nn.Linear(v[2], v[3], dtype=dtype) for k, v in CASES.items()})
    return m


def _decompress_with_ct(cfg: dict, tensors: dict, dtype: torch.dtype) -> nn.Module:
    """The transformers → compressed-tensors load path: parse config.json's
    quantization_config, initialize, compress on meta, load the pack's stock tensors (cast
    to the model dtype like a loader does), decompress."""
    compressor = ModelCompressor.from_compression_config(
        CompressedTensorsConfig.from_dict({"quantization_config": cfg}))
    model = _skeleton(dtype)
    apply_quantization_config(model, compressor.quantization_config, show_progress=False)
    compressor.compress_model(model)
    state = {}
    for k, v in model.state_dict().items():
        t = tensors[k]
        state[k] = t.to(dtype) if t.is_floating_point() else t
    model.load_state_dict(state, strict=True, assign=True)
    compressor.decompress_model(model)
    return model


def test_config_parses_with_compressed_tensors(pack):
    _model, manifest, _tensors, cfg = pack
    assert ct.__version__ == CT_VERSION
    qc = QuantizationConfig.model_validate(cfg)
    assert qc.format == "pack-quantized" and qc.quant_method == "compressed-tensors"
    by_layer = {t: s for s in qc.config_groups.values() for t in s.targets}
    assert set(by_layer) == set(manifest["layers"])
    for name, spec in manifest["layers"].items():
        w = by_layer[name].weights
        assert (w.num_bits, w.type, w.symmetric) == (4, "int", True)
        if spec["group_size"] is None:
            assert w.strategy == "channel"
        elif spec["in_features"] % spec["group_size"]:
            assert w.strategy == "block" and w.block_structure == [1, spec["group_size"]]
        else:
            assert w.strategy == "group" and w.group_size == spec["group_size"]
        act = by_layer[name].input_activations
        if spec["act_mode"] == "dynamic":
            assert (act.strategy, act.dynamic, act.num_bits) == ("token", True, 4)
        else:
            assert act is None
    # rotations: only the fp16 Hadamard layer is a stock transform
    tc = TransformConfig.model_validate(cfg["transform_config"])
    targets = {t for s in tc.config_groups.values() for a in s.apply for t in a.targets}
    assert targets == {"blocks.had_256"}


def test_extension_names_every_nonstock_tensor(pack):
    """Nothing is silently dropped: each pack tensor of a quantized layer is either a
    stock compressed-tensors tensor or named by the extension of its config group."""
    _model, manifest, _tensors, cfg = pack
    ext = cfg[EXTENSION_KEY]
    assert ext["version"] == 1
    for group, sch in cfg["config_groups"].items():
        e = ext["config_groups"][group]
        named = {e["input_channel_div"], e["activations"].get("tensor")}
        for rot in (e["input_rotation"], e["output_rotation"]):
            named |= set((rot or {}).get("tensors", {}).values())
        for layer in sch["targets"]:
            leaves = {k[len(layer) + 1:] for k in manifest["tensors"] if k.startswith(layer + ".")}
            assert leaves - STOCK == named - {None}, layer
            assert e["weight_layout"] == LAYOUT[layer.removeprefix("blocks.")]
            assert e["stock_forward_exact"] is False  # every recipe quantizes activations


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ct_decompresses_our_weights_bit_exactly(pack, dtype):
    model, _manifest, tensors, cfg = pack
    ct_model = _decompress_with_ct(cfg, tensors, dtype)
    for name in CASES:
        ours = model.blocks[name].dequantized_weight()
        theirs = ct_model.blocks[name].weight
        assert theirs.dtype == dtype
        assert torch.equal(theirs, ours.to(dtype)), name  # fp32: exact; fp16: ours rounded once


def test_ragged_groups_need_block_strategy(pack):
    """compressed-tensors' "group" dequantizer refuses a short last group; "block" [1, 128]
    reads it, and so does "group" when in_features is a multiple of 128."""
    model, manifest, tensors, _cfg = pack
    for name in CASES:
        layer = f"blocks.{name}"
        if manifest["layers"][layer]["group_size"] is None:
            continue
        sd = {k: tensors[f"{layer}.{k}"].float() if k == "weight_scale" else tensors[f"{layer}.{k}"]
              for k in ("weight_packed", "weight_scale", "weight_shape")}
        group = QuantizationScheme(targets=[layer], weights=QuantizationArgs(
            num_bits=4, type="int", symmetric=True, strategy="group", group_size=128))
        ours = model.blocks[name].dequantized_weight()
        if name in RAGGED:
            with pytest.raises(ValueError, match="group_size"):
                PackedQuantizationCompressor.decompress(sd, group)
        else:
            assert torch.equal(PackedQuantizationCompressor.decompress(sd, group)["weight"], ours)


def test_stock_hadamard_transform_is_our_rotation(pack):
    """compressed-tensors' own "hadamard" transform, built from our config, is the layer's
    stored rotation (matrix bit-equal, and the same activations)."""
    model, _manifest, _tensors, cfg = pack
    ours = model.blocks["had_256"]
    lin = nn.Module()
    lin.blocks = nn.ModuleDict({"had_256": nn.Linear(256, 40)})
    apply_transform_config(lin, TransformConfig.model_validate(cfg["transform_config"]))
    (t,) = [m for n, m in lin.blocks["had_256"].named_children() if n.endswith("_input")]
    H = t.weight.double() / math.sqrt(t.weight.shape[0])
    assert H.shape == (64, 64)
    for b in ours.input_rot_blocks:
        assert torch.equal(b.double(), H)
    x = torch.randn(5, 256)
    torch.testing.assert_close(t(x), ours._rotation("input").apply(x), rtol=0, atol=1e-6)


def test_dynamic_token_scale_rule_differs():
    """Why the extension records our per-token rule: ours max|x|/7, theirs max|x|/7.5."""
    x = torch.randn(1, 6, 64)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="token", dynamic=True)
    scale, _zp = compute_dynamic_scales_and_zp(x, args, nn.Linear(64, 8))
    amax = x.abs().amax(dim=-1, keepdim=True)
    torch.testing.assert_close(scale, amax / 7.5)
    torch.testing.assert_close(per_token_scales(x), amax / 7)
