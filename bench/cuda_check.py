"""CUDA check of the quantization core, for a machine with a GPU (none here or in CI).

1. `test/test_cuda.py` (integer path via `torch._int_mm` == reference path == exact CPU
   integer path, shapes around `_int_mm`'s rules), its pytest summary recorded;
2. the same agreement as numbers: max |integer − reference| / max |reference| per shape
   and activation mode;
3. latency of the integer path vs the reference path vs fp32 and fp16 `nn.Linear`, as
   ratios from one run (the issue's three shapes plus published widths), per-token scales
   (`torch._int_mm`) and one static scale (the fused Triton kernels when Triton is installed);
4. the node's runtime on the GPU: `Policy.from_pack(..., device)` + `infer()` for the shipped
   packs and `omega_qvla_int` packs made here (synthetic calibration), the same observation
   and noise on CPU and GPU: action difference (rad) and inference time;
5. one W4A4 layer per kernel variant at the shipped and the published shapes, replayed
   from CUDA graphs (`kernel_rows`): fp16 cuBLAS, the two Triton kernels, the one-kernel
   layer, cuBLASLt int8 (`torch._int_mm`), the trial GEMM on an int8 copy of the codes
   (`triton_kernels.int8_gemm`);
6. whole model per chunk (`device_check.chunk_times`): FP in fp32, fp16 and fp16 autocast,
   W4A4 (the shipped Pi0.5 pack, a GR00T omega_qvla pack made here) in float32 and with
   its float parts in fp16, one-kernel layers on and off, the GEMM on the int4 words and
   on the int8 copy, each eager and replayed from CUDA graphs;
7. a stack of decoder layers at the published Pi0.5 widths (bench_stack.Stack: trunk 2048
   over 816 tokens, expert 1024 over 50 tokens, a chunk = trunk + 10 × expert): fp32, fp16
   and W4A4 on the fused kernels (float parts in float32, and in fp16; in fp16 on the int8
   copy too), eager and graphed.

Each section that fails records its error and the next one runs; the JSON is rewritten
after every section (a run cut short keeps what it measured).

    python bench/cuda_check.py --out bench/results     # writes quant_cuda_<gpu>.json
    python bench/cuda_check.py --sections tests,kernels,stack --tag run3   # est. ~5 min
    python bench/cuda_check.py --sections chunk --tag run3b                # est. ~4 min

(run 2's four sections took 481 s in one call; since then the kernels, chunk and stack
sections time the int8-copy trial too: two calls stay under a lent machine's 10 minutes
per command.)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from omega_qvla_ros.quant import int_gemm, triton_kernels  # noqa: E402
from omega_qvla_ros.tools.bench_quant import LATENCY_SHAPES, latency, median_ms  # noqa: E402
from omega_qvla_ros.tools.device_check import (LAYER_SHAPES, chunk_times, compare_layer,  # noqa: E402
                                               compare_policy)

# published widths: Pi0.5 trunk MLP over an ~800-token prefix, its action expert, GR00T's
# DiT feed-forward over 49 tokens, GR00T's Qwen3 trunk MLP
PUBLISHED_SHAPES = [(816, 2048, 16384), (50, 1024, 4096), (49, 1536, 6144), (300, 2048, 6144)]


def policy_rows(device: str, repeats: int, workdir: Path) -> list[dict]:
    """compare_policy for the shipped packs and an omega_qvla_int pack per family made here."""
    from omega_qvla_ros.tools.cli import main as cli

    fp = {"pi05": REPO / "models" / "pi05_small_aloha", "gr00t": REPO / "models" / "gr00t_small_aloha"}
    packs = {"pi05 fp16": (fp["pi05"], None),
             "pi05 omega_qvla (shipped)": (REPO / "models" / "pi05_small_aloha_w4a4", fp["pi05"]),
             "gr00t fp16": (fp["gr00t"], None)}
    for fam in ("pi05", "gr00t"):
        out = workdir / f"{fam}_int"
        assert cli(["quantize", "--family", fam, "--recipe", "omega_qvla_int", "--calib", "synthetic",
                    "--out", str(out), "--json"]) == 0
        packs[f"{fam} omega_qvla_int"] = (out, fp[fam])
    rows = []
    for label, (path, fp_path) in packs.items():
        rows.append({"pack": label, **compare_policy(path, device, fp_path, repeats)})
        print(rows[-1], flush=True)
    return rows


@contextlib.contextmanager
def kernel_settings(**values):
    """triton_kernels' module settings (FUSE_MAX_K, ROTATE_PRECISION, GEMM_WEIGHTS) set to
    `values` for one timed variant, and restored after it however it ends."""
    before = {k: getattr(triton_kernels, k) for k in values}
    for k, v in values.items():
        setattr(triton_kernels, k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            setattr(triton_kernels, k, v)


def chunk_rows(device: str, repeats: int, workdir: Path) -> list[dict]:
    """Whole model per chunk, FP vs W4A4, eager vs CUDA graphs (device_check.chunk_times)."""
    from omega_qvla_ros.tools.cli import main as cli

    models = REPO / "models"
    gr00t_q = workdir / "gr00t_w4a4"
    assert cli(["quantize", "--family", "gr00t", "--recipe", "omega_qvla", "--calib", "synthetic",
                "--out", str(gr00t_q), "--json"]) == 0
    one_kernel, prec, gw = triton_kernels.FUSE_MAX_K, triton_kernels.ROTATE_PRECISION, triton_kernels.GEMM_WEIGHTS
    # (pack, dtype, one-kernel layers up to this contraction width: 0 = always two kernels,
    # the rotation's precision: the default and, in fp16, the fp32 "ieee" baseline, the
    # two-kernel GEMM's weights: the default and, in fp16, the int8 copy)
    w4a4 = [("float32", 0, prec, gw), ("float32", one_kernel, prec, gw), ("fp16", 0, prec, gw),
            ("fp16", one_kernel, prec, gw), ("fp16", one_kernel, "ieee", gw), ("fp16", one_kernel, prec, "int8")]
    cases = [(models / "pi05_small_aloha", d, one_kernel, prec, gw) for d in ("float32", "fp16", "autocast_fp16")] + [
        (models / "pi05_small_aloha_w4a4", *c) for c in w4a4] + [
        (models / "gr00t_small_aloha", d, one_kernel, prec, gw) for d in ("float32", "fp16", "autocast_fp16")] + [
        (gr00t_q, *c) for c in w4a4]
    rows = []
    for path, dtype, fuse, precision, weights in cases:
        case = {"one_kernel_max_k": fuse, "rotate_precision": precision, "gemm_weights": weights}
        try:
            with kernel_settings(FUSE_MAX_K=fuse, ROTATE_PRECISION=precision, GEMM_WEIGHTS=weights):
                rows.append({**chunk_times(path, device, repeats, dtype), **case})
        except Exception as e:  # one variant failing must not cost the others
            rows.append({"pack": path.name, "dtype": dtype, **case, "error": f"{type(e).__name__}: {e}"[:500]})
        print("chunk", rows[-1], flush=True)
    return rows


# the shipped small models' layers (Pi0.5: expert over 50 action tokens, trunk over a
# 144-token prefix; q/k/v and gate/up run stacked) and the published widths
KERNEL_SHAPES = [(50, 128, 256), (50, 128, 1024), (50, 512, 128), (50, 128, 128), (144, 192, 384),
                 (144, 192, 1536), (144, 768, 192)] + PUBLISHED_SHAPES + [(816, 16384, 2048), (50, 4096, 1024)]


def _per_call_ms(fn, calls: int = 20, repeats: int = 20) -> float:
    """Device time per call of fn() as replayed from one CUDA graph of `calls` calls (the
    way a graphed chunk runs its layers: no Python, no launch gaps), median ms."""
    from omega_qvla_ros.runtime.cuda_graphs import capture

    g = capture(lambda t: [fn() for _ in range(calls)][-1], [], warmup=2)
    return median_ms(lambda: (g.run([]), torch.cuda.synchronize()), repeats) / calls


def kernel_rows(device: str, repeats: int) -> list[dict]:
    """One W4A4 layer (one static scale, omega rotation blocks) per shape, each variant
    replayed from a CUDA graph: fp16 cuBLAS, the two Triton kernels (fp32 and fp16
    activations), the one-kernel layer (fp16), each with the rotation on tensor cores (the
    default "tf32x3") and in fp32 ("ieee", suffix _ieee), and cuBLASLt's int8 GEMM
    (`torch._int_mm` on the codes, int8 weights one byte each) with its rescale as a second
    op; the int4 GEMM's trial on an int8 copy of the codes (`int8_gemm`, K-major), alone and
    after rotate_quantize; and how many codes the two rotation precisions give differently."""
    from omega_qvla_ros.quant.packing import pack_int4
    from omega_qvla_ros.quant.rotation import build_input_rotation

    rows = []
    for T, K, N in KERNEL_SHAPES:
        g = torch.Generator().manual_seed(T + K + N)
        x32 = (torch.randn(T, K, generator=g)).to(device)
        x16 = x32.half()
        rot = build_input_rotation(torch.randn(64, K, generator=g), "omega")
        perm, blocks = rot.perm.to(torch.int32).to(device), rot.blocks.float().contiguous().to(device)
        w = torch.randint(-8, 8, (N, K), generator=g, dtype=torch.int8)
        packed, w8 = pack_int4(w).to(device), w.to(device)
        w8t = w8.t()
        ws, bias = (torch.rand(N, generator=g) * 0.01).to(device), torch.randn(N, generator=g).to(device)
        w16 = (w.float() * 0.01).half().to(device)
        codes = triton_kernels.rotate_quantize(x32, perm, blocks, 0.5)
        row = {"shape": [T, K, N]}
        variants = {
            "fp16_ms": lambda: torch.nn.functional.linear(x16, w16),
            "gemm_only_ms": lambda: triton_kernels.int4_gemm(codes, packed, ws, 0.5, bias, out_dtype=torch.float16),
            "int_mm_gemm_only_ms": lambda: int_gemm.gemm_int_mm(codes, w8t),
            "int_mm_rescaled_ms": lambda: torch._int_mm(codes, w8t).mul(ws).half(),
            "int8_gemm_only_ms": lambda: triton_kernels.int8_gemm(codes, w8, ws, 0.5, bias, out_dtype=torch.float16),
            "two_kernels_int8_fp16_ms": lambda: triton_kernels.int8_gemm(
                triton_kernels.rotate_quantize(x16, perm, blocks, 0.5), w8, ws, 0.5, bias, out_dtype=torch.float16),
        }
        for p, sfx in (("tf32x3", ""), ("ieee", "_ieee")):
            variants.update({
                f"rotate_quantize_only{sfx}_ms": lambda p=p: triton_kernels.rotate_quantize(x16, perm, blocks, 0.5, p),
                f"two_kernels_fp32{sfx}_ms": lambda p=p: triton_kernels.int4_gemm(
                    triton_kernels.rotate_quantize(x32, perm, blocks, 0.5, p), packed, ws, 0.5, bias),
                f"two_kernels_fp16{sfx}_ms": lambda p=p: triton_kernels.int4_gemm(
                    triton_kernels.rotate_quantize(x16, perm, blocks, 0.5, p), packed, ws, 0.5, bias,
                    out_dtype=torch.float16),
                f"one_kernel_fp16{sfx}_ms": lambda p=p: triton_kernels.rotate_quantize_gemm(
                    x16, perm, blocks, 0.5, packed, ws, 0.5, bias, out_dtype=torch.float16, precision=p)})
        for name, fn in variants.items():
            try:
                row[name] = _per_call_ms(fn, repeats=repeats)
            except Exception as e:
                row[name.replace("_ms", "_error")] = f"{type(e).__name__}: {e}"[:300]
        one = triton_kernels.rotate_quantize_gemm(x16, perm, blocks, 0.5, packed, ws, 0.5, bias, out_dtype=torch.float16)
        two = triton_kernels.int4_gemm(triton_kernels.rotate_quantize(x16, perm, blocks, 0.5), packed, ws, 0.5, bias,
                                       out_dtype=torch.float16)
        row["one_vs_two_kernels_max_abs"] = float((one.float() - two.float()).abs().max())
        int8 = triton_kernels.int8_gemm(triton_kernels.rotate_quantize(x16, perm, blocks, 0.5), w8, ws, 0.5, bias,
                                        out_dtype=torch.float16)
        row["int8_vs_int4_gemm_max_abs"] = float((int8.float() - two.float()).abs().max())
        ieee = triton_kernels.rotate_quantize(x32, perm, blocks, 0.5, "ieee")
        row["tf32x3_vs_ieee_codes_differing"] = int((codes != ieee).sum())
        for k in list(row):
            if k.endswith("_ms") and k != "fp16_ms" and "fp16_ms" in row:
                row[k.replace("_ms", "_speed_vs_fp16")] = row["fp16_ms"] / row[k]
        rows.append(row)
        print("kernels", row, flush=True)
    return rows


def _graphed_ms(model, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(eager ms, CUDA-graph replay ms) of model(x)."""
    from omega_qvla_ros.runtime.cuda_graphs import capture

    sync = torch.cuda.synchronize
    eager = median_ms(lambda: (model(x), sync()), repeats)
    g = capture(lambda t: model(t[0]), [x], warmup=2)
    return eager, median_ms(lambda: (g.run([x]), sync()), repeats)


STACK_PARTS = (("trunk", 2048, 16384, 816, "backbone"), ("expert", 1024, 4096, 50, "action_head"))


def stack_rows(device: str, repeats: int, steps: int = 10, shapes=STACK_PARTS) -> dict:
    """Published Pi0.5 widths (bench_stack.Stack, 2 layers per part): fp32, fp16, W4A4 (and
    W4A4 with its float parts in fp16, on the int4 words and on the int8 trial's copy)."""
    import copy

    from omega_qvla_ros.quant.qlinear import QuantLinear
    from omega_qvla_ros.quant.quantize import quantize
    from omega_qvla_ros.quant.recipes import get_recipe
    from omega_qvla_ros.runtime.precision import half_float_parts
    from omega_qvla_ros.tools.bench_stack import LINEARS, Stack

    parts = {}
    for part, width, mlp, tokens, side in shapes:
        torch.manual_seed(0)
        fp = Stack(width, mlp, 2).eval().to(device)
        g = torch.Generator(device=device).manual_seed(1)
        cal = [torch.randn(1, tokens, width, generator=g, device=device) for _ in range(2)]
        x = torch.randn(1, tokens, width, generator=g, device=device)
        q = quantize(copy.deepcopy(fp), get_recipe("omega_qvla").with_scopes(**{side: [LINEARS]}), cal)
        backends = sorted({m._backend(x.device) for m in q.modules() if isinstance(m, QuantLinear)})
        fp16 = copy.deepcopy(fp).half()
        q16 = half_float_parts(copy.deepcopy(q))  # the float parts in half, as Policy(precision="fp16")
        row = {"width": width, "mlp": mlp, "tokens": tokens, "w4a4_backends": backends}
        with torch.inference_mode():
            y, y_fp = q(x), fp(x)
            row["w4a4_output_rel_mse"] = float(((y - y_fp) ** 2).mean() / (y_fp ** 2).mean())
            row["w4a4_fp16_output_rel_mse"] = float(((q16(x.half()).float() - y_fp) ** 2).mean() / (y_fp ** 2).mean())
            gw = triton_kernels.GEMM_WEIGHTS  # the two-kernel GEMM's weights (int8: the trial)
            for name, m, xin, weights in (("fp32", fp, x, gw), ("fp16", fp16, x.half(), gw), ("w4a4", q, x, gw),
                                          ("w4a4_fp16", q16, x.half(), gw), ("w4a4_int8_fp16", q16, x.half(), "int8")):
                try:
                    with kernel_settings(GEMM_WEIGHTS=weights):
                        row[f"{name}_ms"], row[f"{name}_graph_ms"] = _graphed_ms(m, xin, repeats)
                except Exception as e:
                    row[f"{name}_error"] = f"{type(e).__name__}: {e}"[:500]
        parts[part] = row
        print("stack", part, row, flush=True)
    chunk = {}
    for name in ("fp32", "fp16", "w4a4", "w4a4_fp16", "w4a4_int8_fp16"):
        for mode in ("ms", "graph_ms"):
            k = f"{name}_{mode}"
            if all(k in parts[p] for p in parts):
                chunk[k] = parts["trunk"][k] + steps * parts["expert"][k]
    for mode in ("ms", "graph_ms"):
        for base in ("fp16", "fp32"):
            for q in ("w4a4", "w4a4_fp16", "w4a4_int8_fp16"):
                if f"{q}_{mode}" in chunk and f"{base}_{mode}" in chunk:
                    chunk[f"{q}_speed_vs_{base}{'_graphs' if mode == 'graph_ms' else ''}"] = (
                        chunk[f"{base}_{mode}"] / chunk[f"{q}_{mode}"])
    return {**parts, "steps": steps, "chunk_equivalent": chunk}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--policy-repeats", type=int, default=10)
    ap.add_argument("--sections", default="tests,latency,agreement,policy,kernels,chunk,stack",
                    help="comma-separated: which sections to run")
    ap.add_argument("--tag", default="", help="a suffix of the JSON's name (a run of some sections only)")
    args = ap.parse_args()
    t0 = time.time()
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.machine()
    wanted = set(args.sections.split(","))
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(REPO / "test" / "test_cuda.py")], cwd=REPO,
                           capture_output=True, text=True) if "tests" in wanted else None
    if tests is not None:
        summary = (tests.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(tests.stdout[-3000:], tests.stderr[-2000:], flush=True)
    tag = f"_{args.tag}" if args.tag else ""
    out = Path(args.out) / f"quant_cuda_{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_').lower()}{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "quant_cuda", "device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
              "sections": sorted(wanted)}
    if tests is not None:
        result["pytest_test_cuda"] = {"returncode": tests.returncode, "summary": summary}

    def section(key: str, make) -> None:
        if key not in wanted:
            return
        try:
            result[key] = make()
        except Exception as e:  # recorded; the other sections still run
            result[f"{key}_error"] = f"{type(e).__name__}: {e}"[:1000]
            print(key, "failed:", result[f"{key}_error"], flush=True)
        result["seconds"] = time.time() - t0
        out.write_text(json.dumps(result, indent=2) + "\n")

    section("latency", lambda: latency(LATENCY_SHAPES + PUBLISHED_SHAPES, repeats=args.repeats,
                                       device=args.device, fp16=True))
    section("agreement", lambda: [compare_layer(s, m, args.device) for s in LAYER_SHAPES
                                  for m in ("dynamic", "per_step_factorized")])
    section("kernels", lambda: kernel_rows(args.device, args.repeats))
    with tempfile.TemporaryDirectory() as tmp:
        section("policy", lambda: policy_rows(args.device, args.policy_repeats, Path(tmp)))
        section("chunk", lambda: chunk_rows(args.device, args.policy_repeats * 2, Path(tmp)))
    section("stack", lambda: stack_rows(args.device, args.repeats))
    lat = result.get("latency", [])
    print(json.dumps({k: v for k, v in result.items() if k not in ("latency", "agreement", "policy", "chunk")},
                     indent=1))
    for r in lat:
        print(r["shape"], f"fp32 {r['fp32_ms']:.3f} fp16 {r['fp16_ms']:.3f} ref {r['reference_ms']:.3f} "
              f"int {r['integer_ms']:.3f} ms; int vs fp32 {r['integer_speedup_vs_fp32']:.2f}x, "
              f"vs fp16 {r['integer_speedup_vs_fp16']:.2f}x, vs ref {r['integer_speedup_vs_reference']:.2f}x; "
              f"static scale ({r['static_backend']}) {r['integer_static_ms']:.3f} ms, "
              f"vs fp16 {r['integer_static_speedup_vs_fp16']:.2f}x")
    print("wrote", out)
    return 0 if tests is None or tests.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
