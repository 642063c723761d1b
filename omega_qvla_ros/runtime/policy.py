"""Policy: a loaded pack (model + processor) returning action chunks in joint units."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from omega_qvla_ros.models.processor import Processor, processor_from_manifest
from omega_qvla_ros.quant.pack import PackFormatError, load_pack
from omega_qvla_ros.quant.qlinear import QuantLinear

from .cuda_graphs import GraphedSampler
from .precision import PRECISIONS, half_float_parts, half_observation
from .preprocess import RawObservation
from .robot import RobotSpec
from .scheduler import ActionChunk


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    return d


def default_robot_for(processor: Processor, extra: dict | None = None) -> RobotSpec:
    """Joint limits for the processor's joints: the pack's recorded robot when it names
    them, the ALOHA defaults when they are ALOHA's, else unbounded (the node's YAML
    limits then apply)."""
    for cand in ([RobotSpec.from_dict(extra["robot"])] if extra and "robot" in extra else []) + [RobotSpec()]:
        try:
            return cand.limits_for(processor.joint_names)
        except ValueError:
            continue
    n = processor.dof
    return RobotSpec(processor.joint_names, np.full(n, -np.inf), np.full(n, np.inf), np.full(n, np.inf),
                     processor.cameras)


def mid_range_joints(processor: Processor) -> np.ndarray:
    """The joint positions at the middle of the processor's state normalisation range
    (a synthetic observation's state)."""
    return processor.config.state_norm.unnormalize(torch.zeros(processor.dof, dtype=torch.float64)).double().numpy()


def synthetic_observation(cameras: list[str], joint_names: list[str], joints: np.ndarray,
                          instruction: str = "") -> RawObservation:
    """Black images from `cameras`, `joints` (mid-range: mid_range_joints): an input any
    working pack turns into a finite chunk, for warming up before the robot's first one."""
    return RawObservation({c: np.zeros((224, 224, 3), np.uint8) for c in cameras}, list(joint_names),
                          np.asarray(joints, np.float64), instruction or "warm up", 0.0)


class Policy:
    """model + processor. `robot` carries the joint limits the safety filter applies
    (default: see default_robot_for); its joints must be the processor's."""

    def __init__(self, model, processor: Processor, device: torch.device | str = "cpu",
                 robot: RobotSpec | None = None, recipe: str = "fp16", control_dt: float = 0.02,
                 manifest: dict | None = None, cuda_graphs: bool | None = None,
                 precision: str = "float32") -> None:
        self.model, self.processor = model, processor
        self.device = torch.device(device)
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {self.device}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError(f"precision 'fp16' is for a CUDA device, not {self.device} (no fast fp16 there)")
        self.half = precision == "fp16"
        if self.half:  # the float parts in half, before any graph is captured
            half_float_parts(model)
        # on a GPU the chunk replays from CUDA graphs (runtime/cuda_graphs.py) unless told not to
        self.sampler = (GraphedSampler(model) if self.device.type == "cuda" and cuda_graphs is not False
                        else None)
        self.manifest = manifest or {}
        self.recipe = recipe
        self.robot = robot or default_robot_for(processor, self.manifest.get("extra"))
        if list(self.robot.joint_names) != processor.joint_names:
            raise ValueError(f"robot joints {self.robot.joint_names} differ from the model's "
                             f"{processor.joint_names}")
        cfg = model.config
        if processor.num_cameras != cfg.cameras:
            raise ValueError(f"the model takes {cfg.cameras} cameras, its processor gives {processor.num_cameras}")
        self.control_dt = control_dt

    @classmethod
    def from_pack(cls, path: str | Path, device: str = "auto", robot: RobotSpec | None = None,
                  control_dt: float = 0.02, lean: bool = True, kernel_weights: str | None = None,
                  cuda_graphs: bool | None = None, precision: str = "float32") -> "Policy":
        """Load a pack to run it. `lean` (the default): large unquantized parts stay at
        their stored half precision when they are big (> 512 MiB), integer layers give
        back their int4 codes once their kernels hold them, and in a big pack the integer
        layers keep their weights at int4 (our AVX2 kernel on x86 with AVX2, else torch's
        CPU int4 kernel: `kernel_weights` "auto", see quant.pack.load_pack) — a W4A4 process then holds
        about the pack's size plus activations. `kernel_weights="hold"` keeps every int8 kernel weight
        (twice the int4 bytes; faster than torch's int4 kernel, within about 5% of our kernel's int4
        codes either way at the published sizes); `lean=False` keeps everything in float32.
        `cuda_graphs` (default: on a CUDA device) replays each chunk from CUDA graphs;
        `precision` "fp16" (CUDA only) runs the unquantized parts in half (runtime/precision.py)."""
        dev = pick_device(device)
        kw = kernel_weights or ("auto" if lean else "hold")
        model, manifest = load_pack(path, device=dev, float_storage="auto" if lean else "float32",
                                    integer_codes="drop" if lean else "keep", kernel_weights=kw)
        try:
            proc = processor_from_manifest(manifest, path, RobotSpec().to_dict(), model.config)
        except (ValueError, TypeError, KeyError) as e:
            raise PackFormatError(f"{path}: bad processor in the manifest ({type(e).__name__}: {e})") from None
        return cls(model, proc, dev, robot=robot, recipe=(manifest.get("recipe") or {}).get("name", "unknown"),
                   control_dt=control_dt, manifest=manifest, cuda_graphs=cuda_graphs, precision=precision)

    @property
    def cameras(self) -> list[str]:
        return self.processor.cameras

    @property
    def horizon(self) -> int:
        return self.model.config.action_horizon

    def integer_layers(self) -> int:
        return sum(1 for m in self.model.modules() if isinstance(m, QuantLinear) and m.uses_integer_path())

    @property
    def joint_names(self) -> list[str]:
        return list(self.processor.joint_names)

    @property
    def captures_graphs(self) -> bool:
        """Whether chunks replay from CUDA graphs (captured on the first chunk of a shape)."""
        return self.sampler is not None

    def synthetic_observation(self, instruction: str = "", cameras: list[str] | None = None) -> RawObservation:
        """Black images from `cameras` (default: all the model's), joints at mid-range."""
        return synthetic_observation(cameras or self.cameras, self.joint_names, mid_range_joints(self.processor),
                                     instruction)

    def warm_up(self, instruction: str = "", cameras: list[str] | None = None,
                num_steps: int | None = None) -> ActionChunk:
        """One chunk of `synthetic_observation`, so that the first real chunk runs at its
        steady speed. On CUDA this captures the graphs for `num_steps` (the Triton kernels
        compiled and autotuned with them): the first real chunk replays instead of taking
        seconds; a prompt of another token length (N1.5 pads to the longest prompt) is
        captured again on its first chunk. On a CPU it pays the first call's one-time costs
        (allocations, kernel plans, weight pages first touched): 2-8x a small model's chunk,
        a few percent of a published-size one. Returns the chunk (its `inference_s`: the
        time the node's deadline checks)."""
        return self.infer(self.synthetic_observation(instruction, cameras), num_steps=num_steps)

    def infer(self, raw: RawObservation, noise: torch.Tensor | None = None,
              num_steps: int | None = None) -> ActionChunk:
        """Action chunk in joint units for `raw` (raises ObservationError on bad input).
        `noise` [1, horizon, action_dim] fixes the flow's starting point, as LeRobot's
        predict_action_chunk(batch, noise=...) does, so runs can be compared."""
        obs, q = self.processor.observation(raw)
        t0 = time.perf_counter()
        with torch.inference_mode():
            obs = obs.to(self.device)
            if self.half:
                obs = half_observation(obs)
            # a graph takes its noise as an input (not drawn inside the replay) and a half
            # model takes it in half (the model would draw float32): drawn here for both
            if noise is None and (self.sampler is not None or self.half):
                noise = self.model.initial_noise(obs.batch_size, self.device)
            if noise is not None:
                noise = noise.to(self.device, torch.float16 if self.half else noise.dtype)
            a = (self.model.sample_actions(obs, num_steps=num_steps, noise=noise) if self.sampler is None
                 else self.sampler.sample(obs, noise, num_steps))
        positions = self.processor.actions(a.float().cpu(), q)[0]
        return ActionChunk(positions, raw.stamp, self.control_dt, time.perf_counter() - t0)
