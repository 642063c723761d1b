"""One line saying which CPU a benchmark ran on: speed ratios depend on it (fbgemm uses
VNNI where present; torch's int4 kernel is fast only with AVX-512), and the machines
sessions are lent differ (AVX2-only, or AVX-512 with VNNI and bf16)."""
from __future__ import annotations

import os
import re


def describe() -> str:
    import torch

    from omega_qvla_ros.quant.int_gemm import cpu_flags

    model, flags = "unknown CPU", cpu_flags()
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", open("/proc/cpuinfo").read(), re.M)
        model = m.group(1).strip() if m else model
    except OSError:
        pass
    has = [n for n, k in (("VNNI", "avx512_vnni"), ("AVX-VNNI", "avx_vnni"), ("AVX512-BF16", "avx512_bf16"))
           if k in flags]
    return (f"{model}, {os.cpu_count()} CPUs, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
            + (f" ({', '.join(has)})" if has else " (no VNNI, no bf16)"))
