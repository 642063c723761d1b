"""Where a W4A4 chunk's time goes, beside FP32: per part of the model (vision tower, VLM
trunk, action head; the family's scopes say which is which) the linears W4A4 quantizes and
every other leaf module (float linears, norms, embeddings), and what runs outside modules
(attention's products and softmax, activations, residual adds, the loop's glue), from
forward hooks on one chunk after a warm one. Each pack runs in its own process, as the
runtime loads it (lean; a published size fits one at a time).

    python bench/profile_chunk.py --w4a4 PACK --fp PACK --out bench/results/profile_X.json

The hooks add a few µs per module call, the same on both sides; chunk_s is the hooked
chunk (bench full / bench policy time chunks without hooks).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path


def profile(pack: str, kernel_weights: str = "auto", chunks: int = 1, top: int = 0) -> dict:
    """One warm chunk, then `chunks` hooked ones of `pack`: seconds per part in the fastest,
    and with `top` its slowest leaf modules, layer indices pooled ("blocks.*.norm1")."""
    import torch

    from omega_qvla_ros.models import get_family
    from omega_qvla_ros.models.memory import component_of
    from omega_qvla_ros.quant.qlinear import QuantLinear
    from omega_qvla_ros.tools.bench_full import chunk_inputs, load_as_runtime

    model, manifest = load_as_runtime(pack, kernel_weights)
    obs, noise = chunk_inputs(model, manifest, pack)
    scopes = get_family(model.config.family).scopes
    quantized_scope = scopes.backbone + scopes.action_head
    spent: dict[str, float] = {}  # seconds per leaf module in the chunk being timed
    where: dict[str, tuple[str, str]] = {}  # leaf module -> (its part's key, its name with layer indices pooled)

    def timed(mod: torch.nn.Module, name: str) -> None:
        start: list[float] = []
        mod.register_forward_pre_hook(lambda m, a: start.append(time.perf_counter()))
        mod.register_forward_hook(lambda m, a, o: spent.__setitem__(
            name, spent.get(name, 0.0) + time.perf_counter() - start.pop()))

    inside = None  # the QuantLinear whose submodules come next (depth first): not hooked again
    for name, m in model.named_modules():
        if not name or (inside and name.startswith(inside)):
            continue
        if isinstance(m, QuantLinear) or next(m.children(), None) is None:  # leaf modules
            inside = name + "."
            kind = "quantized_linears" if any(re.search(q, name) for q in quantized_scope) else "float_modules"
            where[name] = (f"{component_of(name, scopes)}_{kind}_s", re.sub(r"(layers|blocks)\.\d+", r"\1.*", name))
            timed(m, name)
    runs = []
    with torch.inference_mode():
        model.sample_actions(obs, noise=noise)
        for _ in range(chunks):
            spent.clear()
            t = time.perf_counter()
            model.sample_actions(obs, noise=noise)
            runs.append((time.perf_counter() - t, dict(spent)))
    total, fastest = min(runs, key=lambda r: r[0])
    parts: dict[str, float] = {}
    pooled: dict[str, float] = {}
    for name, dt in fastest.items():
        part, pool = where[name]
        parts[part] = parts.get(part, 0.0) + dt
        pooled[pool] = pooled.get(pool, 0.0) + dt
    out = {"pack": Path(pack).name, "quantized": bool(manifest["layers"]), "chunk_s": total,
           **dict(sorted(parts.items())), "outside_modules_s": total - sum(parts.values())}
    if top:  # all of them: main() keeps the W4A4 run's slowest and the same ones of FP32
        out["slowest_modules"] = dict(sorted(pooled.items(), key=lambda kv: -kv[1]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--w4a4", required=True, help="the W4A4 pack")
    ap.add_argument("--fp", required=True, help="the FP pack it was made from")
    ap.add_argument("--kernel-weights", default="auto", help="the W4A4 load's kernel_weights")
    ap.add_argument("--chunks", type=int, default=3, help="hooked chunks per pack (the fastest counts)")
    ap.add_argument("--top", type=int, default=0,
                    help="also record the W4A4 chunk's N slowest leaf modules (and their FP32 times)")
    ap.add_argument("--out", help="write the JSON here (else stdout)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child: profile this pack, print JSON
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(profile(a.one, a.kernel_weights, a.chunks, a.top)))
        return 0
    import torch

    from omega_qvla_ros.tools.machine import describe
    runs = {}
    for name, pack in (("w4a4", a.w4a4), ("fp32", a.fp)):
        p = subprocess.run([sys.executable, __file__, "--w4a4", a.w4a4, "--fp", a.fp, "--one", pack,
                            "--kernel-weights", a.kernel_weights, "--chunks", str(a.chunks), "--top", str(a.top)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            print(f"profile_chunk: {pack}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}",
                  file=sys.stderr)
            return 1
        runs[name] = json.loads(p.stdout.strip().splitlines()[-1])
    if a.top:  # the W4A4 chunk's slowest leaf modules, and the same modules in FP32
        names = list(runs["w4a4"]["slowest_modules"])[:a.top]
        for run in runs.values():
            run["slowest_modules"] = {n: run["slowest_modules"].get(n, 0.0) for n in names}
    r = {"benchmark": "profile", "machine": describe(), "threads": torch.get_num_threads(),
         "torch": torch.__version__, "kernel_weights": a.kernel_weights, "chunks": a.chunks, "runs": runs,
         "w4a4_speed_vs_fp32": runs["fp32"]["chunk_s"] / runs["w4a4"]["chunk_s"]}
    text = json.dumps(r, indent=2) + "\n"
    if a.out:
        Path(a.out).write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
