"""Where do a pack's CPU and GPU actions part? Layer by layer, on a GPU machine.

    python bench/cuda_diag.py models/pi05_small_aloha_w4a4 [cuda]

Runs the node's runtime on both devices with the same observation and noise, records every
linear / norm / conv call, and prints the first layers whose outputs differ by more than
1e-4 (relative). For a quantized layer it also feeds the CPU's input to both devices: if
that gives equal codes and outputs, the layer is right and the difference came in with
its input (a rounding tie flipping an activation code upstream).
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omega_qvla_ros.quant.context import current_step, denoising_step  # noqa: E402
from omega_qvla_ros.quant.qlinear import QuantLinear  # noqa: E402
from omega_qvla_ros.runtime.policy import Policy  # noqa: E402
from omega_qvla_ros.tools.device_check import random_observation  # noqa: E402

TRACED = (QuantLinear, torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Conv2d)


def traced_infer(pol: Policy, raw, noise) -> tuple[list, np.ndarray]:
    calls, hooks = [], []
    for name, m in pol.model.named_modules():
        if isinstance(m, TRACED):
            def hook(mod, inp, out, name=name):
                calls.append((name, current_step(), inp[0].detach().float().cpu(), out.detach().float().cpu()))
            hooks.append(m.register_forward_hook(hook))
    try:
        return calls, pol.infer(raw, noise=noise).positions
    finally:
        for h in hooks:
            h.remove()


def main(path: str, device: str = "cuda", show: int = 25) -> None:
    pols = {d: Policy.from_pack(path, d) for d in ("cpu", device)}
    raw, noise = random_observation(pols["cpu"])
    (c_cpu, a_cpu), (c_dev, a_dev) = (traced_infer(pols[d], raw, noise) for d in ("cpu", device))
    print("action max |Δ| (rad):", float(np.abs(a_cpu - a_dev).max()), "calls:", len(c_cpu), len(c_dev))
    for (name, step, i1, o1), (name2, _, i2, o2) in zip(c_cpu, c_dev):
        assert name == name2, (name, name2)
        dout = float((o1 - o2).abs().max() / (o1.abs().max() + 1e-12))
        if dout <= 1e-4 or show <= 0:
            continue
        show -= 1
        din = float((i1 - i2).abs().max() / (i1.abs().max() + 1e-12))
        line = f"{name} step {step}: input {din:.1e} output {dout:.1e}"
        m_cpu = pols["cpu"].model.get_submodule(name)
        if isinstance(m_cpu, QuantLinear):
            m_dev = pols[device].model.get_submodule(name)
            with torch.no_grad(), (denoising_step(*step) if step else contextlib.nullcontext()):
                y1, y2 = m_cpu(i1), m_dev(i1.to(device)).cpu()
                k1, k2 = m_cpu.activation_codes(i1)[0], m_dev.activation_codes(i1.to(device))[0].cpu()
            line += (f" | same input: output {float((y1 - y2).abs().max() / y1.abs().max()):.1e}, "
                     f"codes differing {int((k1 != k2).sum())}/{k1.numel()} ({m_cpu.spec.act_mode})")
        print(line)


if __name__ == "__main__":
    main(sys.argv[1], *(sys.argv[2:3]))
