"""Peer equivalence with GR00T N1.5 (LeRobot 0.5.1's port of Isaac-GR00T N1.5).

test/data/gr00t_n15_tiny holds a tiny N1.5 checkpoint under the stock key names and the
stock code's inputs, intermediates, actions and loss (test/peer/make_gr00t_n15_fixture.py,
side venv). It is imported here with `load_checkpoint` (sizes from the shapes, the "n15"
variant) and fed the fixture's token ids and pixel values.

Only batch sample 0 is compared exactly: sample 1 is left padded, and N1.5 attends to pad
rows after its LLM, whose values depend on the attention backend (see reference.json);
of sample 1 we check what does not depend on them (its real LLM rows, its embodiment-2
state features). Tolerance: 1e-5 absolute (activations are O(1…10) in float32; measured
≤ 3e-6); the per-element squared errors of the loss (up to ~25) also get 1e-5 relative.
The embedding of the stored checkpoint keeps only the rows the prompt uses
(`embed_row_ids`); the model runs on a copy with those rows put back at their ids.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from omega_qvla_ros.models import build_model
from omega_qvla_ros.models.common import Observation
from omega_qvla_ros.models.importer import ImportOptions, load_checkpoint
from omega_qvla_ros.models.processor import ObservationError, Processor

DATA = Path(__file__).resolve().parent / "data"
FIXTURE = DATA / "gr00t_n15_tiny"
EMBED = "backbone.eagle_model.language_model.model.embed_tokens.weight"
VOCAB = 151680  # Qwen3's, as the N1.5 Eagle config says
CAMERAS = ["left", "right"]
ATOL = 1e-5
# Checkpoint keys the importer ignores on purpose: SigLIP's attention-pooling head, which
# N1.5 builds but never runs (Eagle takes last_hidden_state).
SIGLIP_HEAD = ["backbone.eagle_model.vision_model.vision_model.head." + k for k in (
    "attention.in_proj_bias", "attention.in_proj_weight", "attention.out_proj.bias", "attention.out_proj.weight",
    "layernorm.bias", "layernorm.weight", "mlp.fc1.bias", "mlp.fc1.weight", "mlp.fc2.bias", "mlp.fc2.weight",
    "probe")]


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "reference.safetensors"))


@pytest.fixture(scope="module")
def model(ref, tmp_path_factory):
    """The fixture checkpoint with its embedding rows back at their token ids, imported."""
    out = tmp_path_factory.mktemp("gr00t_n15_full_vocab")
    sd = load_file(str(FIXTURE / "model.safetensors"))
    full = torch.zeros(VOCAB, sd[EMBED].shape[1])
    full[ref["embed_row_ids"]] = sd[EMBED]
    sd[EMBED] = full
    save_file(sd, str(out / "model.safetensors"))
    for f in ("config.json", "eagle_config.json"):
        shutil.copy(FIXTURE / f, out / f)
    m, imp, rep = load_checkpoint(out, ImportOptions(cameras=CAMERAS))
    assert rep.missing == [] and rep.unmapped == [] and sorted(rep.ignored) == sorted(SIGLIP_HEAD)
    return m, imp


def _observation(ref) -> Observation:
    B, S = ref["input_ids"].shape[0], ref["pixel_values"].shape[-1]
    return Observation(ref["pixel_values"].view(B, -1, 3, S, S), ref["input_ids"], ref["attention_mask"].bool(),
                       ref["state"][:, 0])


class Recorder:
    """Forward hooks on our modules, named like the fixture's intermediates."""

    def __init__(self, m) -> None:
        em, ah = m.backbone.eagle_model, m.action_head
        lm = em.language_model.model
        self.seen: dict[str, list] = {}
        self.handles = [
            em.vision_model.vision_model.post_layernorm.register_forward_hook(self._keep("vision_last_hidden_state")),
            em.mlp1.register_forward_hook(self._keep("vision_features")),
            lm.layers[-1].register_forward_hook(self._keep("llm_last_layer_out", lambda o: o[0])),
            lm.norm.register_forward_hook(self._keep("backbone_features")),
            ah.vlln.register_forward_hook(self._keep("vlln_out")),
            ah.vl_self_attention.register_forward_hook(self._keep("vl_features")),
            ah.state_encoder.register_forward_hook(self._keep("state_features")),
            ah.action_encoder.register_forward_pre_hook(lambda _m, a: self.seen.setdefault("encoder_in", []).append(a)),
            ah.action_decoder.register_forward_hook(self._keep("decoder_out")),
        ]

    def _keep(self, name, fn=lambda o: o):
        return lambda _m, _i, o: self.seen.setdefault(name, []).append(fn(o).detach().clone())

    def __getitem__(self, name):
        return self.seen[name]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _max(a, b) -> float:
    return float((a - b).abs().max())


def test_import_reads_n15_sizes_from_shapes():
    """The stored checkpoint imports with no size flags as the n15 variant, every tensor
    mapped but SigLIP's unused head."""
    m, imp, rep = load_checkpoint(FIXTURE)
    c = m.config
    assert (c.variant, c.embodiment_id, c.image_token_id, c.cameras) == ("n15", 0, 151669, 1)
    assert (c.vision.width, c.vision.layers, c.vision.heads, c.vision.mlp, c.vision.patch, c.vision.image_size) == \
        (32, 2, 2, 48, 14, 56)
    assert (c.llm.width, c.llm.layers, c.llm.mlp, c.llm.heads, c.llm.kv_heads, c.llm.head_dim, c.llm.vocab) == \
        (64, 2, 96, 4, 2, 16, 24)
    assert (c.dit.blocks, c.dit.dim, c.dit.heads, c.dit.head_dim, c.dit.ff, c.dit.cross_dim) == (4, 32, 4, 8, 128, 64)
    assert (c.vl_blocks, c.vl_heads, c.hidden, c.state_dim, c.action_dim, c.action_horizon) == (2, 4, 48, 12, 8, 6)
    assert (c.future_tokens, c.num_embodiments, c.max_seq_len, c.num_steps) == (3, 3, 16, 4)
    assert rep.missing == [] and rep.unmapped == [] and sorted(rep.ignored) == sorted(SIGLIP_HEAD)
    assert imp.processor.prompt == "gr00t_n15" and any("identity" in n for n in imp.notes)
    with pytest.raises(ValueError, match="embodiment"):
        load_checkpoint(FIXTURE, ImportOptions(embodiment_id=3))


def test_import_lerobot_groot_layout(tmp_path):
    """LeRobot's groot save: `_groot_model.` prefix, the tied lm_head stored instead of
    embed_tokens, min/max statistics and the embodiment tag in policy_preprocessor.json."""
    from omega_qvla_ros.models.gr00t.checkpoint import LM_HEAD

    sd = load_file(str(FIXTURE / "model.safetensors"))
    sd[LM_HEAD] = sd.pop(EMBED)
    save_file({"_groot_model." + k: v for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    shutil.copy(FIXTURE / "eagle_config.json", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"type": "groot", "chunk_size": 6, "input_features": {
        f"observation.images.{c}": {"type": "VISUAL", "shape": [3, 56, 56]} for c in ("wrist", "front")}}))
    lo, hi = -torch.arange(12.0) - 1, torch.arange(12.0) + 1
    stats = {"observation.state.min": lo, "observation.state.max": hi, "action.min": lo[:8].clone(),
             "action.max": hi[:8].clone()}
    save_file(stats, str(tmp_path / "stats.safetensors"))
    (tmp_path / "policy_preprocessor.json").write_text(json.dumps({"name": "policy_preprocessor", "steps": [
        {"registry_name": "groot_pack_inputs_v3", "state_file": "stats.safetensors",
         "config": {"embodiment_tag": "so100", "embodiment_mapping": {"so100": 2}, "normalize_min_max": True}}]}))
    m, imp, rep = load_checkpoint(tmp_path)
    assert rep.missing == [] and rep.unmapped == [] and rep.tied == {EMBED: "_groot_model." + LM_HEAD}
    assert torch.equal(m.state_dict()[EMBED], sd[LM_HEAD])
    assert (m.config.embodiment_id, m.config.cameras, imp.processor.cameras) == (2, 2, ["front", "wrist"])
    p = imp.processor
    assert (p.state_norm.mode, p.state_norm.low, p.action_norm.high) == ("min_max", lo.tolist(), hi[:8].tolist())


def test_intermediates_equal_reference(model, ref):
    m, _ = model
    rec = Recorder(m)
    try:
        with torch.no_grad():
            m.sample_actions(_observation(ref), noise=ref["inference.noise"])
        V = len(CAMERAS)
        for name in ("vision_last_hidden_state", "vision_features"):  # [B·V, n, D], sample-major
            ours = rec[name][0].reshape(ref[name].shape)
            assert _max(ours[:V], ref[name][:V]) <= ATOL, name
        for name in ("llm_last_layer_out", "backbone_features", "vlln_out", "vl_features", "state_features"):
            assert _max(rec[name][0][0], ref[name][0]) <= ATOL, name
        real = ref["attention_mask"][1].bool()  # sample 1: its real rows do not see the pads
        for name in ("llm_last_layer_out", "backbone_features", "vlln_out"):
            assert _max(rec[name][0][1][real], ref[name][1][real]) <= ATOL, name
    finally:
        rec.close()


def test_embodiment_routes_the_state_encoder(model, ref):
    m, _ = model
    m.config.embodiment_id = int(ref["embodiment_id"][1])
    try:
        with torch.no_grad():
            prefix = m._prefix(_observation(ref))
    finally:
        m.config.embodiment_id = 0
    assert _max(prefix.state_features[1], ref["state_features"][1]) <= ATOL
    assert _max(prefix.state_features[0], ref["state_features"][0]) > 0.1  # sample 0 is embodiment 0


def test_after_the_llm_pads_are_attended(model, ref):
    """Sample 1 from the reference's own LLM output (pad rows included, the only
    backend-dependent part): vl_self_attention and the DiT attend to every position, and
    embodiment 2 routes the action encoder/decoder, as in N1.5 — so its actions match."""
    m, _ = model
    lm = m.backbone.eagle_model.language_model.model
    swap = lm.norm.register_forward_hook(lambda _m, _i, _o: ref["backbone_features"].clone())
    rec = Recorder(m)
    m.config.embodiment_id = int(ref["embodiment_id"][1])
    try:
        with torch.no_grad():
            a = m.sample_actions(_observation(ref), noise=ref["inference.noise"])
    finally:
        m.config.embodiment_id = 0
        swap.remove()
        rec.close()
    assert _max(rec["vl_features"][0][1], ref["vl_features"][1]) <= ATOL
    assert _max(a[1], ref["inference.actions"][1]) <= ATOL


def test_actions_equal_reference(model, ref):
    m, _ = model
    rec = Recorder(m)
    try:
        with torch.no_grad():
            a = m.sample_actions(_observation(ref), noise=ref["inference.noise"])
        H = m.config.action_horizon
        steps = rec["encoder_in"]
        assert torch.equal(torch.stack([s[1] for s in steps]), ref["inference.t_discretized"])
        assert _max(torch.stack([s[0][0] for s in steps]), ref["inference.x_steps"][:, 0]) <= ATOL
        v = torch.stack([o[0, -H:] for o in rec["decoder_out"]])
        assert _max(v, ref["inference.velocities"][:, 0]) <= ATOL
    finally:
        rec.close()
    assert _max(a[0], ref["inference.actions"][0]) <= ATOL


def test_training_loss_equals_reference(model, ref):
    m, _ = model
    obs, mask = _observation(ref), ref["action_mask"]
    rec = Recorder(m)
    try:
        with torch.no_grad():
            per = m.loss(obs, ref["action"], noise=ref["loss.noise"], t=ref["loss.t"], action_mask=mask,
                         reduction="none")
            # N1.5's own draws: noise first, then t = (0.999 − Beta(1.5, 1)) / 0.999 (fixture seed 200)
            torch.manual_seed(200)
            m.loss(obs, ref["action"], action_mask=mask)
        (x_given, t_given, _), (x_drawn, t_drawn, _) = rec["encoder_in"]
        H = m.config.action_horizon
        assert _max(rec["decoder_out"][0][0, -H:], ref["loss.pred_velocity"][0]) <= ATOL
    finally:
        rec.close()
    for x, t in ((x_given, t_given), (x_drawn, t_drawn)):
        assert torch.equal(t, ref["loss.t_discretized"])
        assert _max(x[0], ref["loss.noisy_trajectory"][0]) <= ATOL
    want = (ref["loss.pred_velocity"][0] - (ref["action"][0] - ref["loss.noise"][0])) ** 2 * mask[0]
    assert torch.allclose(per[0], want, rtol=1e-5, atol=ATOL)
    assert abs(float(per[0].sum() / mask[0].sum()) - float(want.sum() / mask[0].sum())) <= ATOL


def test_full_n15_has_the_published_keys():
    """Our `full` preset is N1.5 at its published size: every stored tensor of
    nvidia/GR00T-N1.5-3B by name and shape, nothing else, but SigLIP's unused head."""
    published = json.loads((DATA / "gr00t_n15_keys.json").read_text())["keys"]
    m = build_model("gr00t", "full", device="meta")
    assert m.config.variant == "n15"
    ours = {k: list(v.shape) for k, v in m.state_dict().items()}
    assert sorted(set(published) - set(ours)) == sorted(SIGLIP_HEAD)
    assert ours == {k: s for k, s in published.items() if k not in SIGLIP_HEAD}


def _stand_in_tokenizer(path: Path) -> None:
    """A word-level tokenizer.json with the ids the fixture's prompt uses: Qwen3's special
    tokens and the Eagle image tokens at their real ids, synthetic ids for the words."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers

    specials = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<IMG_CONTEXT>": 151669,
                "<img>": 151670, "</img>": 151671}
    words = {"<unk>": 0, "'": 6, "1": 16, "2": 17, "<": 27, ">": 29, "[": 58, "]": 60, "\n": 198, " ": 220,
             " the": 279, " up": 705, "user": 872, "image": 1805, " drawer": 2115, "open": 3487,
             " cube": 23739, "pick": 29188, "assistant": 77091}
    tok = Tokenizer(models.WordLevel({**words, **specials}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[A-Za-z]+|\d|\s|[^\sA-Za-z\d]"), behavior="isolated")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.save(str(path))


def test_processor_n15_prompt_layout(model, ref, tmp_path):
    """The imported processor builds N1.5's prompt: with a stand-in tokenizer the token
    ids, left padding and mask equal the fixture's for the batch, the pixels too."""
    m, imp = model
    _stand_in_tokenizer(tmp_path / "tokenizer.json")
    proc = Processor(imp.processor, tmp_path, action_width=m.config.action_dim,
                     image_tokens=m.config.image_tokens_per_camera)
    assert m.config.image_tokens_per_camera == 16
    frames = [{c: ref["images_uint8"][b, v].permute(1, 2, 0).numpy() for v, c in enumerate(CAMERAS)}
              for b in range(2)]
    q = np.zeros((2, proc.dof))
    obs = proc.batch(frames, ["pick up the cube", "open drawer"], q)
    assert torch.equal(obs.tokens, ref["input_ids"]) and torch.equal(obs.token_mask, ref["attention_mask"].bool())
    assert _max(obs.images.flatten(0, 1), ref["pixel_values"]) <= 1e-6
    alone = proc.batch(frames[1:], ["open drawer"], q[1:])  # no padding: padded to the batch's longest
    assert torch.equal(alone.tokens[0], ref["input_ids"][1][ref["attention_mask"][1].bool()])
    with pytest.raises(ObservationError, match="max_tokens"):
        proc.batch(frames[:1], ["pick up the cube" * 200], q[:1])
