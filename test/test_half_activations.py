"""Half-precision float parts (runtime/precision.py, `Policy(precision="fp16")` on CUDA):
the quantized layers keep their float32 state, read half activations and hand half
activations on; the chunk stays finite and within W4A4's own sensitivity of the float32
chunk. Run here on the CPU (every CPU backend); the GPU runs it in test_cuda.py."""
from pathlib import Path

import pytest
import torch

from omega_qvla_ros.quant import cpu_kernel, int_gemm
from omega_qvla_ros.quant.qlinear import QuantLinear
from omega_qvla_ros.runtime.policy import Policy
from omega_qvla_ros.runtime.precision import half_float_parts, half_observation
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
    half_float_parts(model)
    seen = []
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.register_forward_hook(lambda mod, args, out: seen.append((args[0].dtype, out.dtype)))
    with torch.inference_mode():
        a16 = model.sample_actions(half_observation(obs), noise=noise.half())
    assert a16.dtype == torch.float16 and torch.isfinite(a16).all()
    assert seen and all(d == (torch.float16, torch.float16) for d in seen)
    assert all(b.dtype == state[n].dtype for m in model.modules() if isinstance(m, QuantLinear)
               for n, b in m.named_buffers())
    # W4A4 is discontinuous: half rounding flips some activation codes, which moves the chunk
    # about as far as a 1e-3 relative change of the image does (measured: mean 0.028 vs 0.023)
    assert float((a16.float() - a32).abs().mean()) < 0.5 * float(a32.abs().mean())


def test_fp_gr00t_with_half_float_parts_matches_float32():
    """GR00T computes its time embedding in float32: the Linear pre-hooks meet it in half.
    An FP model in half stays within fp16 rounding of float32."""
    pol = Policy.from_pack(REPO / "models" / "gr00t_small_aloha", "cpu", cuda_graphs=False, lean=False)
    raw, noise = random_observation(pol)
    obs = pol.processor.observation(raw)[0]
    with torch.inference_mode():
        a32 = pol.model.sample_actions(obs, noise=noise)
        a16 = half_float_parts(pol.model).sample_actions(half_observation(obs), noise=noise.half())
    assert a16.dtype == torch.float16
    assert float((a16.float() - a32).abs().max()) < 0.02 * float(a32.abs().max())


def test_policy_precision_is_checked():
    path = REPO / "models" / "pi05_small_aloha"
    with pytest.raises(ValueError, match="for a CUDA device"):
        Policy.from_pack(path, "cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        Policy.from_pack(path, "cpu", precision="bf16")


def test_lean_half_storage_computes_in_half_too():
    """A lean load keeps big float parts in half and computes in float32
    (quant/float_storage.py); with the float parts in half they compute in half."""
    from torch import nn

    from omega_qvla_ros.quant.float_storage import keep_half

    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 4))
    keep_half(model, modules={"0": model[0], "1": model[1]})
    assert model(torch.tensor([1, 2])).dtype == torch.float32
    half_float_parts(model)
    assert model[0](torch.tensor([1, 2])).dtype == torch.float16
    assert model(torch.tensor([1, 2])).dtype == torch.float16
