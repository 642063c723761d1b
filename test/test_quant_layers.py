"""QuantLinear: integer path == reference path; recipes on a small network; packs."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from omega_qvla_ros.quant import (RECIPES, PackChecksumError, PackMissingTensorError,
                                  PackShapeError, PackTruncatedError, PackVersionError,
                                  QuantLinear, load_pack, quantize, save_pack)
from omega_qvla_ros.quant.context import denoising_step
from omega_qvla_ros.quant import cpu_kernel
from omega_qvla_ros.quant.int_gemm import fbgemm_available
from omega_qvla_ros.quant.pack import sha256_file
from omega_qvla_ros.tools.device_check import integer_layer
from omega_qvla_ros.tools.quant_suites import drift_inputs

STEPS = 4


SCOPES = {"backbone": [r"language_model\.layers\.\d+\.mlp\.(up|down)_proj$"],
          "action_head": [r"transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)$"]}


def scoped(recipe: str):
    return RECIPES[recipe].with_scopes(**SCOPES)


class TinyVLA(nn.Module):
    """Two 'backbone' and two 'action head' linears, named like the real checkpoints."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.language_model = nn.Module()
        self.language_model.layers = nn.ModuleList([nn.Module()])
        blk = self.language_model.layers[0]
        blk.mlp = nn.Module()
        blk.mlp.up_proj = nn.Linear(96, 136)
        blk.mlp.down_proj = nn.Linear(136, 96, bias=False)
        self.transformer_blocks = nn.ModuleList([nn.Module()])
        ff = self.transformer_blocks[0]
        ff.ff = nn.Module()
        ff.ff.net = nn.ModuleList([nn.Module(), nn.Identity(), nn.Linear(96, 100)])
        ff.ff.net[0].proj = nn.Linear(96, 96)

    def forward(self, x):
        blk = self.language_model.layers[0].mlp
        h = x + blk.down_proj(torch.relu(blk.up_proj(x)))
        ff = self.transformer_blocks[0].ff.net
        for t in range(STEPS):
            with denoising_step(t, STEPS):
                h = h + 0.1 * ff[0].proj(torch.tanh(h))
        return ff[2](h)


def batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(32, 96, generator=g) * torch.exp(torch.randn(96, generator=g)) for _ in range(n)]


@pytest.fixture(scope="module")
def quantized():
    fp = TinyVLA().eval()
    out = {}
    for r in RECIPES:
        m = copy.deepcopy(fp)
        quantize(m, scoped(r), batches(3, 0))
        out[r] = m
    return fp, out


def test_every_recipe_quantizes_the_scoped_layers(quantized):
    fp, models = quantized
    x = batches(1, 5)[0]
    with torch.no_grad():
        ref = fp(x)
    for r, m in models.items():
        q = [n for n, mod in m.named_modules() if isinstance(mod, QuantLinear)]
        assert len(q) == (0 if r == "fp16" else 4), r
        with torch.no_grad():
            y = m(x)
        assert torch.isfinite(y).all()
        err = float(((y - ref) ** 2).mean() / (ref ** 2).mean())
        assert err < (1e-12 if r == "fp16" else 0.2), (r, err)
    sides = {mod.spec.side for mod in models["omega_qvla_paper"].modules() if isinstance(mod, QuantLinear)}
    assert sides == {"backbone", "action_head"}
    head = models["omega_qvla_paper"].transformer_blocks[0].ff.net[0].proj
    assert head.spec.out_rotation and head.act_step_table.shape == (STEPS, 96)


def test_integer_recipe_runs_integer_end_to_end(quantized):
    _, models = quantized
    layers = [m for m in models["omega_qvla_int"].modules() if isinstance(m, QuantLinear)]
    assert layers and all(m.uses_integer_path() for m in layers)
    # per-input-channel step tables (head) and 128-column weight groups (in > 128) need
    # the reference path; a layer no wider than one group has per-channel scales anyway
    for r in ("omega_qvla_paper", "rtn", "smoothquant"):
        for m in models[r].modules():
            if isinstance(m, QuantLinear):
                blocked = m.spec.act_mode in ("static", "per_step") or m.in_features > 128
                assert m.uses_integer_path() == (not blocked), (r, m)
    q = models["omega_qvla_paper"].transformer_blocks[0].ff.net[0].proj
    q.path = "integer"
    with pytest.raises(ValueError, match="contraction axis"):
        q(torch.randn(2, 96))
    q.path = "auto"


BACKENDS = ["exact", "int_mm"] + (["fbgemm"] if fbgemm_available() else []) + (["avx2"] if cpu_kernel.available() else [])


def integer_vs_reference(q: QuantLinear, backend: str, steps: int = 10) -> list[float]:
    """max |integer − reference| / max |reference| of layer q on drifting inputs, at the
    first, a middle and the last denoising step."""
    x = drift_inputs(37, q.in_features, torch.Generator().manual_seed(4), steps=steps)
    rels = []
    for t in (0, steps // 2, steps - 1):
        with denoising_step(t, steps):
            q.path, q.backend = "reference", "auto"
            ref = q(x[t])
            q.path, q.backend = "integer", backend
            y = q(x[t])
        rels.append(float((y - ref).abs().max() / ref.abs().max()))
    return rels


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["dynamic", "per_step_factorized"])
def test_integer_path_equals_reference(backend, mode):
    n_in, n_out = 200, 136  # not multiples of 64; K padded for int_mm
    q = integer_layer(n_in, n_out, mode)[0]
    assert q.spec.act_mode == mode and q.spec.group_size is None
    assert max(integer_vs_reference(q, backend)) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("side", ["backbone", "action_head"])
@pytest.mark.parametrize("n_in", [128, 200])  # a dense run-time rotation; blocks and a tail
def test_default_recipe_integer_equals_reference(backend, side, n_in):
    """The default recipe's layers (one static scale folded into fbgemm's packed weight
    scales; a per-step scale given to fbgemm as its input scale) on every backend."""
    from omega_qvla_ros.tools.device_check import STEPS, default_layer

    q = default_layer(n_in, 136, side)
    assert q.spec.act_mode == ("static_tensor" if side == "backbone" else "per_step_factorized")
    assert max(integer_vs_reference(q, backend, STEPS)) < 1e-5


def _save(model, d):
    return save_pack(model, d, {"family": "test_tiny", "config": {}}, recipe={"name": "x"})


def test_pack_roundtrip_identical_outputs(quantized, tmp_path):
    _, models = quantized
    x = batches(1, 7)[0]
    for r in ("omega_qvla_paper", "omega_qvla_int", "smoothquant", "fp16"):
        d = _save(models[r], tmp_path / r)
        loaded, manifest = load_pack(d, build_model=lambda info: TinyVLA())
        assert torch.equal(loaded(x), models[r].eval()(x)), r
        assert manifest["files"]["model.safetensors"]["sha256"] == sha256_file(d / "model.safetensors")
    tensors = load_file(str(tmp_path / "omega_qvla_paper" / "model.safetensors"))
    packed = tensors["language_model.layers.0.mlp.up_proj.weight_packed"]
    assert packed.dtype == torch.int32 and packed.shape == (136, 12)
    assert "language_model.layers.0.mlp.up_proj.weight" not in tensors


@pytest.fixture()
def pack_dir(quantized, tmp_path):
    _, models = quantized
    return _save(models["omega_qvla_paper"], tmp_path / "pack")


def _rewrite(d, mutate):
    """Change the tensors, then re-sign the file in the manifest (a consistent but wrong pack)."""
    f = d / "model.safetensors"
    t = load_file(str(f))
    mutate(t)
    save_file(t, str(f))
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["model.safetensors"] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    (d / "manifest.json").write_text(json.dumps(m))


def _load(d):
    return load_pack(d, build_model=lambda info: TinyVLA())


def test_corrupt_flipped_byte(pack_dir):
    f = pack_dir / "model.safetensors"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x01
    f.write_bytes(bytes(b))
    with pytest.raises(PackChecksumError, match="sha256"):
        _load(pack_dir)


def test_corrupt_truncated(pack_dir):
    f = pack_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(PackTruncatedError, match="truncated"):
        _load(pack_dir)


def test_corrupt_missing_tensor(pack_dir):
    name = "transformer_blocks.0.ff.net.0.proj.act_step_table"
    _rewrite(pack_dir, lambda t: t.pop(name))
    with pytest.raises(PackMissingTensorError, match="act_step_table"):
        _load(pack_dir)


def test_corrupt_wrong_shape(pack_dir):
    name = "language_model.layers.0.mlp.up_proj.weight_scale"

    def mutate(t):
        t[name] = torch.ones(3, 3, dtype=torch.float16)
    _rewrite(pack_dir, mutate)
    with pytest.raises(PackShapeError, match="weight_scale"):
        _load(pack_dir)
    # a manifest re-written to match the wrong shape is caught by the model skeleton
    m = json.loads((pack_dir / "manifest.json").read_text())
    m["tensors"][name]["shape"] = [3, 3]
    (pack_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackShapeError, match="model expects"):
        _load(pack_dir)


def test_wrong_version(pack_dir):
    m = json.loads((pack_dir / "manifest.json").read_text())
    m["format_version"] = 99
    (pack_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackVersionError, match="version 99"):
        _load(pack_dir)


def test_pack_has_no_pickle(pack_dir):
    assert sorted(p.name for p in pack_dir.iterdir()) == ["manifest.json", "model.safetensors"]
    assert not shutil.which("nonexistent")  # keep pytest from treating this as trivial
    head = (pack_dir / "model.safetensors").read_bytes()[:8]
    assert int.from_bytes(head, "little") > 0  # safetensors header length, not a pickle opcode


def test_corrupt_wrong_dtype(pack_dir):
    from omega_qvla_ros.quant import PackDtypeError
    name = "language_model.layers.0.mlp.up_proj.weight_scale"

    def mutate(t):
        t[name] = t[name].float()
    _rewrite(pack_dir, mutate)
    with pytest.raises(PackDtypeError, match="float32"):
        _load(pack_dir)


def test_pack_stores_quant_state_compactly(pack_dir):
    m = json.loads((pack_dir / "manifest.json").read_text())["tensors"]
    assert m["language_model.layers.0.mlp.up_proj.weight_packed"]["dtype"] == "int32"
    assert m["language_model.layers.0.mlp.up_proj.weight_scale"]["dtype"] == "float16"
    assert m["language_model.layers.0.mlp.up_proj.input_perm"]["dtype"] == "int16"
    assert m["language_model.layers.0.mlp.up_proj.input_rot_blocks"]["dtype"] == "int8"
    assert m["language_model.layers.0.mlp.up_proj.input_rot_blocks_scale"]["dtype"] == "float16"
