"""runtime/cuda_graphs.py on the CPU: what it does around the capture (the graphs' own
input buffers, the prefix and observation taken apart and put back, the fallbacks from
"whole" to "loop" to eager). CUDA cannot run here, so `_record` is replaced by a stand-in
graph whose replay recomputes from the graph's buffers into its output buffer (what a
CUDA graph's replay does); test_cuda.py checks real graphs on a GPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omega_qvla_ros.runtime import cuda_graphs
from omega_qvla_ros.runtime.cuda_graphs import GraphedSampler
from omega_qvla_ros.runtime.policy import Policy
from omega_qvla_ros.tools.device_check import random_observation

REPO = Path(__file__).resolve().parents[1]


class StandInGraph:
    def __init__(self, fn, static, out):
        self.fn, self.static, self.out = fn, static, out

    def replay(self):
        self.out.copy_(self.fn(self.static))


def stand_in(refuse=()):
    """A _record whose graph replays fn on its own buffers; it refuses to capture the
    functions whose first input has one of the shapes' lengths in `refuse`."""
    calls = []

    def record(fn, static, warmup):
        calls.append(len(static))
        if len(static) in refuse:
            raise RuntimeError("operation not permitted when stream is capturing")
        out = fn(static)
        return StandInGraph(fn, static, out), out
    return record, calls


@pytest.fixture(scope="module")
def pi05():
    pol = Policy.from_pack(REPO / "models" / "pi05_small_aloha", "cpu")
    raw, noise = random_observation(pol)
    obs = pol.processor.observation(raw)[0]
    # a second observation: other images and state, the same shapes
    raw2 = type(raw)({c: 255 - im for c, im in raw.images.items()}, raw.joint_names, raw.joint_positions * 0.5,
                     raw.instruction, 0.0)
    return pol.model, obs, pol.processor.observation(raw2)[0], noise


def test_policy_on_cpu_has_no_graphs():
    pol = Policy.from_pack(REPO / "models" / "pi05_small_aloha", "cpu")
    assert pol.sampler is None
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        Policy.from_pack(REPO / "models" / "pi05_small_aloha", "cpu", cuda_graphs=True)


@pytest.mark.parametrize("refuse,way", [((), "whole"), ((6,), "loop")])
def test_replays_read_each_calls_inputs(pi05, monkeypatch, refuse, way):
    """Two observations and two noises through one graph equal the eager chunks: the
    replay reads the inputs copied into its buffers (a stale buffer would repeat the first
    chunk). With "whole" refused (6 inputs: the observation's 5 and the noise) the prefix
    runs eagerly and the denoising loop replays."""
    model, obs1, obs2, noise = pi05
    record, calls = stand_in(refuse)
    monkeypatch.setattr(cuda_graphs, "_record", record)
    s = GraphedSampler(model)
    noise2 = -noise
    with torch.inference_mode():
        for o, n in ((obs1, noise), (obs2, noise2), (obs1, noise2)):
            assert torch.allclose(s.sample(o, n), model.sample_actions(o, noise=n), atol=1e-6)
    assert s.used[way] == 3 and s.used["eager"] == 0
    assert len(calls) == (1 if way == "whole" else 2)  # one capture per way tried, reused


def test_falls_back_to_eager_once_with_a_reason(pi05, monkeypatch):
    model, obs, _, noise = pi05
    record, _ = stand_in(refuse=range(1000))
    monkeypatch.setattr(cuda_graphs, "_record", record)
    s = GraphedSampler(model)
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="capture failed.*whole.*loop"):
        a = s.sample(obs, noise)
    assert torch.allclose(a, model.sample_actions(obs, noise=noise), atol=1e-6)
    assert s.used == {"whole": 0, "loop": 0, "eager": 1}
    with torch.inference_mode():
        s.sample(obs, noise)  # no second warning, no second capture of that shape
    assert s.used["eager"] == 2


def test_mode_is_checked():
    with pytest.raises(ValueError, match="mode"):
        GraphedSampler(torch.nn.Linear(1, 1), mode="everything")


def test_graphs_are_bounded(pi05, monkeypatch):
    """Every new shape captures a graph; beyond max_graphs the oldest is dropped (a prompt
    whose length keeps changing must not grow the GPU's memory without end)."""
    model, obs, _, noise = pi05
    record, calls = stand_in()
    monkeypatch.setattr(cuda_graphs, "_record", record)
    s = GraphedSampler(model, max_graphs=2)
    with torch.inference_mode():
        for steps in (2, 3, 4, 2):
            assert torch.allclose(s.sample(obs, noise, steps), model.sample_actions(obs, steps, noise=noise),
                                  atol=1e-6)
    assert len(s._graphs) == 2 and len(calls) == 4  # steps 2 was dropped by 4, captured again


def test_warm_up_captures_before_the_first_chunk(monkeypatch):
    """Policy.warm_up runs one synthetic chunk through the sampler (on CUDA: the capture);
    the first real chunk then replays the graph it made."""
    record, calls = stand_in()
    monkeypatch.setattr(cuda_graphs, "_record", record)
    pol = Policy.from_pack(REPO / "models" / "pi05_small_aloha", "cpu")
    assert pol.warm_up().inference_s > 0 and calls == []  # a CPU: a chunk, nothing captured
    pol.sampler = GraphedSampler(pol.model)  # what a CUDA device gets
    assert pol.warm_up("transfer the cube").inference_s > 0 and len(calls) == 1
    raw, _ = random_observation(pol)
    pol.infer(raw)
    assert len(calls) == 1 and pol.sampler.used["whole"] == 2


def test_concurrent_calls_take_turns_on_the_graph(pi05, monkeypatch):
    """Two requests in flight (the node's max_inflight 2) share one graph's buffers: the
    sampler lets one copy in, replay and copy out at a time, so each gets its own chunk."""
    import threading
    import time

    model, obs1, obs2, noise = pi05
    busy, overlaps = threading.Lock(), []

    class SlowGraph(StandInGraph):
        def replay(self):
            if not busy.acquire(blocking=False):
                overlaps.append(1)
                return
            try:
                time.sleep(0.02)
                super().replay()
            finally:
                busy.release()

    def record(fn, static, warmup):
        out = fn(static)
        return SlowGraph(fn, static, out), out
    monkeypatch.setattr(cuda_graphs, "_record", record)
    s = GraphedSampler(model)
    with torch.inference_mode():
        s.sample(obs1, noise)  # captured before the threads start
        want = {1: model.sample_actions(obs1, noise=noise), 2: model.sample_actions(obs2, noise=noise)}
    got: dict[int, list] = {1: [], 2: []}

    def worker(k, o):
        with torch.inference_mode():
            for _ in range(3):
                got[k].append(s.sample(o, noise))
    threads = [threading.Thread(target=worker, args=(k, o)) for k, o in ((1, obs1), (2, obs2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps
    assert all(torch.allclose(a, want[k], atol=1e-6) for k in got for a in got[k])
