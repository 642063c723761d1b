"""Half-precision float parts for a GPU: a model's unquantized modules (vision, norms,
attention, unquantized projections) in fp16, its quantized layers as they are (their
float32 scales and rotations kept; they read and write fp16 activations, the fused Triton
kernels in their epilogue). On an H200 this took GR00T's W4A4 chunk from 3.30 to 2.67 ms
and an FP pack runs as an fp16 model (bench/results/quant_cuda_nvidia_h200_run2.json).
A CPU has no fast fp16: the option is for CUDA devices (Jetson included)."""
from __future__ import annotations

import torch
from torch import nn

from omega_qvla_ros.models.common import Observation
from omega_qvla_ros.quant.qlinear import QuantLinear

PRECISIONS = ("float32", "fp16")


def half_float_parts(model: nn.Module) -> nn.Module:
    """Convert `model` in place: every floating parameter and buffer outside the quantized
    layers to fp16 (lean-loaded half weights then compute in half as well); every Linear
    and quantized layer casts an input that arrives in
    float32 (a feature some model code computes in float32, such as GR00T's sinusoidal
    time embedding) to fp16."""
    for m in model.modules():
        if not isinstance(m, QuantLinear):
            m._apply(lambda t: t.half() if t.is_floating_point() else t, recurse=False)
        if hasattr(m, "compute_dtype"):  # a lean-loaded embedding (quant/float_storage.py) hands on half too
            m.compute_dtype = torch.float16
        if isinstance(m, (nn.Linear, QuantLinear)):
            m.register_forward_pre_hook(_half_input)
    return model


def _half_input(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    return (x.half(), *args[1:]) if x.dtype == torch.float32 else args


def half_observation(obs: Observation) -> Observation:
    """The observation's images and state in fp16 (tokens and masks as they are)."""
    return Observation(obs.images.half(), obs.tokens, obs.token_mask, obs.state.half(), obs.image_mask)
