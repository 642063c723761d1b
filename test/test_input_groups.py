"""Layers that read one input (q/k/v, gate/up) quantized as one group: found from the
calibration inputs, one rotation and one set of activation scales, run as one GEMM, and
the same outputs as running the members one by one; packs keep the groups."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from omega_qvla_ros.models import build_model, model_info
from omega_qvla_ros.models.calibrate import quantize_model, synthetic_observations
from omega_qvla_ros.quant import RECIPES, cpu_kernel, quantize
from omega_qvla_ros.quant.context import denoising_step
from omega_qvla_ros.quant.pack import load_pack, save_pack
from omega_qvla_ros.quant.qlinear import QuantLinear, link_input_groups

STEPS = 3


def _layers(model) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def _unlinked(model):
    m = copy.deepcopy(model)
    for q in _layers(m).values():
        q.siblings = None
    return m


@pytest.fixture(scope="module", params=["pi05", "gr00t"])
def family_models(request):
    fp = build_model(request.param, "tiny", seed=1).eval()
    obs = synthetic_observations(fp.config, 2, seed=3)
    q = quantize_model(copy.deepcopy(fp), "omega_qvla", obs, seed=0)
    return request.param, fp, q, obs


def test_groups_are_the_layers_that_share_an_input(family_models):
    family, fp, q, _ = family_models
    layers = _layers(q)
    groups: dict[str, list[str]] = {}
    for name, m in layers.items():
        if m.spec.input_group is not None:
            groups.setdefault(m.spec.input_group, []).append(name)
    assert groups
    for key, names in groups.items():
        parents = {n.rsplit(".", 1)[0] for n in names}
        leaves = tuple(n.rsplit(".", 1)[1] for n in names)
        assert len(parents) == 1 and key == names[0], names
        assert leaves in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"),
                          ("to_q", "to_k", "to_v"), ("to_k", "to_v")), names
        assert all(layers[n].siblings is layers[names[0]].siblings for n in names)
        lead = layers[names[0]]
        for n in names[1:]:  # one rotation, one set of activation scales
            assert torch.equal(layers[n].input_rot_blocks, lead.input_rot_blocks)
            assert torch.equal(layers[n].input_channel_div, lead.input_channel_div)
    for name, m in layers.items():
        if name.endswith(("o_proj", "down_proj", "to_out.0", "net.2")):
            assert m.spec.input_group is None, name
    if family == "gr00t":  # a cross-attention's query reads the actions, its keys/values the VLM
        cross = [n for n, mod in q.named_modules() if getattr(mod, "cross", False)]
        assert cross
        for blk in cross:
            assert layers[f"{blk}.attn1.to_q"].spec.input_group is None
            assert layers[f"{blk}.attn1.to_k"].spec.input_group == f"{blk}.attn1.to_k"
    # the paper's recipe keeps one rotation per layer
    paper = quantize_model(copy.deepcopy(fp), "omega_qvla_paper", synthetic_observations(fp.config, 1), seed=0)
    assert all(m.spec.input_group is None and m.siblings is None for m in _layers(paper).values())


def _actions(model, obs):
    c = model.config
    noise = torch.randn(obs.batch_size, c.action_horizon, c.action_dim, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        return model.sample_actions(obs, noise=noise)


def test_group_runs_as_the_layers_one_by_one(family_models):
    _, fp, q, obs = family_models
    assert any(m.siblings is not None and m.uses_integer_path() for m in _layers(q).values())
    a, b = _actions(q, obs[0]), _actions(_unlinked(q), obs[0])
    assert float((a - b).abs().max() / b.abs().max()) < 1e-5


class Siblings(nn.Module):
    """Three linears reading one input, one reading another (like a cross-attention)."""

    def __init__(self, outs) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.Module()
        self.attn.a, self.attn.b, self.attn.c = (nn.Linear(96, o) for o in outs)
        self.attn.d = nn.Linear(96, 64)

    def forward(self, x):
        h = torch.tanh(x)
        for t in range(STEPS):
            with denoising_step(t, STEPS):
                h = h + 0.1 * (self.attn.a(x)[:, :96] + self.attn.b(x)[:, :96] * self.attn.c(x)[:, :96]
                               + self.attn.d(h).sum(-1, keepdim=True))
        return h


def _batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(32, 96, generator=g) * torch.exp(torch.randn(96, generator=g)) for _ in range(n)]


@pytest.mark.parametrize("outs", [(128, 96, 128), (128, 100, 192)])  # whole 64-blocks; a tail
@pytest.mark.parametrize("recipe", ["omega_qvla", "omega_qvla_outrot"])
def test_group_output_rotations_and_foreign_inputs(outs, recipe):
    """Head layers with output rotations (stacked into one, or per member where one has
    a tail); a member called on another tensor than its group's computes afresh."""
    fp = Siblings(outs).eval()
    m = copy.deepcopy(fp)
    quantize(m, RECIPES[recipe].with_scopes(action_head=[r"attn\.[abcd]$"]), _batches(3, 0))
    att = m.attn
    assert att.a.siblings == [att.a, att.b, att.c] and att.d.siblings is None
    x = _batches(1, 4)[0]
    ref = _unlinked(m)
    with torch.no_grad():
        assert float((m(x) - ref(x)).abs().max() / ref(x).abs().max()) < 1e-5
        with denoising_step(1, STEPS):
            ya = att.a(x)
            other = x.flip(0)  # equal values are not enough: only the same tensor is shared
            yb = att.b(other)
            yc = att.c(x)  # the group was recomputed for `other`: c computes again for x
            for y, name, inp in ((ya, "a", x), (yb, "b", other), (yc, "c", x)):
                r = getattr(ref.attn, name)(inp)
                assert float((y - r).abs().max() / r.abs().max()) < 1e-5, name


def test_pack_keeps_groups(family_models, tmp_path):
    family, fp, q, obs = family_models
    d = save_pack(q, tmp_path / "pack", model_info(q, "tiny"), recipe=q.quantization_report["recipe_dict"])
    loaded, _ = load_pack(d)
    linked = {n for n, m in _layers(loaded).items() if m.siblings is not None}
    assert linked == {n for n, m in _layers(q).items() if m.siblings is not None}
    ref = _actions(q, obs[0])
    assert torch.equal(_actions(loaded, obs[0]), ref)
    lean, _ = load_pack(d, kernel_weights="int4_bf16", integer_codes="drop")
    members = [m for m in _layers(lean).values() if m.siblings is not None]
    assert members and all(getattr(m, "codes_released", False) for m in members)
    y = _actions(lean, obs[0])
    # bf16 output rounding moves some activation codes: a difference below W4A4's own
    fp_actions = _actions(fp, obs[0])
    assert float(((y - ref) ** 2).mean()) < 0.5 * float(((ref - fp_actions) ** 2).mean())


def test_link_refuses_members_that_differ(family_models):
    _, _, q, _ = family_models
    m = copy.deepcopy(q)
    lead = next(x for x in _layers(m).values() if x.siblings is not None and x.siblings[0] is x)
    other = lead.siblings[1]
    buf = "act_scale" if hasattr(other, "act_scale") else "act_step_scale"
    getattr(other, buf).mul_(2)
    with pytest.raises(ValueError, match=f"differ in {buf}"):
        link_input_groups(m)


@pytest.mark.skipif(not cpu_kernel.available(), reason=str(cpu_kernel.unavailable_reason()))
def test_avx2_fast_forward_is_the_general_forward():
    """On the AVX2 kernel a layer's or a group's second call takes the short forward
    (QuantLinear._avx2_fast): the same outputs bit for bit as the first, general call; a
    changed backend or a load leaves it; a deep copy runs its own weights, not the
    original's."""
    fp = Siblings((128, 96, 128)).eval()
    m = copy.deepcopy(fp)
    quantize(m, RECIPES["omega_qvla"].with_scopes(action_head=[r"attn\.[abcd]$"]), _batches(3, 0))
    att = m.attn
    for q in _layers(m).values():
        q.backend = "avx2"
    x = _batches(1, 4)[0]
    names = ("a", "b", "c", "d")

    def outputs(model, inp):
        with torch.no_grad(), denoising_step(1, STEPS):
            return [getattr(model.attn, n)(inp) for n in names]
    first = outputs(m, x)
    assert all(getattr(att, n)._cache["avx2_fast"][1] is not None for n in names)
    again = outputs(m, x)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    ref = outputs(_unlinked(m), x)
    assert all(float((a - r).abs().max() / r.abs().max()) < 1e-5 for a, r in zip(again, ref))
    # another backend: the general forward, on that backend
    for q in _layers(m).values():
        q.backend = "exact"
    exact = outputs(m, x)
    assert all(getattr(att, n)._cache["avx2_fast"][1] is None for n in names)
    assert all(float((a - r).abs().max() / r.abs().max()) < 1e-5 for a, r in zip(exact, ref))
    for q in _layers(m).values():
        q.backend = "avx2"
    # a deep copy of a model that has run: scaling its weights scales its outputs
    twin = copy.deepcopy(m)
    for n in names:
        getattr(twin.attn, n).weight_scale.mul_(2)
    for q in _layers(twin).values():
        q._clear_caches()  # weights changed in place: as a load would
    doubled = outputs(twin, x)
    assert all(torch.allclose(d, 2 * a - getattr(att, n).bias, rtol=1e-5, atol=1e-5)
               for d, a, n in zip(doubled, outputs(m, x), names))


def test_dropped_codes_refuse_another_backend(family_models, tmp_path):
    """A pack loaded with integer_codes='drop' keeps only its kernel's weights: asked to
    run another backend it says so (it computed from the empty placeholder before)."""
    family, fp, q, obs = family_models
    d = save_pack(q, tmp_path / "pack", model_info(q, "tiny"), recipe=q.quantization_report["recipe_dict"])
    lean, _ = load_pack(d, integer_codes="drop")
    assert torch.isfinite(_actions(lean, obs[0])).all()
    for m in _layers(lean).values():
        m.backend = "exact"
    with pytest.raises(RuntimeError, match="gave back its int4 codes"):
        _actions(lean, obs[0])


@pytest.mark.skipif(not cpu_kernel.available(), reason=str(cpu_kernel.unavailable_reason()))
def test_int4_avx2_holds_the_packs_size_bit_exactly(family_models, tmp_path, monkeypatch):
    """kernel_weights "int4_avx2": our AVX2 kernel holds the int4 codes (half a byte per
    weight, as in the pack) and gives the same actions bit for bit as int8 weights held;
    `auto` picks it for a big pack where the integer backend is that kernel."""
    from omega_qvla_ros.quant import int_gemm, pack

    family, fp, q, obs = family_models
    d = save_pack(q, tmp_path / "pack", model_info(q, "tiny"), recipe=q.quantization_report["recipe_dict"])
    hold, _ = load_pack(d, kernel_weights="hold")
    ref = _actions(hold, obs[0])
    monkeypatch.setattr(pack, "KERNEL_LARGE_BYTES", 0)  # this tiny pack counts as big
    lean, _ = load_pack(d, kernel_weights="auto", integer_codes="drop")
    integer = [m for m in _layers(lean).values() if m.uses_integer_path()]
    want = "int4_avx2" if int_gemm.pick_backend(torch.device("cpu")) == "avx2" else None
    if want is None:
        lean, _ = load_pack(d, kernel_weights="int4_avx2", integer_codes="drop")
        integer = [m for m in _layers(lean).values() if m.uses_integer_path()]
    assert integer and all(m.kernel_weights == "int4_avx2" for m in integer)
    assert torch.equal(_actions(lean, obs[0]), ref)

    def held_bytes(model):
        """Bytes of the kernel weights held: the AVX2 kernel's packed ones, or torch._int_mm's
        int8 ones (the "hold" backend on a CPU with VNNI)."""
        held = []
        for m in _layers(model).values():
            holder = m.siblings[0]._cache["input_group"].layer if m.siblings is not None else m
            plan = holder._cache.get("avx2_plan")
            w = plan[0].w.packed if plan is not None else holder._cache.get("wt_i8")
            if w is not None and all(h is not w for h in held):
                held.append(w)
        return sum(w.numel() * w.element_size() for w in held)
    codes = sum(m.weight_packed.numel() * 4 for m in _layers(hold).values() if m.uses_integer_path())
    assert 0.9 * codes < held_bytes(lean) < 1.25 * codes < 0.7 * held_bytes(hold)


@pytest.mark.parametrize("act", ["gelu_tanh", "silu"])
def test_gated_mlp_in_place_inference_equals_autograd_forward(act):
    """Inference runs the MLP's activation and product in place on the gate's output
    (layers.GatedMLP): the same numbers as the autograd forward, in float and with
    gate/up quantized as one group (whose kernel call hands out both outputs: the
    in-place gate must leave the up output it holds intact)."""
    from omega_qvla_ros.models.layers import GatedMLP
    torch.manual_seed(0)
    mlp = GatedMLP(64, 256, act).eval()
    x = torch.randn(2, 40, 64)
    q = quantize(copy.deepcopy(mlp), RECIPES["omega_qvla"].with_scopes(backbone=[r"(gate|up|down)_proj$"]),
                 [torch.randn(2, 40, 64) for _ in range(2)])
    assert link_input_groups(q) == 1
    for m in (mlp, q):
        with torch.enable_grad():
            ref = m(x).detach()
        with torch.inference_mode():
            assert torch.equal(m(x), ref)
            assert torch.equal(m(x), ref)  # twice: nothing the first call left behind is spent
