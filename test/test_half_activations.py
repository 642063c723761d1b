"""A W4A4 pack with its float parts in half precision (`device_check.chunk_times(...,
dtype="fp16")`, how the GPU benchmark runs it): the quantized layers keep their float32
state, read half activations and hand half activations on; the chunk stays finite and
within W4A4's own sensitivity of the float32 chunk."""
from pathlib import Path

import pytest
import torch

from omega_qvla_ros.models.common import Observation
from omega_qvla_ros.quant import cpu_kernel, int_gemm
from omega_qvla_ros.quant.qlinear import QuantLinear
from omega_qvla_ros.runtime.policy import Policy
from omega_qvla_ros.tools.device_check import random_observation

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("backend", ["auto", "avx2", "fbgemm", "exact"])
def test_w4a4_pack_runs_with_half_float_parts(backend):
    if backend == "avx2" and not cpu_kernel.available():
        pytest.skip(cpu_kernel.unavailable_reason())
    if backend == "fbgemm" and not int_gemm.fbgemm_available():
        pytest.skip("no fbgemm in this torch")
    pol = Policy.from_pack(REPO / "models" / "pi05_small_aloha_w4a4", "cpu", cuda_graphs=False, lean=False)
    model = pol.model
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.backend = backend
    raw, noise = random_observation(pol)
    obs = pol.processor.observation(raw)[0]
    with torch.inference_mode():
        a32 = model.sample_actions(obs, noise=noise)
    state = {n: b.clone() for m in model.modules() if isinstance(m, QuantLinear) for n, b in m.named_buffers()}
    seen = []
    for m in model.modules():
        if not isinstance(m, QuantLinear):
            m._apply(lambda t: t.half() if t.is_floating_point() else t, recurse=False)
        else:
            m.register_forward_hook(lambda mod, args, out: seen.append((args[0].dtype, out.dtype)))
    half = Observation(obs.images.half(), obs.tokens, obs.token_mask, obs.state.half(), obs.image_mask)
    with torch.inference_mode():
        a16 = model.sample_actions(half, noise=noise.half())
    assert a16.dtype == torch.float16 and torch.isfinite(a16).all()
    assert seen and all(d == (torch.float16, torch.float16) for d in seen)
    assert all(b.dtype == state[n].dtype for m in model.modules() if isinstance(m, QuantLinear)
               for n, b in m.named_buffers())
    # W4A4 is discontinuous: half rounding flips some activation codes, which moves the chunk
    # about as far as a 1e-3 relative change of the image does (measured: mean 0.028 vs 0.023)
    assert float((a16.float() - a32).abs().mean()) < 0.5 * float(a32.abs().mean())
