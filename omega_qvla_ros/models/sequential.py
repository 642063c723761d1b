"""Sequential quantization in bounded memory (what llm-compressor calls its sequential
pipeline, and GPTQ's reference code does layer by layer).

The model is built on the `meta` device. Its family cuts the calibration forward into
stages that follow the data (vision layers, the prefix, each trunk layer, the action
head); for every stage, in order:
1. its floating-point weights are read from the source (a memory-mapped FP pack or
   checkpoint) into just that stage's modules;
2. the calibration batches run through the stage, from the previous stage's outputs,
   capturing its linears' inputs (Hessians, per-step activation samples);
3. its linears in the recipe's scope are quantized (`quant.quantize.quantize_targets`)
   and the stage's tensors are written to the pack;
4. its weights are released (back to `meta`), and the outputs it computed (in floating
   point, as the all-in-memory calibration does) feed the next stage.
So a process holds one stage's weights, the activations at one boundary, and one
layer's calibration statistics: the published Pi0.5 quantizes in a few GiB. The result
equals `calibrate.quantize_model` on the whole model (same statistics, same codes;
tested on the small models).
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

import torch
from torch import nn

from omega_qvla_ros.quant.pack import PackWriter, assign_tensor, read_manifest, verify_files, weight_files
from omega_qvla_ros.quant.quantize import quantize_targets, release_freed_memory, select_targets, start_report
from omega_qvla_ros.quant.recipes import Recipe

from .calibrate import scoped_recipe
from .common import Observation
from .registry import family_of


@dataclass
class Stage:
    """One step of the calibration forward: the submodules it computes with (qualified
    names; their tensors are loaded before and released after) and what it runs over
    every calibration batch, keeping the next stage's inputs."""

    name: str
    modules: list[str]
    run: Callable[[], None]
    # `run` may run more than once (it reads its inputs without consuming them): the stage's
    # GPTQ Hessians are then held a budget's worth at a time (quantize_targets)
    repeatable: bool = False


# GPTQ Hessians held at once in a repeatable stage (GR00T N1.5's DiT holds 3 GiB of them)
HESSIAN_BUDGET = 512 << 20


def vision_stages(model, batches: list[Observation], state: dict, tower: str, projector: list[str],
                  layers) -> list[Stage]:
    """The SigLIP tower as stages (embeddings, each layer, then post-norm + projector via
    `model.vision_out`), leaving the projected image tokens in state["img"]; both
    families' towers are the same module."""
    def embed():
        state["h"] = [model.vision_in(o.images) for o in batches]

    def layer_run(layer):
        def run():
            state["h"] = [layer(h) for h in state["h"]]
        return run

    def out():
        state["img"] = [model.vision_out(h, o.batch_size) for h, o in zip(state.pop("h"), batches)]

    return ([Stage("vision embeddings", [tower + ".embeddings"], embed)]
            + [Stage(f"vision layer {i}", [f"{tower}.encoder.layers.{i}"], layer_run(layer))
               for i, layer in enumerate(layers)]
            + [Stage("projector", [tower + ".post_layernorm", *projector], out)])


class WeightSource(Protocol):
    def get(self, name: str) -> torch.Tensor: ...


class PackWeights:
    """The FP tensors of a pack, read one at a time from its memory-mapped shards."""

    def __init__(self, pack_dir: str | Path) -> None:
        self.dir = Path(pack_dir)
        self.manifest = read_manifest(self.dir)
        verify_files(self.dir, self.manifest)
        if self.manifest.get("layers"):
            raise ValueError(f"{pack_dir} is a quantized pack; sequential quantization starts from FP weights")
        self.file_of = {k: f for f, names in weight_files(self.manifest).items() for k in names}
        self._handles: dict[str, object] = {}

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        f = self.file_of[name]
        if f not in self._handles:
            self._handles[f] = safe_open(str(self.dir / f), framework="pt")
        return self._handles[f].get_tensor(name)

    def close(self) -> None:
        """Unmap the shards: mapped pages a stage read would otherwise stay resident."""
        self._handles.clear()


class StateWeights:
    """Tensors from a state dict (a model already in memory; tests)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def get(self, name: str) -> torch.Tensor:
        return self.state[name]


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def materialize(model: nn.Module, prefixes: list[str], source: WeightSource) -> int:
    """Load the meta tensors under `prefixes` from `source` (in the model's dtypes);
    returns the bytes loaded."""
    n = 0
    for name, t in model.state_dict(keep_vars=True).items():
        if _under(name, prefixes) and t.is_meta:
            v = source.get(name)
            if tuple(v.shape) != tuple(t.shape):
                raise ValueError(f"{name}: source shape {list(v.shape)}, model expects {list(t.shape)}")
            assign_tensor(model, name, v.to(t.dtype))
            n += t.numel() * t.element_size()
    return n


def release(model: nn.Module, prefixes: list[str]) -> None:
    """Give back the memory of every tensor under `prefixes` (they become meta again)."""
    for name, t in model.state_dict(keep_vars=True).items():
        if _under(name, prefixes) and not t.is_meta:
            assign_tensor(model, name, torch.empty_like(t, device="meta"))


def peak_rss_gib() -> float:
    """This process's peak resident set so far (GiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@dataclass
class SequentialReport:
    stages: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_gib: float = 0.0


def quantize_sequential(model: nn.Module, source: WeightSource, recipe: "str | Recipe",
                        observations: list[Observation], writer: PackWriter | None = None, seed: int = 0,
                        keep: bool = False, log: Callable[[str], None] | None = None) -> SequentialReport:
    """Quantize `model` (built on `meta`, or already in memory) stage by stage, reading
    FP weights from `source`; each stage's tensors go to `writer` (when given) and are
    released unless `keep`. Calibration uses full sampling runs with fixed noise, as
    `calibrate.quantize_model` does."""
    fam = family_of(model)
    if fam.stages is None:
        raise ValueError(f"family {fam.name!r} has no sequential calibration program")
    recipe = scoped_recipe(model, recipe)
    start_report(model, recipe)
    targets_all = set(select_targets(model, recipe))  # names only: holding the modules would keep
    # every replaced layer's FP weights alive
    c = model.config

    def noise(batch: int) -> torch.Tensor:  # the same draw as calibrate.calibration_forward
        return torch.randn(batch, c.action_horizon, c.action_dim, generator=torch.Generator().manual_seed(seed))
    rep = SequentialReport()
    t_start = time.time()
    covered: list[str] = []
    stages = list(fam.stages(model, observations, noise))
    for i, stage in enumerate(stages):
        t0 = time.time()
        loaded = materialize(model, stage.modules, source)
        if hasattr(source, "close"):
            source.close()
        targets = {n: v for n, v in select_targets(model, recipe).items() if _under(n, stage.modules)}
        n_targets = len(targets)
        with torch.no_grad():
            if targets:
                quantize_targets(model, targets, stage.run, seed=seed,
                                 hessian_budget_bytes=HESSIAN_BUDGET if stage.repeatable else None)
            else:
                stage.run()
        del targets  # the replaced nn.Linear modules (and their FP weights) go with it
        if writer is not None:
            for prefix in stage.modules:
                writer.add_module(model.get_submodule(prefix), prefix + ".")
        if not keep:
            release(model, stage.modules)
        release_freed_memory()
        covered += stage.modules
        info = {"stage": stage.name, "seconds": time.time() - t0, "loaded_mib": loaded / 2**20,
                "quantized": n_targets, "peak_rss_gib": peak_rss_gib()}
        rep.stages.append(info)
        if log:
            done = time.time() - t_start
            eta = done / (i + 1) * (len(stages) - i - 1)
            log(f"[{i + 1}/{len(stages)}] {stage.name}: {info['seconds']:.1f} s, {n_targets} layers quantized, "
                f"peak RSS {info['peak_rss_gib']:.2f} GiB, ETA {eta / 60:.1f} min")
    missing = [n for n in model.state_dict() if not _under(n, covered)]
    if missing:
        raise RuntimeError(f"family {fam.name!r}: no stage covers {missing[0]!r} (a program bug)")
    left = [n for n in targets_all if n not in model.quantization_report["layers"]]
    if left:
        raise RuntimeError(f"layer {left[0]!r} was in the recipe's scope but no stage quantized it")
    rep.seconds, rep.peak_rss_gib = time.time() - t_start, peak_rss_gib()
    return rep
