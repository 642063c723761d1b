"""How our CPU kernel's threads share a call (quant/cpu_kernel.py, SHARES): by rows, by
columns, and what `auto` picks, per layer at the published sizes' shapes (with the
layer's 64-block rotation, int4 codes held as the runtime does at those sizes, and int8
weights held), the variants taking turns in each round, the fastest round counting
(bench_stack.times_in_turns).
Ratios from one run; the machine is shared, so compare within a row.

    .venv/bin/python bench/kernel_share.py [--rounds 6] [--out bench/results/kernel_share.json]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

# (model, layer, tokens, inputs, outputs): a group of layers that read one input (q/k/v,
# gate/up) is one call with their outputs side by side
SHAPES = [
    ("pi05", "expert q/k/v", 50, 1024, 2048 + 2 * 256),
    ("pi05", "expert o_proj", 50, 2048, 1024),
    ("pi05", "expert gate/up", 50, 1024, 2 * 4096),
    ("pi05", "expert down", 50, 4096, 1024),
    ("pi05", "trunk q/k/v", 800, 2048, 2048 + 2 * 256),
    ("pi05", "trunk down", 800, 16384, 2048),
    ("gr00t", "DiT attn1 q/k/v", 49, 1536, 3 * 1536),
    ("gr00t", "DiT attn1 out", 49, 1536, 1536),
    ("gr00t", "DiT ff in", 49, 1536, 6144),
    ("gr00t", "DiT ff out", 49, 6144, 1536),
]


def run(rounds: int = 6, seed: int = 0, shapes: list[tuple] = SHAPES) -> dict:
    from omega_qvla_ros.quant import cpu_kernel
    from omega_qvla_ros.quant.rotation import build_input_rotation
    from omega_qvla_ros.tools.bench_stack import times_in_turns
    from omega_qvla_ros.tools.machine import describe

    if not cpu_kernel.available():
        raise RuntimeError(f"the kernel does not run here: {cpu_kernel.unavailable_reason()}")
    g = torch.Generator().manual_seed(seed)
    rows = []
    for model, layer, m, k, n in shapes:
        rot = cpu_kernel.pack_rotation(build_input_rotation(torch.randn(n, k, generator=g), "omega")
                                       .to(dtype=torch.float32))
        codes, scale = torch.randint(-8, 8, (n, k), generator=g), torch.rand(n, generator=g) + 0.5
        x = torch.randn(m, k, generator=g)
        for weights in ("int4", "int8"):
            w = cpu_kernel.pack_weights(codes, scale, nibbles=weights == "int4")
            plans = {s: cpu_kernel.Plan(w, rot, share=s) for s in cpu_kernel.SHARES}
            outs = {s: p(x, 0.3) for s, p in plans.items()}
            reps = max(3, int(2e8 / (m * k * n) * 10))  # calls per timing: a call can be tens of µs
            calls = {s: (lambda z, p=p: [p(z, 0.3) for _ in range(reps)]) for s, p in plans.items()}
            best = {s: t / reps for s, t in times_in_turns(calls, x, rounds).items()}
            rows.append({"model": model, "layer": layer, "tokens": m, "inputs": k, "outputs": n, "weights": weights,
                         **{f"{s}_ms": best[s] * 1e3 for s in plans},
                         "columns_speed_vs_rows": best["rows"] / best["columns"],
                         "auto_speed_vs_rows": best["rows"] / best["auto"],
                         "outputs_equal": all(torch.equal(outs[s], outs["rows"]) for s in outs)})
            print(f"{model} {layer} {m}x{k}->{n} {weights}: rows {best['rows'] * 1e3:.3f} ms, columns "
                  f"{best['columns'] * 1e3:.3f}, auto {best['auto'] * 1e3:.3f}", file=sys.stderr, flush=True)
    return {"benchmark": "kernel_share", "machine": describe(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "rounds": rounds, "rows": rows}


def format_markdown(r: dict) -> str:
    lines = [f"{r['machine']}, {r['threads']} threads; per call, fastest of {r['rounds']} rounds",
             "", "| model | layer | tokens × in → out | weights | by rows ms | by columns ms | auto ms | auto vs rows |"
             " bit-equal |", "|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['model']} | {x['layer']} | {x['tokens']} × {x['inputs']} → {x['outputs']} | {x['weights']} "
                     f"| {x['rows_ms']:.3f} | {x['columns_ms']:.3f} | {x['auto_ms']:.3f} | "
                     f"{x['auto_speed_vs_rows']:.2f}× | {'yes' if x['outputs_equal'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    try:
        r = run(args.rounds)
    except RuntimeError as e:
        print(f"kernel_share: {e}", file=sys.stderr)
        return 1
    text = json.dumps(r, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(format_markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
