"""CUDA-graph replay of a policy's action sampling.

A chunk of a small VLA on a GPU is hundreds of short kernels (ten denoising steps of
every expert layer, each W4A4 layer two fused kernels plus the norms and attention
around them): launched one by one from Python the GPU waits on the CPU. The shapes of a
chunk are fixed, so the whole sequence is captured once per shape and replayed as one
graph (an H200, shipped Pi0.5: W4A4 69 → 6.9 ms per chunk, FP16 52 → 5.9 ms; README):

- "whole": `sample_actions` (prefix and denoising loop) in one graph, where every op of
  the prefix can be captured;
- "loop": the prefix runs as usual and the denoising loop is replayed (the part that runs
  `num_steps` times) — the fallback where the prefix cannot be captured (an op that reads
  a GPU value on the host, such as N1.5's image-token count check).

Every step's activation scales are Python floats in the step context
(quant.context.denoising_step), so each step's scales are baked into its part of the
graph, as the eager loop would pass them. Inputs are copied into the graph's own
buffers before each replay and the output is copied out, so a caller never holds the
graph's memory. Where neither capture works the sampler runs eagerly and says why once.
A graph's buffers are shared by every call, so calls (the node's requests in flight)
take turns: one lock per sampler around copy-in, replay and copy-out.
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from omega_qvla_ros.models.common import Observation, PrefixCache

MODES = ("whole", "loop")


def _obs_tensors(o: Observation) -> list[torch.Tensor | None]:
    return [o.images, o.tokens, o.token_mask, o.state, o.image_mask]


def _prefix_tensors(p: PrefixCache) -> list[torch.Tensor | None]:
    return [p.mask, p.next_position, p.features, p.state_features, *p.keys, *p.values]


def _prefix_from(t: list[torch.Tensor | None], layers: int) -> PrefixCache:
    return PrefixCache(mask=t[0], next_position=t[1], features=t[2], state_features=t[3],
                       keys=list(t[4:4 + layers]), values=list(t[4 + layers:4 + 2 * layers]))


def _signature(ts: list[torch.Tensor | None]) -> tuple:
    return tuple(None if t is None else (tuple(t.shape), t.dtype) for t in ts)


@dataclass
class Graph:
    """A captured call: `run(inputs)` copies them into the graph's buffers, replays it and
    returns a copy of its output."""

    graph: "torch.cuda.CUDAGraph"
    inputs: list[torch.Tensor | None]
    output: torch.Tensor

    def run(self, inputs: list[torch.Tensor | None]) -> torch.Tensor:
        for dst, src in zip(self.inputs, inputs):
            if dst is not None:
                dst.copy_(src)
        self.graph.replay()
        return self.output.clone()


def _record(fn: Callable[[list], torch.Tensor], static: list[torch.Tensor | None],
            warmup: int) -> tuple["torch.cuda.CUDAGraph", torch.Tensor]:
    """fn(static) captured as a CUDA graph, after `warmup` eager calls on a side stream
    (they compile and autotune the Triton kernels and fill the layers' caches: nothing may
    be built for the first time inside a capture). Returns (graph, its output buffer)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(static)
    return graph, out


def capture(fn: Callable[[list], torch.Tensor], inputs: list[torch.Tensor | None], warmup: int) -> Graph:
    """fn captured on the graph's own copies of `inputs` (also for a plain module:
    bench/cuda_check.py times layer stacks this way)."""
    static = [None if t is None else t.clone() for t in inputs]
    graph, out = _record(fn, static, warmup)
    return Graph(graph, static, out)


class GraphedSampler:
    """`sample(observation, noise, num_steps)` as model.sample_actions(observation,
    num_steps, noise), replayed from CUDA graphs (see the module docstring). `mode`
    "auto" tries "whole" then "loop"; a shape whose capture failed runs eagerly from then
    on. `used` counts the calls per way they ran ("whole", "loop", "eager"). At most
    `max_graphs` shapes keep their graphs (each holds its own memory); the oldest goes."""

    def __init__(self, model: torch.nn.Module, mode: str = "auto", warmup: int = 2, max_graphs: int = 8) -> None:
        if mode not in ("auto", *MODES):
            raise ValueError(f"CUDA graph mode must be 'auto', 'whole' or 'loop', got {mode!r}")
        self.model, self.mode, self.warmup, self.max_graphs = model, mode, warmup, max_graphs
        self._graphs: dict[tuple, Graph | None] = {}  # None: its capture failed
        self.failures: dict[str, str] = {}  # mode -> why its last capture failed
        self.used = {"whole": 0, "loop": 0, "eager": 0}
        self._warned = False
        self._lock = threading.Lock()  # one graph's buffers, one call at a time

    def _graph(self, key: tuple, fn: Callable[[list], torch.Tensor],
               inputs: list[torch.Tensor | None]) -> Graph | None:
        if key not in self._graphs:
            if len(self._graphs) >= self.max_graphs:  # shapes keep changing: the oldest graph goes
                del self._graphs[next(iter(self._graphs))]
            try:
                self._graphs[key] = capture(fn, inputs, self.warmup)
            except Exception as e:  # an op that cannot be captured: this shape runs another way
                self._graphs[key] = None
                self.failures[key[0]] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                if torch.cuda.is_available():
                    torch.cuda.synchronize()  # a sticky device error surfaces here, not later
        return self._graphs[key]

    def sample(self, observation: Observation, noise: torch.Tensor, num_steps: int | None = None) -> torch.Tensor:
        with self._lock:
            return self._sample(observation, noise, num_steps)

    def _sample(self, observation: Observation, noise: torch.Tensor, num_steps: int | None) -> torch.Tensor:
        model = self.model
        steps = num_steps or model.config.num_steps
        obs = _obs_tensors(observation)
        if self.mode in ("auto", "whole"):
            g = self._graph(("whole", steps, _signature(obs), _signature([noise])),
                            lambda t: model.sample_actions(Observation(*t[:5]), steps, noise=t[5]), obs + [noise])
            if g is not None:
                self.used["whole"] += 1
                return g.run(obs + [noise])
        prefix = model._prefix(observation)
        layers = len(prefix.keys)
        pre = _prefix_tensors(prefix)
        if self.mode in ("auto", "loop"):
            g = self._graph(("loop", steps, _signature(pre), _signature([noise])),
                            lambda t: model.sample_from_prefix(_prefix_from(t[:-1], layers), t[-1], steps),
                            pre + [noise])
            if g is not None:
                self.used["loop"] += 1
                return g.run(pre + [noise])
        if not self._warned:
            warnings.warn("CUDA graph capture failed (" + "; ".join(f"{m}: {w}" for m, w in self.failures.items())
                          + "); sampling runs eagerly", RuntimeWarning)
            self._warned = True
        self.used["eager"] += 1
        return model.sample_from_prefix(prefix, noise, steps)
