"""Peer equivalence with LeRobot 0.6.1's PI05Policy, from the raw observation.

The fixtures under test/data/lerobot_pi05_tiny{,_b} are LeRobot `save_pretrained`
folders (trimmed vocabulary, stand-in tokenizer) with LeRobot's own outputs for a batch
of raw observations, made by test/peer/make_lerobot_pi05_fixture.py in a side venv.
Here they go through what a user runs: `omega-qvla import-checkpoint` → pack →
`Policy.from_pack` → `infer(raw, noise)`, and the actions must equal LeRobot's
pre-processor → predict_action_chunk(noise) → post-processor output.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from omega_qvla_ros.runtime.policy import Policy
from omega_qvla_ros.runtime.preprocess import RawObservation
from omega_qvla_ros.tools.cli import main as cli

DATA = Path(__file__).resolve().parent / "data"
FIXTURES = ["lerobot_pi05_tiny", "lerobot_pi05_tiny_b"]


def _raws(ref: dict, meta: dict, joints: list[str]) -> list[RawObservation]:
    cams = [c.split("observation.images.", 1)[1] for c in meta["camera_order"] if ".empty_camera_" not in c]
    out = []
    for i, task in enumerate(meta["tasks"]):
        images = {c: ref[f"raw.images.{c}"][i].numpy() for c in cams}
        out.append(RawObservation(images, joints, ref["raw.state"][i].double().numpy(), task, 0.0))
    return out


@pytest.fixture(scope="module", params=FIXTURES)
def imported(request, tmp_path_factory):
    src = DATA / request.param
    pack = tmp_path_factory.mktemp(request.param) / "pack"
    assert cli(["import-checkpoint", str(src), "--tokenizer", str(src / "tokenizer.json"),
                "--out", str(pack), "--json"]) == 0
    meta = json.loads((src / "reference.json").read_text())
    ref = load_file(str(src / "reference.safetensors"))
    pol = Policy.from_pack(pack, "cpu")
    return pol, ref, meta, _raws(ref, meta, pol.processor.joint_names)


def test_processor_matches_lerobot_preprocessor(imported):
    pol, ref, meta, raws = imported
    obs, _q = pol.processor.observation(raws)
    assert torch.equal(obs.state, ref["pre.state_normalized"])
    assert torch.equal(obs.tokens, ref["pre.tokens"]), (obs.tokens, ref["pre.tokens"])
    assert torch.equal(obs.token_mask, ref["pre.masks"])
    for i in range(obs.images.shape[1]):
        assert torch.equal(obs.image_mask[:, i], ref[f"pre.img_masks.{i}"])
        assert (obs.images[:, i] - ref[f"pre.images.{i}"]).abs().max() <= 1e-6, i


def test_actions_equal_lerobot_from_the_raw_observation(imported):
    pol, ref, meta, raws = imported
    noise = ref["noise"]
    for i, raw in enumerate(raws):
        chunk = pol.infer(raw, noise=noise[i:i + 1])
        want = ref["out.actions_unnormalized"][i].double().numpy()
        assert chunk.positions.shape == want.shape
        assert np.abs(chunk.positions - want).max() <= 1e-5, np.abs(chunk.positions - want).max()
    # the network alone, before unnormalisation, to the stored model output
    obs, _ = pol.processor.observation(raws)
    with torch.inference_mode():
        a = pol.model.sample_actions(obs, noise=noise)
    assert (a - ref["out.actions_model"]).abs().max() <= 1e-5


def test_training_loss_equals_lerobot(imported):
    pol, ref, meta, raws = imported
    obs, q = pol.processor.observation(raws)
    target = pol.processor.action_targets(ref["train.actions_raw"].double().numpy(), q)
    dof = pol.processor.dof
    assert (target[..., :dof] - ref["train.actions_normalized"]).abs().max() <= 1e-6
    with torch.no_grad():
        losses = pol.model.loss(obs, target, noise=ref["train.noise"], s=ref["train.time"], reduction="none")
    # per-element squared errors reach ~25: compare with float32 relative rounding
    assert torch.allclose(losses, ref["train.losses"], rtol=1e-5, atol=1e-5)
    assert abs(float(losses[..., :dof].mean()) - float(ref["train.loss"])) <= 1e-6


def test_import_reads_sizes_from_shapes():
    """Both fixtures import with no size flags; their sizes differ and were read from
    the tensors (and config.json)."""
    from omega_qvla_ros.models.importer import load_checkpoint

    cfgs = []
    for name in FIXTURES:
        model, imp, rep = load_checkpoint(DATA / name)
        assert not rep.missing and not rep.unmapped
        cfgs.append(model.config)
    a, b = cfgs
    assert (a.trunk.width, a.trunk.layers, a.expert.width, a.vision.image_size) == (64, 2, 32, 56)
    assert (b.trunk.width, b.trunk.layers, b.expert.width, b.vision.image_size) == (48, 3, 24, 42)
    assert a.state_encoding == b.state_encoding == "prompt"


def test_imported_pack_quantizes_and_drives_the_node(tmp_path):
    """What a user does next with the imported checkpoint: `quantize --model PACK`, then
    the real node (rclpy, loopback DDS) loads the W4A4 pack — its processor writes the
    state into the prompt with the pack's own tokenizer — and drives the arm."""
    pytest.importorskip("rclpy")
    from omega_qvla_ros.ros.rig import Harness
    from omega_qvla_ros.runtime.robot import RobotSpec
    from std_srvs.srv import SetBool

    src = DATA / FIXTURES[0]
    fp, q = tmp_path / "fp", tmp_path / "w4a4"
    assert cli(["import-checkpoint", str(src), "--tokenizer", str(src / "tokenizer.json"),
                "--out", str(fp), "--json"]) == 0
    assert cli(["quantize", "--model", str(fp), "--recipe", "omega_qvla", "--calib", "synthetic",
                "--out", str(q), "--json"]) == 0
    pol = Policy.from_pack(q, "cpu")
    assert pol.model.config.state_encoding == "prompt" and pol.processor.config.prompt == "pi05"
    assert pol.integer_layers() > 0
    h = Harness(q)
    try:
        h.wait(lambda: h.chunks, 30, "first action chunk")
        assert h.call(SetBool, "/omega_qvla_policy/enable", SetBool.Request(data=True)).success
        h.wait(lambda: h.last_status().get("source") == "policy" and len(h.traj) >= 5, 30, "policy driving")
        spec = RobotSpec()
        for _, m in list(h.traj):
            for p in m.points:
                x = np.array(p.positions)
                assert np.all(np.isfinite(x)) and np.all(x >= spec.lower) and np.all(x <= spec.upper)
    finally:
        h.close()
