"""Regenerate the benchmark table in README.md from bench/results/*.json.

    .venv/bin/python bench/make_table.py

The README section between the BENCH-TABLE markers is replaced; nothing else changes.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BEGIN, END = "<!-- BENCH-TABLE:BEGIN -->", "<!-- BENCH-TABLE:END -->"


def quant_section(path: Path) -> str:
    from omega_qvla_ros.tools.bench_quant import format_text

    r = json.loads(path.read_text())
    head = (f"`omega-qvla bench quant --json` → `{path.relative_to(ROOT)}` "
            f"({r['device']}, torch {r['torch']}).\n\n")
    return head + format_text(r)


def cuda_section(path: Path) -> str:
    """A lent GPU's run of bench/cuda_check.py (not re-run by `make bench`: no GPU here);
    a run of some sections only (`--tag`) shows those."""
    r = json.loads(path.read_text())
    rows = [f"### Integer path on CUDA ({r['device']}, torch {r['torch']}, CUDA {r['cuda']}"
            + (f", {path.stem.rsplit('_', 1)[1]}" if "sections" in r and "latency" not in r else "") + ")", "",
            f"`python bench/cuda_check.py{' --sections ' + ','.join(r['sections']) if 'latency' not in r else ''}` "
            f"on a lent GPU → `{path.relative_to(ROOT)}`. "
            f"`test/test_cuda.py` there: {r['pytest_test_cuda']['summary']}." if "pytest_test_cuda" in r else ""]
    agree = r.get("agreement")
    if agree:
        worst = max(a["integer_vs_reference_max_rel"] for a in agree)
        flips = sum(a["activation_codes_differing_from_cpu"] for a in agree)
        codes = sum(a["activation_codes"] for a in agree)
        rows[-1] += (f" Integer vs reference on the "
                     f"GPU, {len(agree)} shape × mode cases: max relative difference {worst:.1e}; activation codes "
                     f"differing from the CPU's: {flips} of {codes} (rounding-boundary ties; the rotation's float "
                     "rounding differs by device).")
    if r.get("latency"):
        rows[-1] += (" Per layer (median of calls each followed by a synchronize, "
                     "so launch and Python time count): \"integer\" is omega_qvla_int's per-token scales "
                     "(`torch._int_mm` between unfused ops); \"fused\" is the default recipe's one static scale on "
                     "the two fused Triton kernels (rotate+quantize, int4 GEMM autotuned, int4 words unpacked "
                     "in-kernel).")
        rows += ["", "| M, K, N | fp32 ms | fp16 ms | reference ms | integer ms | fused ms | integer vs fp16 "
                 "| fused vs fp16 | fused vs fp32 |", "|---|---|---|---|---|---|---|---|---|"]
    for x in r.get("latency") or []:
        fused = (f"{x['integer_static_ms']:.3f} | " if "integer_static_ms" in x else "| ")
        rows.append(f"| {tuple(x['shape'])} | {x['fp32_ms']:.3f} | {x['fp16_ms']:.3f} | {x['reference_ms']:.3f} | "
                    f"{x['integer_ms']:.3f} | {fused}{x['integer_speedup_vs_fp16']:.2f}× | "
                    + (f"{x['integer_static_speedup_vs_fp16']:.2f}× | {x['integer_static_speedup_vs_fp32']:.2f}× |"
                       if "integer_static_ms" in x else " | |"))
    kern = r.get("kernels") or []
    if kern:
        cols = [("fp16_ms", "fp16 cuBLAS"), ("two_kernels_fp32_ms", "two kernels, fp32 act."),
                ("two_kernels_fp16_ms", "two kernels, fp16 act."), ("gemm_only_ms", "int4 GEMM alone"),
                ("one_kernel_fp16_ms", "one kernel, fp16 act."), ("int_mm_gemm_only_ms", "`_int_mm` alone"),
                ("int_mm_rescaled_ms", "`_int_mm` + rescale")]
        # runs since the rotation moved to tensor cores ("tf32x3") also time the fp32 one ("ieee")
        both = any("one_kernel_fp16_ieee_ms" in x for x in kern)
        if both:
            cols[3:3] = [("two_kernels_fp16_ieee_ms", "two kernels, fp16 act., fp32 rotation")]
            cols[6:6] = [("one_kernel_fp16_ieee_ms", "one kernel, fp16 act., fp32 rotation")]
        int8 = any("two_kernels_int8_fp16_ms" in x for x in kern)  # the int8-copy GEMM trial (int8_gemm)
        if int8:
            cols += [("int8_gemm_only_ms", "int8-copy GEMM alone"), ("two_kernels_int8_fp16_ms",
                                                                     "two kernels on the int8 copy, fp16 act.")]
        rotation = ("the Triton kernels' rotation on tensor cores (tf32x3) unless said \"fp32 rotation\" (ieee); "
                    "codes differing = of T·K activation codes, tf32x3 vs ieee" if both
                    else "the Triton kernels' rotation in fp32 (ieee)")
        if int8:
            rotation += ("; \"int8 copy\" = `triton_kernels.int8_gemm`, the trial GEMM on the codes held one byte "
                         "each, K-major (GEMM_WEIGHTS = \"int8\")")
        rows += ["", "One W4A4 layer per kernel variant (`kernel_rows`: one static scale, omega rotation blocks, "
                 "each variant replayed from a CUDA graph of 20 calls, µs per call; the first rows are the shipped "
                 "models' layer shapes with q/k/v and gate/up stacked; \"one kernel\" = "
                 "`triton_kernels.rotate_quantize_gemm`; `_int_mm` = cuBLASLt int8 on the codes, int8 weights, "
                 f"no rotation; {rotation}):", "",
                 "| T, K, N | " + " | ".join(c[1] for c in cols) + " | best W4A4 vs fp16 |"
                 + (" int8 copy vs fp16 |" if int8 else "") + (" codes differing |" if both else ""),
                 "|---" * (len(cols) + 2 + int8 + both) + "|"]
        for x in kern:
            best = min(x[k] for k in ("two_kernels_fp16_ms", "one_kernel_fp16_ms") if k in x)
            rows.append(f"| {tuple(x['shape'])} | " + " | ".join(f"{1000 * x[k]:.1f}" if k in x else "–"
                                                               for k, _ in cols)
                        + f" | {x['fp16_ms'] / best:.2f}× |"
                        + ((f" {x['fp16_ms'] / x['two_kernels_int8_fp16_ms']:.2f}× |"
                            if "two_kernels_int8_fp16_ms" in x else " – |") if int8 else "")
                        + (f" {x.get('tf32x3_vs_ieee_codes_differing', '–')} |" if both else ""))
    chunk = r.get("chunk") or []
    if chunk:
        one = any("one_kernel_max_macs" in c or "one_kernel_max_k" in c for c in chunk)
        prec = any("rotate_precision" in c for c in chunk)
        gw = any("gemm_weights" in c for c in chunk)  # runs with the int8-copy trial name the GEMM's weights

        def one_rule(c: dict) -> str:  # run2 had T·K·N ≤ a count; later runs K ≤ a width
            if "one_kernel_max_k" in c:
                return f"K ≤ {c['one_kernel_max_k']}" if c["one_kernel_max_k"] else "off"
            return f"T·K·N ≤ 2^{c['one_kernel_max_macs'].bit_length() - 1}" if c.get("one_kernel_max_macs") else "off"
        rows += ["", "Whole model per chunk on the GPU (`device_check.chunk_times`: the model alone, observation "
                 "already on the GPU, fixed noise; 10 denoising steps), eager vs replayed from CUDA graphs "
                 "(`runtime/cuda_graphs.py`, the runtime's default on CUDA). fp16: the whole model in half "
                 "precision (W4A4: its float parts; the quantized layers read and write half activations); "
                 "autocast: fp16 autocast around the model as loaded. The GR00T W4A4 pack is "
                 "made there (synthetic calibration; only the Pi0.5 one is shipped)."
                 + (" One kernel: the layers within that rule run as `rotate_quantize_gemm` (off: always "
                    "two kernels)." if one else ""), "",
                 "| pack | precision |" + (" one kernel |" if one else "") + (" rotation |" if prec else "")
                 + (" GEMM weights |" if gw else "")
                 + " integer layers | eager ms | CUDA graph ms | graph vs eager | graph − eager max |",
                 "|---|---|" + ("---|" if one else "") + ("---|" if prec else "") + ("---|" if gw else "")
                 + "---|---|---|---|---|"]
        for c in chunk:
            lim = (f" {one_rule(c) if c.get('integer_backends') else '–'} |" if one else "")
            if prec:  # the Triton kernels' block product: tensor cores (tf32x3) or fp32 (ieee)
                lim += f" {c['rotate_precision'] if c.get('integer_backends') else '–'} |"
            if gw:
                lim += f" {c.get('gemm_weights', 'int4') if c.get('integer_backends') else '–'} |"
            if "error" in c:
                rows.append(f"| {c['pack']} | {c['dtype']} |{lim} failed: {c['error'][:80]} | | | | |")
                continue
            ways = "" if not c["graph_runs"].get("eager") else " (eager: capture failed)"
            rows.append(f"| {c['pack']} | {c['dtype']} |{lim} {sum(c['integer_backends'].values())} | "
                        f"{c['eager_ms']:.1f} | {c['graph_ms']:.2f}{ways} | {c['graph_speedup']:.1f}× | "
                        f"{c['graph_vs_eager_max_abs']:.1e} |")
    st = r.get("stack")
    if st:
        half = "w4a4_fp16_graph_ms" in st["trunk"]
        i8 = "w4a4_int8_fp16_graph_ms" in st["trunk"]  # the int8-copy GEMM trial, float parts in half
        rows += ["", "Published Pi0.5 widths on the GPU (`bench_stack.Stack`, 2 decoder layers per part, "
                 "random weights, omega_qvla on the fused kernels; a chunk = trunk + 10 × expert"
                 + ("; W4A4 fp16: its float parts in half" if half else "") + "):", "",
                 "| part | tokens | fp32 ms | fp16 ms | W4A4 ms | fp32 graph | fp16 graph | W4A4 graph "
                 + ("| W4A4 fp16 graph " if half else "") + ("| W4A4 fp16 graph, int8 copy " if i8 else "")
                 + "| W4A4 vs fp16 (graphs) |" + (" int8 copy vs fp16 (graphs) |" if i8 else ""),
                 "|---|---|---|---|---|---|---|---|" + ("---|" if half else "") + ("---|" if i8 else "") + "---|"
                 + ("---|" if i8 else "")]
        times = (["fp32_ms", "fp16_ms", "w4a4_ms", "fp32_graph_ms", "fp16_graph_ms", "w4a4_graph_ms"]
                 + ["w4a4_fp16_graph_ms"] * half + ["w4a4_int8_fp16_graph_ms"] * i8)
        for label, x in [(f"{p} ({st[p]['width']}, MLP {st[p]['mlp']}) | {st[p]['tokens']}", st[p])
                         for p in ("trunk", "expert")] + [("chunk |", st["chunk_equivalent"])]:
            best = min(x["w4a4_graph_ms"], x.get("w4a4_fp16_graph_ms", x["w4a4_graph_ms"]))
            rows.append(f"| {label} | " + "".join(f"{x[k]:.2f} | " for k in times)
                        + f"{x['fp16_graph_ms'] / best:.2f}× |"
                        + (f" {x['fp16_graph_ms'] / x['w4a4_int8_fp16_graph_ms']:.2f}× |" if i8 else ""))
    pol = r.get("policy") or []
    if pol:
        rows += ["", "The node's runtime on the GPU (`Policy.from_pack(pack, 'cuda')` + `infer()`, chunks replayed "
                 "from CUDA graphs, one random "
                 "observation, same noise as on the CPU; W4A4 is discontinuous, so a 1e-7 input difference "
                 "can flip an activation code and the flip travels on; the last column is the pack's own "
                 "W4A4-vs-FP distance on the CPU, for scale):", "",
                 "| pack | integer layers | GPU vs CPU max / mean (rad) | GPU ms | CPU ms (16 cores) "
                 "| W4A4 vs FP max / mean (rad) |", "|---|---|---|---|---|---|"]
        for p in pol:
            q = (f"{p['w4a4_vs_fp_max_rad']:.3f} / {p['w4a4_vs_fp_mean_rad']:.3f}"
                 if "w4a4_vs_fp_max_rad" in p else "")
            rows.append(f"| {p['pack']} | {p['integer_layers_on_device']} | {p['max_abs_action_diff_rad']:.1e} / "
                        f"{p['mean_abs_action_diff_rad']:.1e} | {p['infer_ms_cuda']:.0f} | {p['infer_ms_cpu']:.0f} "
                        f"| {q} |")
    return "\n".join(rows)


def calibration_draws_section(path: Path) -> str:
    """bench/calibration_draws.py: closed-loop success per calibration draw."""
    r = json.loads(path.read_text())
    rows = [f"### Closed-loop success over calibration draws (`{path.relative_to(ROOT)}`)", "",
            "The same evaluation (seeds, controller, model) with its calibration set drawn again "
            "(`omega-qvla eval --calib-seed`); every draw runs the same scenes.", "",
            "| recipe, task, calibration | per draw (calibration seeds: successes; touched/lifted/hand-over) "
            "| mean | lowest–highest |", "|---|---|---|---|"]
    for key, g in r["groups"].items():
        draws = "; ".join(f"{d['calibration_seeds'][0]}: {d['successes']} ({'/'.join(map(str, d['touched_lifted_handover']))})"
                          for d in g["draws"])
        rows.append(f"| {key} | {draws} | {g['successes_mean']:.1f}/{g['episodes_per_draw']} | "
                    f"{g['successes_min']}–{g['successes_max']} |")
    return "\n".join(rows)


def calibration_offline_error_section(path: Path) -> str:
    """bench/calibration_offline_error.py: per calibration draw, offline action error and success."""
    r = json.loads(path.read_text())
    rows = [f"### Does offline action error rank calibration draws? (`{path.relative_to(ROOT)}`)", "",
            f"Each draw of `{Path(r['draws_from']).name}` quantized again; its action error vs FP on "
            f"{r['on_policy_observations']} observations of the FP policy's own closed-loop rollouts (seeds "
            f"{r['rollout_seeds'][0]}–{r['rollout_seeds'][-1]}). Spearman ρ of that error against the draw's "
            f"closed-loop successes over {len(r['rows'])} draws: **{r['spearman_rel_mse_vs_successes']:+.2f}**.", "",
            "| calibration | seeds | successes | action rel-MSE vs FP | mean \\|Δ\\| joints |", "|---|---|---|---|---|"]
    for x in sorted(r["rows"], key=lambda x: x["rel_mse_vs_fp"]):
        rows.append(f"| {x['group'].split(', ', 2)[2]} | {x['calibration_seeds'][0]}–{x['calibration_seeds'][1]} | "
                    f"{x['successes']}/{x['episodes']} | {x['rel_mse_vs_fp']:.5f} | {x['mean_abs_joint_error']:.4f} |")
    return "\n".join(rows)


def _with_calibration(meta: dict) -> str | None:
    """The recorded command with its calibration size spelled out (runs before 2026-12-04
    left it to defaults that have changed since)."""
    cmd, cal = meta.get("command"), meta.get("calibration", {})
    if not cmd or "frames_per_episode" not in cal:
        return cmd
    for flag, key in (("--calib-episodes", "episodes_per_task"), ("--calib-frames", "frames_per_episode")):
        if flag not in cmd:
            cmd += f" {flag} {cal[key]}"
    return cmd


def _eval_cell(e: dict) -> str:
    levels = "/".join(str(sum(1 for m in e.get("max_rewards", []) if m >= k)) for k in (1, 2, 3))
    return (f"{e['successes']}/{e['episodes']} = {100 * e['success_rate']:.0f}% "
            f"[{100 * e['ci95'][0]:.0f}–{100 * e['ci95'][1]:.0f}]; ≥1/≥2/≥3: {levels}")


def eval_section(path: Path) -> str:
    """A family's closed-loop table; each sibling eval_<…>_latency*.json (the same eval
    under a simulated inference latency) adds a column per task."""
    r = json.loads(path.read_text())
    meta = r.get("_meta", {})
    recipes = [k for k in r if not k.startswith("_")]
    tasks = meta.get("tasks") or list(r[recipes[0]])
    rows = [f"### Closed-loop success ({path.stem.split('_', 1)[1]}, `{path.relative_to(ROOT)}`)", "",
            f"Command: `{_with_calibration(meta)}`; evaluation seeds {meta.get('eval_seeds')}; calibration "
            f"{meta.get('calibration', {}).get('observations')} observations "
            f"({meta.get('calibration', {}).get('episodes_per_task')} "
            f"{meta.get('calibration', {}).get('source', 'expert')} episodes per task)."
            + (f" {meta['note']}" if meta.get("note") else ""), "",
            "Cells: successes / episodes, 95% Wilson interval (%), and how many episodes reached "
            "each partial reward (gym-aloha: transfer-cube 1 touched, 2 lifted, 3 hand-over contact; "
            "insertion 1 both parts gripped, 2 both lifted, 3 peg touches socket; 4 = success).", ""]
    header = "| recipe | " + " | ".join(tasks) + " |"
    columns: list[tuple[dict, str]] = []
    lats = [(p, json.loads(p.read_text())) for p in path.parent.glob(path.stem + "_latency*.json")]
    for lat_path, lat in sorted(lats, key=lambda pl: pl[1]["_meta"]["latency_s"]):
        lm = lat["_meta"]
        ms = 1e3 * lm["latency_s"]
        for t in lm.get("tasks", []):
            if any(t in lat.get(rec, {}) for rec in recipes):
                columns.append((lat, t))
                header += f" {t} at {ms:.0f} ms, blend {lm.get('blend')} |"
        if not lm["latency_s"]:
            rows.append(f"0 ms column: `{lm.get('command')}` (`{lat_path.relative_to(ROOT)}`): the latency "
                        "column's chunk settings, synchronous (its reference).\n")
            continue
        rows.append(f"Latency column: `{lm.get('command')}` (`{lat_path.relative_to(ROOT)}`): the same "
                    f"controller and seeds, each chunk handed over {ms:.0f} ms after its observation while "
                    "the arm keeps executing ("
                    + (lm.get("note") or "about the observation → chunk latency the live node measured with the "
                       "shipped W4A4 Pi0.5 pack on this CPU, `bench/node_schedule.py`")
                    + "); share of policy ticks that starved in parentheses.\n")
    rows += [header, "|---|" + "---|" * (len(tasks) + len(columns))]
    for rec in recipes:
        cells = [_eval_cell(r[rec][t]) for t in tasks]
        for lat, t in columns:
            e = lat.get(rec, {}).get(t)
            cells.append("" if e is None else f"{_eval_cell(e)} ({100 * e.get('starved_tick_share', 0):.0f}% starved)")
        rows.append(f"| {rec} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def full_section(paths: list[Path]) -> str:
    rows = ["### Published sizes on this machine (`omega-qvla bench full`)", "",
            "Random-init weights at the published sizes (no real checkpoint is reachable here), FP16 pack "
            "written module by module, then `omega-qvla quantize` (sequential pipeline, float32 GPTQ "
            "Hessians, 2 synthetic calibration observations), then the W4A4 pack loaded as the runtime "
            "loads it and a chunk (one observation, fixed noise) timed against the FP32 model in the same "
            "run; each step in its own process (peak RSS is that process's).", "",
            "Runtime default (`kernel_weights: auto`: a big pack's integer layers keep their int4 codes, "
            "in the kernel the row's run recorded: our kernel's `int4_avx2` wherever it builds since "
            "2026-12-05, torch's CPU int4 kernel `int4_bf16` on AVX-512 VNNI CPUs before; older runs "
            "rebuilt int8 kernel weights per call) and, in brackets, every int8 kernel weight held "
            "(`kernel_weights: hold`: twice the int4 bytes; faster than `int4_bf16`, within about 5% of `int4_avx2` "
            "either way from run to run).", "",
            "| family | recipe | threads | params | quantize | quantize peak RSS | W4A4 pack | load / run peak RSS "
            "| run RSS / pack | chunk FP32 / W4A4 | speed vs FP32 | `auto` kernel | action max / mean \\|Δ\\| vs FP |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for p in paths:
        r = json.loads(p.read_text())
        hold = "chunk_s_w4a4_hold" in r
        renamed = re.search(r"renamed (\w+)", r["recipe"])
        recipe = renamed.group(1) if renamed else r["recipe"].split(" ")[0]
        if r.get("quantize_note"):
            notes.append(f"`{p.relative_to(ROOT)}` quantize time: {r['quantize_note']}.")
        run_rss = f"{r['w4a4_run_peak_rss_gib']:.2f}" + (f" [{r['w4a4_hold_run_peak_rss_gib']:.2f}]" if hold else "")
        ratio = f"{r['rss_vs_pack_bytes']:.2f}×" + (
            f" [{r['w4a4_hold_run_peak_rss_gib'] * 2**30 / r['pack_bytes']:.2f}×]" if hold else "")
        chunk = f"{r['chunk_s_fp32']:.1f} / {r['chunk_s_w4a4']:.1f}" + (f" [{r['chunk_s_w4a4_hold']:.1f}]" if hold else "")
        speed = f"{r['w4a4_speed_vs_fp32']:.2f}×" + (f" [{r['w4a4_hold_speed_vs_fp32']:.2f}×]" if hold else "")
        rows.append(f"| {r['family']} | {recipe} | {r['threads']} | {r['params'] / 1e9:.2f}B | "
                    f"{r['quantize_wall_s'] / 60:.1f} min | {r['quantize_peak_rss_gib']:.2f} GiB | "
                    f"{r['pack_bytes'] / 2**30:.2f} GiB | {r['load_peak_rss_gib']:.2f} / {run_rss} GiB | {ratio} | "
                    f"{chunk} s | {speed} | {', '.join(r.get('kernel_weights_default') or []) or '–'} | "
                    f"{r['action_max_abs_diff_vs_fp']:.3f} / {r['action_mean_abs_diff_vs_fp']:.3f} |")
    return "\n".join(rows + ([""] + notes if notes else []))


def stack_section(path: Path) -> str:
    from omega_qvla_ros.tools.bench_stack import format_text

    r = json.loads(path.read_text())
    return (f"### Decoder layer stacks at the published Pi0.5 widths (`omega-qvla bench stack`)\n\n"
            f"`{path.relative_to(ROOT)}`, torch {r['torch']}:\n\n```\n{format_text(r)}\n```"
            + (f"\n\n{r['note']}" if r.get("note") else ""))


def _bench_script(name: str):
    """bench/<name>.py as a module (bench/ is scripts, not a package on sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def kernel_share_section(path: Path) -> str:
    """bench/kernel_share.py: the CPU kernel's thread shares side by side, per layer."""
    return ("### How the CPU kernel's threads share a layer's call (`bench/kernel_share.py`)\n\n"
            f"`.venv/bin/python bench/kernel_share.py --out {path.relative_to(ROOT)}`: "
            + _bench_script("kernel_share").format_markdown(json.loads(path.read_text())))


def node_inference_section(path: Path) -> str:
    """bench/node_inference.py: the node's inference time, policy in its own process or on a node thread."""
    r = json.loads(path.read_text())
    size = "" if (r["width"], r["height"]) == (640, 480) else f" --width {r['width']} --height {r['height']}"
    return ("### The node's inference time where it runs (`bench/node_inference.py`)\n\n"
            f"`.venv/bin/python bench/node_inference.py{size} --out {path.relative_to(ROOT)}`: "
            + _bench_script("node_inference").format_markdown(r))


def activation_section(path: Path) -> str:
    """bench/activation_sensitivity.py's rows: which layers' int4 activations cost accuracy."""
    r = json.loads(path.read_text())
    src = r["model"].get("source") or r["model"].get("family")
    c = r["controller"]
    flags = (f" --replan-every {c['replan_every']} --blend {c['blend']} --blend-new-weight {c['new_weight']:g}"
             if c.get("replan_every") else "")
    lines = [f"### Which layers' int4 activations cost the `{src}` policy its accuracy",
             "", f"`.venv/bin/python bench/activation_sensitivity.py --model {src}{flags}` → "
             f"`{path.relative_to(ROOT)}`: {r['recipe']} quantized once, then one group of layers at a "
             "time with its activations in float (int4 weights kept); action error vs FP on "
             f"{r['on_policy_observations']} observations of the FP policy's own closed-loop "
             f"{r['task']} rollouts (seeds {r['rollout_seeds'][0]}–{r['rollout_seeds'][-1]}).", "",
             "| activations in float | layers | action rel-MSE vs FP | mean \\|Δ\\| joints |", "|---|---|---|---|"]
    for label, row in r["rows"].items():
        lines.append(f"| {label.removesuffix(': activations in float')} | {row['layers_in_float']} | "
                     f"{row['rel_mse_vs_fp']:.4f} | {row['mean_abs_joint_error']:.4f} |")
    return "\n".join(lines)


def profile_section(path: Path) -> str:
    """bench/profile_chunk.py: where a W4A4 chunk's time goes beside FP32, part by part."""
    r = json.loads(path.read_text())
    w, f = r["runs"]["w4a4"], r["runs"]["fp32"]
    kinds = {"quantized_linears": "linears W4A4 quantizes", "float_modules": "float modules (linears, norms, embeddings)"}
    order = ("vision", "trunk", "action_head", "other")
    timed = [(m[1], m[2], k) for k in w if (m := re.fullmatch(r"(.+)_(quantized_linears|float_modules)_s", k))]
    timed.sort(key=lambda t: (order.index(t[0]) if t[0] in order else len(order), t[2]))
    labels = [(f"{part.replace('_', ' ')}: {kinds[kind]}", k) for part, kind, k in timed] + [
        ("outside modules (attention products and softmax, activations, residuals, glue)", "outside_modules_s"),
        ("**whole chunk (hooked)**", "chunk_s")]
    d = "models" if (ROOT / "models" / w["pack"]).is_dir() else "DIR"

    def ms(x: float) -> str:
        return f"{1e3 * x:.0f}" if x >= 0.1 else f"{1e3 * x:.1f}"
    rows = [f"### Where a chunk's time goes: {w['pack']} beside {f['pack']}", "",
            f"`python bench/profile_chunk.py --w4a4 {d}/{w['pack']} --fp {d}/{f['pack']} --chunks {r.get('chunks', 1)}"
            + (f" --top {len(w['slowest_modules'])}" if "slowest_modules" in w else "") + "` "
            + ("(DIR: the published sizes' packs written by `omega-qvla bench full --work DIR`) " if d == "DIR" else "")
            + "→ "
            f"`{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}`; {r['machine']}, "
            f"{r['threads']} threads; forward hooks on every leaf "
            "module (a quantized layer counts as one) in the fastest hooked chunk, each pack in its own process "
            f"as the runtime loads it (`kernel_weights: {r['kernel_weights']}`). The float parts run the same code on both "
            "sides: their ratios away from 1× are this machine's run-to-run noise, or the W4A4 load keeping big float "
            "parts at fp16 (upcast per call); the speeds to quote are `bench full` / `bench policy`'s, without hooks.", "",
            "| part | FP32 ms | W4A4 ms | FP32 / W4A4 |", "|---|---|---|---|"]
    for label, k in labels:
        a, b = f.get(k, 0.0), w.get(k, 0.0)
        rows.append(f"| {label} | {ms(a)} | {ms(b)} | " + (f"{a / b:.2f}× |" if b > 0 and a > 0 else "– |"))
    if "slowest_modules" in w:  # --top: the W4A4 chunk's slowest leaf modules, layers pooled
        rows += ["", f"The W4A4 chunk's slowest leaf modules (`--top {len(w['slowest_modules'])}`; the layers "
                 "of a kind together; a W4A4 input group's one GEMM counts under the member called first, e.g. "
                 "`gate_proj` for gate and up, `q_proj` for q, k and v, while FP32 runs them apart), W4A4 ms (FP32 ms): "
                 + "; ".join(f"`{name}` {ms(t)} ({ms(f['slowest_modules'].get(name, 0.0))})"
                             for name, t in w["slowest_modules"].items()) + "."]
    return "\n".join(rows)


def main() -> int:
    parts = []
    q = ROOT / "bench" / "results" / "quant.json"
    if q.exists():
        parts.append("### Quantization core\n\n" + quant_section(q))
    for c in sorted((ROOT / "bench" / "results").glob("quant_cuda_*.json")):
        parts.append(cuda_section(c))
    m = ROOT / "bench" / "results" / "models_tiny.json"
    if m.exists():
        from omega_qvla_ros.tools.bench_models import format_text as models_text

        parts.append("### Whole models (random-init tiny)\n\n" + models_text(json.loads(m.read_text())))
    for f in sorted((ROOT / "bench" / "results").glob("eval_*.json")):
        if "_latency" not in f.stem:
            parts.append(eval_section(f))
    from omega_qvla_ros.tools.bench_policy import format_text as policy_text

    for pol in sorted((ROOT / "bench" / "results").glob("policy*.json")):
        r = json.loads(pol.read_text())
        family = r["model"]["family"]
        cmd = "omega-qvla bench policy --json" + ("" if pol.name == "policy.json" else f" --family {family}")
        parts.append(f"### Trained {family} model: action error and whole-inference latency\n\n"
                     f"`{cmd}` → `{pol.relative_to(ROOT)}`\n\n" + policy_text(r))
    for sens in sorted((ROOT / "bench" / "results").glob("sensitivity_*.json")):
        from omega_qvla_ros.tools.bench_sensitivity import format_text as sens_text

        r = json.loads(sens.read_text())
        src = r["model"].get("source") or r["model"].get("family")
        cmd = f"omega-qvla bench sensitivity --model {src}"
        if r["parts"]["fp16"]["closed_loop"]["episodes"] != 20:
            cmd += f" --episodes {r['parts']['fp16']['closed_loop']['episodes']}"
        if r.get("replan_every", r["execute_horizon"]) != r["execute_horizon"]:
            cmd += (f" --replan-every {r['replan_every']} --blend {r['blend']}"
                    f" --blend-new-weight {r['blend_new_weight']:g}")
        if r.get("parts_requested"):
            cmd += " --parts " + repr(",".join(r["parts_requested"]))
        parts.append(f"### Where W4A4 loses the `{src}` policy\n\n`{cmd}` → "
                     f"`{sens.relative_to(ROOT)}`, chart `{sens.with_suffix('.svg').relative_to(ROOT)}`; "
                     "action error on the FP policy's own closed-loop observations, closed loop on the "
                     "first evaluation seeds.\n\n" + sens_text(r))
    for act in sorted((ROOT / "bench" / "results").glob("activation_sensitivity_*.json")):
        parts.append(activation_section(act))
    for draws in sorted((ROOT / "bench" / "results").glob("calibration_draws_*.json")):
        parts.append(calibration_draws_section(draws))
    for off in sorted((ROOT / "bench" / "results").glob("calibration_offline_error_*.json")):
        parts.append(calibration_offline_error_section(off))
    full = sorted((ROOT / "bench" / "results").glob("full_*.json"))
    if full:
        parts.append(full_section(full))
    for prof in sorted((ROOT / "bench" / "results").glob("profile_*.json")):
        parts.append(profile_section(prof))
    for st in sorted((ROOT / "bench" / "results").glob("stack_*.json")):
        parts.append(stack_section(st))
    ks = ROOT / "bench" / "results" / "kernel_share.json"
    if ks.exists():
        parts.append(kernel_share_section(ks))
    for ni in sorted((ROOT / "bench" / "results").glob("node_inference*.json")):
        parts.append(node_inference_section(ni))
    mem = sorted((ROOT / "bench" / "results").glob("memory_*_full.json"))
    if mem:
        rows = ["### Static memory, full published sizes (`omega-qvla memory --size full`)", "",
                "| family | scope | params | FP16 | W4A4 | reduction | paper |", "|---|---|---|---|---|---|---|"]
        for f in mem:
            r = json.loads(f.read_text())
            for name, s in r["scopes"].items():
                paper = (f"{r['paper']['fp16_gib']} GiB → {r['paper']['w4a4_mib']:.0f} MiB "
                         f"({100 * r['paper']['reduction']:.1f}%)" if name == "quantized_linears" and "paper" in r else "")
                rows.append(f"| {r['family']} | {name} | {s['params'] / 1e9:.3f}B | {s['fp16_bytes'] / 2**30:.3f} GiB | "
                            f"{s['w4a4_bytes'] / 2**20:.1f} MiB | {100 * s['reduction']:.1f}% | {paper} |")
        parts.append("\n".join(rows))
    body = "\n\n".join(parts) or "_no results yet: run `make bench`_"
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md lacks the {BEGIN} … {END} markers")
    pre, rest = text.split(BEGIN, 1)
    _, post = rest.split(END, 1)
    readme.write_text(pre + BEGIN + "\n" + body + "\n" + END + post)
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
