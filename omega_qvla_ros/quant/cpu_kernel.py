"""W4A4 linear on x86 CPUs with AVX2 and no VNNI: a small C kernel (csrc/w4a4_avx2.c),
built on first use with the system C compiler and called through ctypes.

Why a kernel of our own: on these CPUs nothing installed multiplies int4 codes faster
than float32 at the shapes a VLA runs on a robot (tens to hundreds of tokens). Measured
here (2 threads, 50 tokens × 128 → 128): float32 18 µs, fbgemm's int8 linear 36 µs
(it runs on one thread and its int8 products need int32 accumulation),
`torch._int_mm` (oneDNN) 326 µs; torchao's CPU int8 × int4 kernels need AVX-512, VNNI,
AMX or ARM and are not in its x86 wheel. int4 × int4 codes allow what int8 cannot:
`vpmaddubsw` pair sums (≤ 240 with unsigned activation codes 0..15) add up in int16
for 128 pairs without saturating, so one multiply-add and one add do 32
multiply-accumulates. The kernel also quantizes the activations (round half to even,
as torch.round) and rescales its output in the same call: one call per layer.

The library is built once per source version into a per-user cache
(`$OMEGA_QVLA_KERNEL_CACHE`, else `~/.cache/omega_qvla_ros`), with OpenMP from the
libgomp torch already loaded (torch.set_num_threads applies to it). Where the CPU has no
AVX2, no C compiler is found, or the build fails, `available()` is False (the reason in
`unavailable_reason()`) and layers use fbgemm.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "w4a4_avx2.c"
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=c11")
BLOCK_COLS = 16  # output columns per packed weight block (csrc: NB)
_reason: list[str] = []


def _cache_dir() -> Path:
    root = os.environ.get("OMEGA_QVLA_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "omega_qvla_ros"


def _cpu_ok() -> str | None:
    from .int_gemm import cpu_flags
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({platform.machine()})"
    if not {"avx2", "fma"} <= cpu_flags():
        return "the CPU has no AVX2/FMA"
    return None


def _build() -> Path:
    """The compiled library for this source and these flags (built when missing)."""
    src = SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join(FLAGS).encode()).hexdigest()[:16]
    out = _cache_dir() / f"w4a4_avx2_{key}.so"
    if out.exists():
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # built aside, renamed in: atomic
        part = Path(tmp) / out.name
        run = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(part)], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{cc} failed: {run.stderr.strip()[-400:]}")
        os.replace(part, out)
    return out


@functools.lru_cache(maxsize=None)
def _lib() -> ctypes.CDLL | None:
    why = _cpu_ok()
    if why is None:
        try:
            lib = ctypes.CDLL(str(_build()))
            P, I = ctypes.c_void_p, ctypes.c_int64
            lib.w4a4_linear.restype = None
            lib.w4a4_linear.argtypes = [P, I, I, P, P, I, P, P, P, I, P, P, ctypes.c_float, P, P,
                                        ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_void_p)]
            return lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            why = f"the AVX2 kernel did not build or load: {e}"
            # said once: the integer layers then run on fbgemm, correct but about 2x slower
            warnings.warn(f"{why}; integer layers use fbgemm (set CC or OMEGA_QVLA_KERNEL_CACHE)",
                          RuntimeWarning, stacklevel=2)
    _reason.append(why)
    return None


def available() -> bool:
    """Whether the AVX2 kernel runs here (built and loaded on the first ask)."""
    return _lib() is not None


def unavailable_reason() -> str | None:
    return None if available() else _reason[-1]


@dataclass
class PackedWeights:
    """int4 weight codes in the kernel's layout ([n/16][k/2][16][2] bytes, zero padded),
    8 × their row sums (what the activation codes' unsigned offset adds to each output)
    and per-row float scales."""

    packed: torch.Tensor  # int8
    offset: torch.Tensor  # int32 [n]
    scale: torch.Tensor  # float32 [n]
    n: int
    k: int

    def __post_init__(self) -> None:  # the kernel's arguments, read once (a call is µs)
        self.args = (self.packed.data_ptr(), self.n, self.offset.data_ptr(), self.scale.data_ptr())


def pack_weights(w_codes: torch.Tensor, w_scale: torch.Tensor) -> PackedWeights:
    """codes [n, k] in [-8, 7] (any integer dtype) and per-row scales [n]."""
    n, k = w_codes.shape
    blocks, kp = -(-n // BLOCK_COLS), k + (k & 1)
    w = torch.zeros(blocks * BLOCK_COLS, kp, dtype=torch.int8)
    w[:n, :k] = w_codes.to(torch.int8).cpu()
    packed = w.view(blocks, BLOCK_COLS, kp // 2, 2).permute(0, 2, 1, 3).contiguous()
    offset = (8 * w_codes.cpu().to(torch.int32).sum(dim=1, dtype=torch.int32)).contiguous()
    return PackedWeights(packed, offset, w_scale.detach().float().cpu().contiguous(), n, k)


@dataclass
class PackedRotation:
    """A BlockRotation (rotation.py) as the kernel applies it: float32 64-blocks, the
    tail and the permutation, contiguous."""

    perm: torch.Tensor | None  # int64 [k]
    blocks: torch.Tensor | None  # float32 [k // 64, 64, 64]; None: a tail only
    tail: torch.Tensor | None  # float32 [r, r]

    def __post_init__(self) -> None:
        nblk = 0 if self.blocks is None else self.blocks.shape[0]
        self.size = nblk * 64 + (0 if self.tail is None else self.tail.shape[0])
        # the kernel tells "rotate" from "not" by a block pointer: a tail-only rotation
        # passes the tail's address there (no block of it is read)
        anchor = self.tail if self.blocks is None else self.blocks
        self.args = (None if self.perm is None else self.perm.data_ptr(), anchor.data_ptr(), nblk,
                     None if self.tail is None else self.tail.data_ptr())


def pack_rotation(rot) -> PackedRotation:
    if rot.blocks.shape[0] and rot.blocks.shape[1] != 64:
        raise ValueError(f"the kernel rotates 64-blocks, not {rot.blocks.shape[1]}")
    perm = None if rot.perm is None else rot.perm.to(torch.int64).contiguous()
    blocks = rot.blocks.float().contiguous() if rot.blocks.shape[0] else None
    return PackedRotation(perm, blocks, None if rot.tail is None else rot.tail.float().contiguous())


@functools.lru_cache(maxsize=256)
def _ends(sizes: tuple[int, ...]) -> ctypes.Array:
    """The outputs' column ends as the kernel takes them (built once per split)."""
    ends = [sum(sizes[:i + 1]) for i in range(len(sizes))]
    return (ctypes.c_int64 * len(ends))(*ends)


_NO_ROTATION = (None, None, 0, None)


def linear(z: torch.Tensor, w: PackedWeights, scale: float = 1.0,
           row_scales: torch.Tensor | None = None, rotation: PackedRotation | None = None,
           split: tuple[int, ...] | None = None) -> torch.Tensor | list[torch.Tensor]:
    """Σ_k q[m,k] q_w[n,k] · s_w[n] · s_m with q = clamp(round(z' / s_m), -8, 7), for float32
    z [m, k] on the CPU, z' = z or, with `rotation`, z R (computed in the kernel);
    s_m = `scale`, or `row_scales` [m] (or [m, 1]) per row. With `split` (column counts
    summing to n) the result is one contiguous tensor per part, written by the kernel."""
    lib = _lib()
    if lib is None:
        raise RuntimeError(unavailable_reason())
    if not z.is_cpu:  # the kernel reads host memory
        raise ValueError(f"the AVX2 kernel takes CPU tensors, not {z.device}")
    if z.dtype != torch.float32 or not z.is_contiguous():
        z = z.float().contiguous()
    m, k = z.shape
    if k != w.k:
        raise ValueError(f"input has {k} features, the weights {w.k}")
    if rotation is not None and rotation.size != k:
        raise ValueError(f"the rotation does not cover the input's {k} features")
    rs = None
    if row_scales is not None:
        rs = row_scales.reshape(m)
        rs = rs if rs.dtype == torch.float32 and rs.is_contiguous() else rs.float().contiguous()
    sizes = (w.n,) if split is None else split
    ends = _ends(sizes)
    if ends[len(sizes) - 1] != w.n:
        raise ValueError(f"split {sizes} does not add up to the {w.n} outputs")
    ys = [torch.empty(m, c, dtype=torch.float32) for c in sizes]
    # scratch: the activation codes (m × k rounded up to even bytes), then the rotated rows
    codes = (m * (k + (k & 1)) + 63) // 64 * 64
    work = torch.empty(codes + (0 if rotation is None else 4 * m * k), dtype=torch.uint8)
    base = work.data_ptr()
    lib.w4a4_linear(z.data_ptr(), m, k, *(_NO_ROTATION if rotation is None else rotation.args),
                    None if rotation is None else base + codes, *w.args, float(scale),
                    None if rs is None else rs.data_ptr(), base, ends,
                    (ctypes.c_void_p * len(ys))(*[y.data_ptr() for y in ys]))
    return ys[0] if split is None else ys
