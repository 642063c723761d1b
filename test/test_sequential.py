"""Sequential (block-by-block, bounded-memory) quantization equals the all-in-memory
quantization of the same recipe on small models with several blocks: the same codes,
scales, rotations and per-step tables, bit for bit, and the same actions; the pack is
streamed in shards and loads into a meta-built model."""
from __future__ import annotations

import copy

import pytest
import torch

from omega_qvla_ros.models import build_model, model_info
from omega_qvla_ros.models.calibrate import quantize_model, synthetic_observations
from omega_qvla_ros.models.sequential import PackWeights, quantize_sequential
from omega_qvla_ros.quant.pack import PackWriter, load_pack, read_manifest, save_pack
from omega_qvla_ros.quant import int_gemm
from omega_qvla_ros.quant.qlinear import LayerSpec, QuantLinear


# The default with a Hessian budget smaller than any layer's, on each family; two other
# recipes with the whole Hessian.
@pytest.mark.parametrize("family,recipe,budget", [("pi05", "omega_qvla", 1), ("gr00t", "omega_qvla", 1),
                                                  ("pi05", "omega_qvla_int", None), ("gr00t", "rtn", None)])
def test_sequential_equals_all_in_memory(tmp_path, family, recipe, budget, monkeypatch):
    """Bit for bit, also with a Hessian budget smaller than any layer's: the action stage
    then calibrates and solves one parent module's layers at a time (siblings that may
    share an input stay together; its run repeated on the FP model)."""
    if budget is None:
        _sequential_equals_all_in_memory(tmp_path, family, recipe)
        return
    import importlib

    from omega_qvla_ros.models import sequential

    qmod = importlib.import_module("omega_qvla_ros.quant.quantize")  # the package re-exports a function of that name

    groups: list[int] = []
    solve = qmod._solve_group
    monkeypatch.setattr(qmod, "_solve_group", lambda model, targets, *a, **k: (
        groups.append(len(targets)), solve(model, targets, *a, **k))[1])
    monkeypatch.setattr(sequential, "HESSIAN_BUDGET", budget)
    _sequential_equals_all_in_memory(tmp_path, family, recipe)
    assert sum(1 for g in groups if g <= 4) >= 4  # the action stage: one attention or MLP at a time


def _sequential_equals_all_in_memory(tmp_path, family, recipe):
    fp = build_model(family, "tiny", seed=1).eval()
    obs = synthetic_observations(fp.config, 2, seed=3)
    ref = quantize_model(copy.deepcopy(fp), recipe, obs, seed=0)

    save_pack(fp, tmp_path / "fp", model_info(fp, "tiny"))
    meta = build_model(family, "tiny", device="meta")
    writer = PackWriter(tmp_path / "q", shard_bytes=200_000)  # several shards even for a tiny model
    rep = quantize_sequential(meta, PackWeights(tmp_path / "fp"), recipe, obs, writer=writer, seed=0)
    writer.finish(model_info(meta, "tiny"), recipe=meta.quantization_report["recipe_dict"])
    assert all(p.is_meta for p in meta.parameters())  # every stage gave its weights back
    assert len(rep.stages) > 8 and sum(s["quantized"] for s in rep.stages) == len(ref.quantization_report["layers"])

    m = read_manifest(tmp_path / "q")
    assert len([f for f in m["files"] if f.endswith(".safetensors")]) > 2 and "model.safetensors.index.json" in m["files"]
    seq, _ = load_pack(tmp_path / "q")
    want = {k: v for k, v in ref.state_dict().items()}
    got = seq.state_dict()
    qnames = [n for n, mod in ref.named_modules() if isinstance(mod, QuantLinear)]
    assert qnames and all(isinstance(seq.get_submodule(n), QuantLinear) for n in qnames)
    for k, v in want.items():
        owner = k.rsplit(".", 1)[0]
        if owner in qnames:  # quantization state: bit for bit
            assert torch.equal(got[k], v.to(got[k].dtype)), k
        else:
            assert torch.equal(got[k], v), k
    with torch.no_grad():
        n = torch.randn(2, fp.config.action_horizon, fp.config.action_dim, generator=torch.Generator().manual_seed(5))
        assert torch.equal(seq.sample_actions(obs[0], noise=n), ref.sample_actions(obs[0], noise=n))


def test_pack_loads_into_a_meta_model_without_a_random_copy(tmp_path, monkeypatch):
    """load_pack never initialises weights it is about to overwrite."""
    fp = build_model("pi05", "tiny", seed=1).eval()
    save_pack(fp, tmp_path / "p", model_info(fp, "tiny"), shard_bytes=100_000)
    calls = []
    import omega_qvla_ros.models.common as common
    real = common.init_weights
    monkeypatch.setattr(common, "init_weights", lambda m: (calls.append(1), real(m)))
    monkeypatch.setattr("omega_qvla_ros.models.pi05.modeling.init_weights", common.init_weights)
    m, _ = load_pack(tmp_path / "p")
    assert not calls and not any(p.is_meta for p in m.parameters())
    for k, v in fp.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k


@pytest.mark.parametrize("family", ["pi05", "gr00t"])
def test_lean_loading_keeps_half_weights_and_gives_the_same_actions(tmp_path, monkeypatch, family):
    """float_storage='stored' keeps the big unquantized modules at fp16 (upcast per call)
    and integer_codes='drop' frees the int4 codes an integer kernel holds: the actions
    are bit-identical to a float32 load, and the lean model refuses to be saved."""
    from omega_qvla_ros.quant import float_storage

    monkeypatch.setattr(float_storage, "MIN_PARAMS", 4096)  # the tiny model's modules count as large
    fp = build_model(family, "tiny", seed=1).eval()
    obs = synthetic_observations(fp.config, 1, seed=3)
    q = quantize_model(copy.deepcopy(fp), "omega_qvla_int", obs)
    save_pack(q, tmp_path / "p", model_info(q, "tiny"), recipe=q.quantization_report["recipe_dict"],
              float_dtype=torch.float16)
    ref, _ = load_pack(tmp_path / "p")
    lean, _ = load_pack(tmp_path / "p", float_storage="stored", integer_codes="drop")
    halves = [n for n, p in lean.named_parameters() if p.dtype == torch.float16]
    assert halves and set(float_storage.eligible(ref)) == {n.rsplit(".", 1)[0] for n in halves}
    assert not any(isinstance(lean.get_submodule(n.rsplit(".", 1)[0]), QuantLinear) for n in halves)
    if family == "gr00t":  # the embodiment-specific encoders stay half too (their own forward upcasts a slice)
        assert any(n.endswith(".W") for n in halves)
    n = torch.randn(2, fp.config.action_horizon, fp.config.action_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(lean.sample_actions(obs[0], noise=n), ref.sample_actions(obs[0], noise=n))
    integer = [m for m in lean.modules() if isinstance(m, QuantLinear) and m.uses_integer_path()]
    if integer and integer[0].weight_packed.is_meta:  # fbgemm available: the codes are gone
        with pytest.raises(RuntimeError, match="gave back its int4 codes"):
            lean.state_dict()


def test_kernel_weights_per_call_gives_the_same_actions_and_holds_nothing(tmp_path, monkeypatch):
    """kernel_weights='per_call' rebuilds each integer kernel's int8 weights from the int4
    codes on every call and keeps none (the codes stay): actions bit-identical. 'auto' keeps
    a big pack's layers at int4 (int4_avx2 where our AVX2 kernel is the backend, else
    int4_bf16 where torch has the CPU kernel, else per_call)."""
    from omega_qvla_ros.quant import pack as pack_mod

    fp = build_model("pi05", "tiny", seed=1).eval()
    obs = synthetic_observations(fp.config, 1, seed=3)
    q = quantize_model(copy.deepcopy(fp), "omega_qvla", obs)
    save_pack(q, tmp_path / "p", model_info(q, "tiny"), recipe=q.quantization_report["recipe_dict"])
    n = torch.randn(2, fp.config.action_horizon, fp.config.action_dim, generator=torch.Generator().manual_seed(5))
    hold, _ = load_pack(tmp_path / "p", integer_codes="drop", kernel_weights="hold")
    per_call, _ = load_pack(tmp_path / "p", integer_codes="drop", kernel_weights="per_call")
    with torch.no_grad():
        want = hold.sample_actions(obs[0], noise=n)
        assert torch.equal(per_call.sample_actions(obs[0], noise=n), want)
    layers = [m for m in per_call.modules() if isinstance(m, QuantLinear)]
    assert layers and all(m.uses_integer_path() for m in layers)
    assert all(not m.weight_packed.is_meta and not ({"fbgemm", "avx2_plan", "wt_i8"} & set(m._cache)) for m in layers)
    monkeypatch.setattr(pack_mod, "quantized_weight_bytes", lambda manifest: 1 << 30)  # "a big pack"
    auto, _ = load_pack(tmp_path / "p", integer_codes="drop", kernel_weights="auto")
    sides = {(m.spec.side, m.kernel_weights) for m in auto.modules() if isinstance(m, QuantLinear)}
    lean = ("int4_avx2" if int_gemm.pick_backend(torch.device("cpu")) == "avx2"
            else "int4_bf16" if int_gemm.int4_bf16_available() else "per_call")
    assert sides == {("backbone", lean), ("action_head", lean)}
    with torch.no_grad():
        got = auto.sample_actions(obs[0], noise=n)
    if lean != "int4_bf16":  # exact kernels
        assert torch.equal(got, want)
    else:  # bf16-rounded backbone outputs: close to the exact kernels, not equal
        assert not torch.equal(got, want) and (got - want).abs().max() < 0.05 * want.abs().max()
    with pytest.raises(ValueError, match="kernel_weights"):
        load_pack(tmp_path / "p", kernel_weights="sometimes")


@pytest.mark.skipif(not int_gemm.int4_bf16_available(), reason="torch has no CPU int4 kernel")
def test_int4_bf16_kernel_weights_hold_half_a_byte_and_round_only_the_output():
    """kernel_weights='int4_bf16': the layer keeps its int4 codes packed (half a byte per
    weight, shapes padded to the kernel's 16-row / 32-column tiles) and its outputs equal
    the exact integer GEMM up to the kernel's bf16 output rounding (≤ 2^-8 relative)."""
    torch.manual_seed(0)
    for n_in, n_out in ((200, 50), (256, 64), (96, 33)):
        spec = LayerSpec(in_features=n_in, out_features=n_out, bias=True, group_size=None,
                         act_mode="dynamic")
        q = QuantLinear.from_parts(spec, torch.randint(-8, 8, (n_out, n_in)), torch.rand(n_out, 1) + 0.1,
                                   bias=torch.randn(n_out))
        x = torch.randn(7, n_in) * 3
        codes, s = q.activation_codes(x)
        exact = int_gemm.gemm_exact(codes, q.weight_codes())
        q.kernel_weights = "int4_bf16"
        q.prepare(release_codes=True)
        assert q.weight_packed.is_meta and set(q._cache) <= {"int4", "rot_input", "rot_fused", "rot_run"}
        w = q._cache["int4"]
        assert w.packed.numel() == -(-n_out // 16) * 16 * (-(-n_in // 32) * 32) // 2
        got = int_gemm.gemm_int4_bf16(codes, w)
        assert ((got - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()
        y = q(x)
        ref = exact * q.weight_scale[:, 0] * s + q.bias
        assert torch.allclose(y, ref, rtol=2**-7, atol=1e-5 * ref.abs().max())


def test_release_pages_gives_back_whole_pages_only():
    """release_pages (a layer dropping its int4 codes): madvise over the whole pages inside
    the tensor's bytes, nothing outside them (neighbouring tensors share the edge pages)."""
    import mmap
    import sys

    from omega_qvla_ros.quant.pages import release_pages

    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")
    page = mmap.PAGESIZE
    buf = mmap.mmap(-1, 4 * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # dropped pages read back 0
    whole = torch.frombuffer(buf, dtype=torch.uint8)
    whole.fill_(7)
    inner = whole[100: 3 * page + 50]  # covers pages 1 and 2 fully, 0 and 3 partly
    assert release_pages(inner) == 2 * page
    assert (whole[page: 3 * page] == 0).all()
    assert (whole[:page] == 7).all() and (whole[3 * page:] == 7).all()
    assert release_pages(whole[10:20]) == 0
    del whole, inner
