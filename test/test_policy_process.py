"""runtime/policy_process.py: the node's policy in its own process (messages as
safetensors + JSON). The same chunks as the policy in this process (same pack, same
noise), the same errors (a bad observation is an ObservationError, a pack that cannot
load says why), and a child that dies makes the next call fail with how it ended, which
the node turns into a held tick."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from omega_qvla_ros.runtime.policy import Policy
from omega_qvla_ros.runtime.policy_process import InferenceProcessError, PolicyProcess
from omega_qvla_ros.runtime.preprocess import ObservationError, RawObservation

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / "models" / "pi05_small_aloha_w4a4"


def _observation(pol, seed: int = 0) -> RawObservation:
    rng = np.random.default_rng(seed)
    raw = pol.synthetic_observation("transfer the cube")
    raw.images = {c: rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for c in raw.images}
    raw.joint_positions = raw.joint_positions + rng.normal(0, 0.05, raw.joint_positions.shape)
    raw.stamp = 12.5
    return raw


@pytest.fixture(scope="module")
def proc():
    p = PolicyProcess(str(PACK), device="cpu", control_dt=0.04)
    yield p
    p.close()


def test_same_chunks_as_in_this_process(proc):
    local = Policy.from_pack(PACK, device="cpu", control_dt=0.04)
    assert (proc.joint_names, proc.cameras, proc.horizon, proc.recipe, proc.captures_graphs) == \
        (local.joint_names, local.cameras, local.horizon, local.recipe, False)
    s_local, s_proc = local.synthetic_observation("x"), proc.synthetic_observation("x")
    assert np.array_equal(s_local.joint_positions, s_proc.joint_positions) and s_local.images.keys() == s_proc.images.keys()
    for seed in (0, 1):
        raw = _observation(local, seed)
        noise = torch.randn(1, local.horizon, local.model.config.action_dim, generator=torch.Generator().manual_seed(seed))
        a, b = local.infer(raw, noise=noise, num_steps=4), proc.infer(raw, noise=noise, num_steps=4)
        assert b.stamp == 12.5 and b.dt == 0.04 and b.inference_s > 0
        assert np.allclose(a.positions, b.positions, atol=1e-6, rtol=0), np.abs(a.positions - b.positions).max()
    proc.control_dt = 0.02  # the node's rate travels with each call
    assert proc.infer(raw, noise=noise).dt == 0.02


def test_a_bad_observation_is_an_observation_error(proc):
    raw = proc.synthetic_observation()
    raw.joint_names = list(reversed(raw.joint_names))[:-1]
    with pytest.raises(ObservationError):
        proc.infer(raw)
    raw = proc.synthetic_observation()
    raw.images[proc.cameras[0]] = "not an image"
    with pytest.raises(ObservationError, match="not an array"):
        proc.infer(raw)
    assert proc.infer(proc.synthetic_observation()).positions.shape == (proc.horizon, len(proc.joint_names))


def test_a_pack_that_cannot_load_says_why(tmp_path):
    with pytest.raises(InferenceProcessError, match="manifest.json"):
        PolicyProcess(str(tmp_path / "missing"), device="cpu")


def test_a_dead_child_makes_every_later_call_fail_with_how_it_ended():
    p = PolicyProcess(str(PACK), device="cpu")
    try:
        os.kill(p.pid, signal.SIGKILL)
        for _ in range(2):
            with pytest.raises(InferenceProcessError, match="killed by signal 9"):
                p.infer(p.synthetic_observation())
    finally:
        p.close()
    assert not p.is_alive()


def test_works_from_a_script_without_a_main_guard(tmp_path):
    """The child is its own `python -m` module, so a caller's script is not run again in
    it (multiprocessing's spawn would, and fail without an `if __name__` guard)."""
    import subprocess
    import sys
    script = tmp_path / "use.py"
    script.write_text("from omega_qvla_ros.runtime.policy_process import PolicyProcess\n"
                      f"p = PolicyProcess({str(PACK)!r}, device='cpu')\n"
                      "print('chunk', p.infer(p.synthetic_observation()).positions.shape)\n"
                      "p.close()\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count("chunk (50, 14)") == 1, r.stdout + r.stderr[-2000:]
