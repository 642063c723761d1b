"""`omega-qvla bench full`: a family at its published size on this machine.

Each step runs in its own process, so its peak RSS is its own:
1. the FP pack: a real checkpoint imported (`--checkpoint`) or random weights written
   module by module (fp16);
2. `omega-qvla quantize` (sequential pipeline, float32 GPTQ Hessians): wall time, peak RSS;
3. the W4A4 pack: bytes on disk; loading it (peak RSS after load) and running chunks;
4. the FP model (float32) running the same chunk: same observation, same noise.
Results: bench/results/full_<family>.json (fields listed in RESULT_FIELDS).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULT_FIELDS = ("params", "quantize_wall_s", "quantize_peak_rss_gib", "pack_bytes", "load_peak_rss_gib",
                 "chunk_s_fp32", "chunk_s_w4a4", "action_max_abs_diff_vs_fp", "recipe", "threads")

# a child process: load a pack, time chunks on one synthetic observation, save the actions
_RUN = r"""
import json, resource, sys, time, torch
from omega_qvla_ros.tools.bench_full import chunk_inputs, load_as_runtime
from safetensors.torch import save_file
pack, out, chunks, path, kernel_weights = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
t0 = time.time()
model, manifest = load_as_runtime(pack, kernel_weights, path)
load_s, load_rss = time.time() - t0, rss()
obs, noise = chunk_inputs(model, manifest, pack)
times = []
with torch.inference_mode():
    for _ in range(chunks):
        t = time.time()
        a = model.sample_actions(obs, noise=noise)
        times.append(time.time() - t)
save_file({"actions": a.contiguous()}, out)
from collections import Counter
from omega_qvla_ros.quant.qlinear import QuantLinear
kinds = Counter(m.kernel_weights for m in model.modules() if isinstance(m, QuantLinear))
print(json.dumps({"load_s": load_s, "load_peak_rss_gib": load_rss, "chunk_s": times, "run_peak_rss_gib": rss(),
                  "threads": torch.get_num_threads(), "kernel_weights": dict(kinds)}))
"""


def load_as_runtime(pack: str, kernel_weights: str = "auto", path: str = "auto"):
    """(model, manifest) of `pack` as the runtime loads it (runtime/policy.py, lean): a W4A4
    pack keeps its big float parts at their stored precision and gives back the int4 codes an
    integer kernel holds; an FP pack runs in float32."""
    from omega_qvla_ros.quant.pack import load_pack, read_manifest

    quantized = bool(read_manifest(pack)["layers"])
    return load_pack(pack, path=path, float_storage="auto" if quantized else "float32",
                     integer_codes="drop", kernel_weights=kernel_weights)


def chunk_inputs(model, manifest: dict, pack: str):
    """The one synthetic observation and the fixed noise every timed chunk runs on."""
    import torch

    from omega_qvla_ros.models.calibrate import synthetic_batches
    from omega_qvla_ros.models.processor import processor_from_manifest
    from omega_qvla_ros.runtime.robot import RobotSpec

    proc = processor_from_manifest(manifest, pack, RobotSpec().to_dict(), model.config)
    obs = synthetic_batches(proc, 1, batch=1, seed=12345)[0]
    c = model.config
    return obs, torch.randn(1, c.action_horizon, c.action_dim, generator=torch.Generator().manual_seed(7))


def _run_child(cmd: list[str], log=None) -> tuple[str, float, float]:
    """Like subprocess.run, with this child's own peak RSS (os.wait4's rusage)."""
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_chunks, err_lines = [], []
    import threading

    def pump(stream, sink, echo):
        for line in stream:
            sink.append(line)
            if echo and log:
                log(line.rstrip())
    th = [threading.Thread(target=pump, args=(p.stdout, out_chunks, False)),
          threading.Thread(target=pump, args=(p.stderr, err_lines, True))]
    for t in th:
        t.start()
    _pid, status, usage = os.wait4(p.pid, 0)
    for t in th:
        t.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}… failed ({p.returncode}):\n{''.join(err_lines)[-3000:]}")
    return "".join(out_chunks), wall, usage.ru_maxrss / 2**20


def run(family: str, work: str | Path, recipe: str = "omega_qvla", checkpoint: str | None = None,
        calib_batches: int = 2, chunks: int = 2, seed: int = 0, log=None, size: str = "full") -> dict:
    import torch
    from safetensors.torch import load_file

    from omega_qvla_ros.models import build_model, get_config
    from omega_qvla_ros.quant.pack import read_manifest
    from omega_qvla_ros.tools.machine import describe

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    fp, q = work / f"{family}_{size}_fp", work / f"{family}_{size}_{recipe}"
    res: dict = {"benchmark": "full", "family": family, "recipe": recipe, "threads": torch.get_num_threads(),
                 "torch": torch.__version__, "machine": describe(),
                 "weights": checkpoint or f"random init (seed {seed})"}
    res["size"] = size
    res["params"] = sum(p.numel() for p in build_model(family, size, device="meta").parameters())
    if not (fp / "manifest.json").exists():
        if checkpoint:
            cmd = [py, "-m", "omega_qvla_ros.tools.cli", "import-checkpoint", checkpoint, "--out", str(fp),
                   "--float-dtype", "float16", "--json"]
        else:
            code = ("import sys; from omega_qvla_ros.models.random_pack import write_random_pack; "
                    "from omega_qvla_ros.runtime.robot import RobotSpec; "
                    f"write_random_pack({family!r}, {size!r}, sys.argv[1], seed={seed}, "
                    "default_robot=RobotSpec().to_dict())")
            cmd = [py, "-c", code, str(fp)]
        _, wall, rss = _run_child(cmd, log)
        res["fp_pack"] = {"seconds": wall, "peak_rss_gib": rss}
    res["fp_pack_bytes"] = sum(f.stat().st_size for f in fp.iterdir())
    if not (q / "manifest.json").exists():
        cmd = [py, "-m", "omega_qvla_ros.tools.cli", "quantize", "--model", str(fp), "--recipe", recipe,
               "--calib", "synthetic", "--calib-batches", str(calib_batches), "--calib-batch", "1",
               "--hessian-dtype", "float32", "--out", str(q), "--seed", str(seed)]
        _, wall, rss = _run_child(cmd, log)
        res["quantize_wall_s"], res["quantize_peak_rss_gib"] = wall, rss
    else:
        cal = read_manifest(q)["calibration"]
        res["quantize_wall_s"], res["quantize_peak_rss_gib"] = cal.get("seconds"), cal.get("peak_rss_gib")
        res["quantize_note"] = "from the pack's manifest (the quantization ran in an earlier invocation)"
    cal = read_manifest(q)["calibration"]
    res["quantize_stages"] = [{k: s[k] for k in ("stage", "seconds", "quantized", "peak_rss_gib")}
                              for s in cal.get("stages", [])]
    res["calibration"] = {"batches": calib_batches, "observations_per_batch": 1, "source": "synthetic"}
    res["pack_bytes"] = sum(f.stat().st_size for f in q.iterdir())
    runs = {}
    # the runtime's default (lean, kernel_weights "auto"), every int8 kernel weight held
    # ("hold": twice the int4 bytes), and the FP32 reference
    for name, pack, kw in (("w4a4", q, "auto"), ("w4a4_hold", q, "hold"), ("fp32", fp, "hold")):
        out, wall, rss = _run_child([py, "-c", _RUN, str(pack), str(work / f"actions_{name}.safetensors"),
                                     str(chunks), "auto", kw], log)
        r = json.loads(out.strip().splitlines()[-1])
        r["process_peak_rss_gib"] = rss
        runs[name] = r
    res["runs"] = runs
    res["load_peak_rss_gib"] = runs["w4a4"]["load_peak_rss_gib"]
    res["w4a4_run_peak_rss_gib"] = runs["w4a4"]["run_peak_rss_gib"]
    res["fp32_run_peak_rss_gib"] = runs["fp32"]["run_peak_rss_gib"]
    res["chunk_s_w4a4"] = min(runs["w4a4"]["chunk_s"])
    res["chunk_s_fp32"] = min(runs["fp32"]["chunk_s"])
    res["w4a4_speed_vs_fp32"] = res["chunk_s_fp32"] / res["chunk_s_w4a4"]
    res["w4a4_hold_run_peak_rss_gib"] = runs["w4a4_hold"]["run_peak_rss_gib"]
    res["chunk_s_w4a4_hold"] = min(runs["w4a4_hold"]["chunk_s"])
    res["w4a4_hold_speed_vs_fp32"] = res["chunk_s_fp32"] / res["chunk_s_w4a4_hold"]
    h = load_file(str(work / "actions_w4a4_hold.safetensors"))["actions"]
    a = load_file(str(work / "actions_w4a4.safetensors"))["actions"]
    b = load_file(str(work / "actions_fp32.safetensors"))["actions"]
    # "auto" may run the backbone on the int4_bf16 kernel (bf16-rounded outputs): not bit-equal to hold
    res["hold_equals_default"] = bool(torch.equal(h, a))
    res["hold_vs_default_max_abs_diff"] = float((h - a).abs().max())
    res["kernel_weights_default"] = runs["w4a4"].get("kernel_weights")
    res["action_max_abs_diff_vs_fp"] = float((a - b).abs().max())
    res["action_mean_abs_diff_vs_fp"] = float((a - b).abs().mean())
    res["hold_action_max_abs_diff_vs_fp"] = float((h - b).abs().max())
    res["hold_action_mean_abs_diff_vs_fp"] = float((h - b).abs().mean())
    res["action_fp_abs_mean"] = float(b.abs().mean())
    res["rss_vs_pack_bytes"] = res["w4a4_run_peak_rss_gib"] * 2**30 / res["pack_bytes"]
    cfg = get_config(family, size)
    res["config"] = {"horizon": cfg.action_horizon, "steps": cfg.num_steps, "cameras": cfg.cameras,
                     "max_tokens": cfg.max_tokens}
    return res


def format_text(r: dict) -> str:
    return "\n".join([
        f"{r['family']} {r['size']} ({r['params'] / 1e9:.2f}B parameters, {r['weights']}), recipe {r['recipe']}, "
        f"{r['threads']} threads",
        f"quantize: {r['quantize_wall_s'] / 60:.1f} min, peak RSS {r['quantize_peak_rss_gib']:.2f} GiB",
        f"W4A4 pack {r['pack_bytes'] / 2**30:.2f} GiB (FP16 pack {r['fp_pack_bytes'] / 2**30:.2f} GiB); load peak "
        f"{r['load_peak_rss_gib']:.2f} GiB, running {r['w4a4_run_peak_rss_gib']:.2f} GiB "
        f"({r['rss_vs_pack_bytes']:.2f}× the pack)",
        f"chunk: W4A4 {r['chunk_s_w4a4']:.1f} s vs FP32 {r['chunk_s_fp32']:.1f} s "
        f"({r['w4a4_speed_vs_fp32']:.2f}×); action max |Δ| vs FP {r['action_max_abs_diff_vs_fp']:.3f} "
        f"(mean {r['action_mean_abs_diff_vs_fp']:.3f}, FP mean |a| {r['action_fp_abs_mean']:.3f})"]
        + ([f"kernel weights held (kernel_weights=hold): chunk {r['chunk_s_w4a4_hold']:.1f} s "
            f"({r['w4a4_hold_speed_vs_fp32']:.2f}×), running {r['w4a4_hold_run_peak_rss_gib']:.2f} GiB; "
            f"actions max |Δ| vs default {r.get('hold_vs_default_max_abs_diff', 0.0):.2e}"
            f"{' (identical)' if r.get('hold_equals_default') else ''}"]
           if "chunk_s_w4a4_hold" in r else []))
