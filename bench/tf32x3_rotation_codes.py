"""How often the fused GPU kernels' rotation on tensor cores ("tf32x3") gives another
activation code than the fp32 rotation, emulated on the CPU (no GPU needed).

Triton's tf32x3 splits each fp32 operand a into hi = tf32(a) and lo = tf32(a − hi) and sums
hi·hi + hi·lo + lo·hi on tensor cores (fp32 accumulation). Emulated here exactly for the
products (tf32 × tf32 fits fp32) and in fp64 for the sums, against the same codes from the
fp32 product; an exact fp64 product is the yardstick (how many codes any other summation
order already moves). Inputs: every quantized layer's input of the shipped W4A4 pack on
demo-bag observations (its own rotation blocks with the channel divisor and static scale
folded in, each denoising step's scale), and heavy-tailed random inputs at published widths.

    .venv/bin/python bench/tf32x3_rotation_codes.py --out bench/results/tf32x3_rotation_codes.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omega_qvla_ros.quant.rotation import BLOCK, build_input_rotation  # noqa: E402


def tf32(a: torch.Tensor) -> torch.Tensor:
    """a rounded to TF32 (10 explicit mantissa bits, to nearest, ties away: cvt.rna)."""
    b = a.contiguous().view(torch.int32)
    return ((b + 0x1000) & ~0x1FFF).view(torch.float32)


def products(xp: torch.Tensor, blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    """x P blockdiag(blocks) per 64-block three ways: fp32, tf32x3 (emulated), fp64."""
    out = {"fp32": [], "tf32x3": [], "fp64": []}
    for i in range(blocks.shape[0]):
        x, r = xp[:, i * BLOCK:(i + 1) * BLOCK].float(), blocks[i].float()
        xh, rh = tf32(x), tf32(r)
        xl, rl = tf32(x - xh), tf32(r - rh)
        out["fp32"].append(x @ r)
        out["tf32x3"].append((xh.double() @ rh.double() + xh.double() @ rl.double()
                              + xl.double() @ rh.double()).float())
        out["fp64"].append((x.double() @ r.double()).float())
    return {k: torch.cat(v, 1) for k, v in out.items()}


def count(z: dict[str, torch.Tensor], inv_scale: float, tally: dict) -> None:
    codes = {k: torch.clamp(torch.round(v * inv_scale), -8, 7) for k, v in z.items()}
    tally["codes"] += codes["fp32"].numel()
    for k in ("tf32x3", "fp64"):
        d = (codes[k] - codes["fp32"]).abs()
        tally[f"{k}_vs_fp32_differing"] += int((d > 0).sum())
        tally[f"{k}_vs_fp32_max_code_step"] = max(tally[f"{k}_vs_fp32_max_code_step"], int(d.max()))


def new_tally() -> dict:
    return {"codes": 0, "tf32x3_vs_fp32_differing": 0, "fp64_vs_fp32_differing": 0,
            "tf32x3_vs_fp32_max_code_step": 0, "fp64_vs_fp32_max_code_step": 0}


def shipped_pack(pack: Path, frames: int) -> dict:
    """Every Triton-capable layer's input of `pack` on `frames` demo-bag observations."""
    from omega_qvla_ros.quant.qlinear import QuantLinear
    from omega_qvla_ros.runtime.policy import Policy
    from omega_qvla_ros.tools.bench_policy import DEMO_BAG
    from omega_qvla_ros.tools.model_cmds import bag_observations

    policy = Policy.from_pack(pack, "cpu")
    tally, seen = new_tally(), set()

    def hook(m: QuantLinear, args) -> None:
        rot, div = m._fused_input_rotation()  # what the fused kernels take (_triton_capable, codes aside:
        if (m.spec.act_mode not in ("static_tensor", "per_step_factorized") or rot is None  # a CPU load
                or rot.tail is not None or div is not None):  # releases them to its own kernel)
            return
        x = args[0].reshape(-1, m.in_features)
        key = (x.data_ptr(), rot.blocks.data_ptr())  # siblings of an input group read one input
        if key in seen:
            return
        seen.add(key)
        s = 1.0 if m.spec.act_mode == "static_tensor" else m._tensor_scale()
        xp = x if rot.perm is None else x.index_select(-1, rot.perm)
        count(products(xp, rot.blocks), 1.0 / s, tally)

    layers = [m for m in policy.model.modules() if isinstance(m, QuantLinear)]
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    g = torch.Generator().manual_seed(0)
    cfg = policy.model.config
    try:
        with torch.inference_mode():
            for obs in bag_observations(DEMO_BAG, policy.processor, frames, batch=1, offset=17):
                seen.clear()
                noise = torch.randn(1, cfg.action_horizon, cfg.action_dim, generator=g)
                policy.model.sample_actions(obs, noise=noise)
    finally:
        for h in handles:
            h.remove()
    return {"pack": pack.name, "frames": frames, "quantized_layers": len(layers), **tally}


def random_widths(widths=(128, 192, 512, 1024, 2048, 4096), tokens: int = 2000) -> dict:
    """Heavy-tailed channels (log-normal scales), omega rotation built from the input,
    one static scale at the rotated max / 7."""
    tally = new_tally()
    for K in widths:
        g = torch.Generator().manual_seed(K)
        x = torch.randn(tokens, K, generator=g) * torch.exp(torch.randn(K, generator=g))
        rot = build_input_rotation(x[:256], "omega")
        xp = x if rot.perm is None else x.index_select(-1, rot.perm)
        z = products(xp, rot.blocks)
        count(z, 7.0 / float(z["fp32"].abs().max()), tally)
    return {"widths": list(widths), "tokens": tokens, **tally}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", default=str(REPO / "models" / "pi05_small_aloha_w4a4"))
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    r = {"benchmark": "tf32x3_rotation_codes", "torch": torch.__version__,
         "shipped": shipped_pack(Path(args.pack), args.frames), "random": random_widths()}
    text = json.dumps(r, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
