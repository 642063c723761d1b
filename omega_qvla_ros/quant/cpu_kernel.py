"""W4A4 linear on x86 CPUs with AVX2: a small C kernel (csrc/w4a4_avx2.c), built on
first use with the system C compiler and called through ctypes.

Why a kernel of our own: on AVX2 CPUs without VNNI nothing installed multiplies int4
codes faster than float32 at the shapes a VLA runs on a robot (tens to hundreds of
tokens); with AVX-512 VNNI `torch._int_mm` is fast at the GEMM alone but pays its
conversions around it, and the kernel, doing a layer in one call, still ran whole
chunks faster (int_gemm.py). Measured on an AVX2-only CPU (2 threads, 50 tokens ×
128 → 128): float32 18 µs, fbgemm's int8 linear 36 µs
(it runs on one thread and its int8 products need int32 accumulation),
`torch._int_mm` (oneDNN) 326 µs; torchao's CPU int8 × int4 kernels need AVX-512, VNNI,
AMX or ARM and are not in its x86 wheel. int4 × int4 codes allow what int8 cannot:
`vpmaddubsw` pair sums (≤ 240 with unsigned activation codes 0..15) add up in int16
for 128 pairs without saturating, so one multiply-add and one add do 32
multiply-accumulates. Where the CPU has AVX-512 VNNI (vnni_tiles()) the weights are packed
by k-quads instead and one `vpdpbusd` does 64 multiply-accumulates into int32 (the same
tile, the same exact sums); with AVX-VNNI and no AVX-512 (Intel client cores) the same
layout runs in 256-bit halves; TILE picks a tile for comparisons. The
kernel also quantizes the activations (round half to even, as torch.round) and rescales
its output in the same call: one call per layer.

Each OpenMP thread keeps its scratch (the codes of 64 rows, 12 rotated rows; with int4
weights, `pack_weights(nibbles=True)`, up to 8 MB of codes and one unpacked weight tile)
between calls, grown to the widest layer seen (about 1.8 MB per thread at 16384 inputs
on int8 weights): a fresh buffer per call cost more in page faults than the rotation
itself at 800 × 16384.

The library is built once per source version into a per-user cache
(`$OMEGA_QVLA_KERNEL_CACHE`, else `~/.cache/omega_qvla_ros`), with OpenMP from the
libgomp torch already loaded (torch.set_num_threads applies to it). Where the CPU has no
AVX2, no C compiler is found, or the build fails, `available()` is False (the reason in
`unavailable_reason()`) and layers use torch._int_mm (VNNI) or fbgemm.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
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
FLAGS = ("-O2", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=c11")
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


def _read_source() -> bytes | None:
    try:
        return SOURCE.read_bytes()
    except OSError:
        return None


# the source as this module was imported with: its argument struct (_Args) must match the
# library, also when the file changes under a running process (a checkout being edited)
_SOURCE_BYTES = _read_source()


def _build() -> Path:
    """The compiled library for this source and these flags (built when missing)."""
    src = _SOURCE_BYTES
    if src is None:
        raise RuntimeError(f"the kernel source {SOURCE} is missing from the installation")
    key = hashlib.sha256(src + " ".join(FLAGS).encode()).hexdigest()[:16]
    out = _cache_dir() / f"w4a4_avx2_{key}.so"
    if out.exists():
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # built aside, renamed in: atomic
        part, c_file = Path(tmp) / out.name, Path(tmp) / SOURCE.name
        c_file.write_bytes(src)
        run = subprocess.run([cc, *FLAGS, str(c_file), "-o", str(part)], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{cc} failed: {run.stderr.strip()[-400:]}")
        os.replace(part, out)
    return out


def _fallback() -> str:
    """What `auto` takes where this kernel cannot run (int_gemm.pick_backend)."""
    from .int_gemm import cpu_has_vnni
    return "torch._int_mm" if cpu_has_vnni() else "fbgemm"


@functools.lru_cache(maxsize=None)
def _lib() -> ctypes.CDLL | None:
    why = _cpu_ok()
    if why is None:
        try:
            lib = ctypes.CDLL(str(_build()))
            lib.w4a4_linear_args.restype = ctypes.c_int
            lib.w4a4_linear_args.argtypes = [ctypes.c_void_p]
            lib.w4a4_vnni_built.restype = ctypes.c_int
            return lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            why = f"the AVX2 kernel did not build or load: {e}"
            # said once: the integer layers then run on the fallback, correct but slower
            warnings.warn(f"{why}; integer layers use {_fallback()} (set CC or OMEGA_QVLA_KERNEL_CACHE)",
                          RuntimeWarning, stacklevel=2)
    _reason.append(why)
    return None


def available() -> bool:
    """Whether the AVX2 kernel runs here (built and loaded on the first ask)."""
    return _lib() is not None


# the kernel's VNNI tiles (csrc): 1 tile_vnni (AVX-512 VNNI, zmm), 2 tile_avxvnni (AVX-VNNI,
# ymm: Intel client cores without AVX-512), with the CPU flags each needs
VNNI_TILES = {1: {"avx512f", "avx512_vnni"}, 2: {"avx_vnni"}}


def vnni_tiles() -> list[int]:
    """The VNNI tiles that run here (built, and the CPU has their instructions), best first."""
    from .int_gemm import cpu_flags
    if not available():
        return []
    built = _lib().w4a4_vnni_built()
    return [t for t, flags in VNNI_TILES.items() if built & t and flags <= cpu_flags()]


def vnni() -> bool:
    """Whether one of the kernel's VNNI tiles runs here (weights packed by k-quads)."""
    return bool(vnni_tiles())


# the tile kernels take: None the best that runs here (the first of vnni_tiles(), else the
# AVX2 tile); 0 the AVX2 tile (weights by k-pairs); 1 or 2 that VNNI tile. Read as weights
# are packed and plans built (benchmarks compare the tiles; the outputs are the same)
TILE: int | None = None


def _tile() -> int:
    """The tile new weights and plans take (TILE, checked against what runs here)."""
    tiles = vnni_tiles()
    if TILE is None:
        return tiles[0] if tiles else 0
    if TILE and TILE not in tiles:
        raise ValueError(f"VNNI tile {TILE} does not run here (these do: {tiles})")
    return TILE


def unavailable_reason() -> str | None:
    return None if available() else _reason[-1]


@dataclass
class PackedWeights:
    """int4 weight codes in the kernel's layout and per-row float scales: int8, one byte
    per code ([n/16][k/2][16][2] by k-pairs for the AVX2 tile, or with `quads`
    [n/16][k/4][16][4] for the AVX-512 VNNI tile; zero padded), or with `nibbles` the same
    blocks at half a byte per code (each 64 bytes in 32, codes + 8 in the low and high
    nibbles: the pack's own size, unpacked by the kernel per tile, 2–4% slower at 50
    tokens); `offset` is 8 × the row sums (what the activation codes' unsigned offset adds)."""

    packed: torch.Tensor  # int8 or uint8 (nibbles)
    offset: torch.Tensor  # int32 [n]
    scale: torch.Tensor  # float32 [n]
    n: int
    k: int
    nibbles: bool = False
    quads: bool = False

    def __post_init__(self) -> None:  # the kernel's arguments, read once (a call is µs)
        self.args = (self.packed.data_ptr(), int(self.nibbles), int(self.quads), self.n,
                     self.offset.data_ptr(), self.scale.data_ptr())


def pack_weights(w_codes: torch.Tensor, w_scale: torch.Tensor, nibbles: bool = False,
                 quads: bool | None = None) -> PackedWeights:
    """codes [n, k] in [-8, 7] (any integer dtype) and per-row scales [n]; `quads`: the
    VNNI tiles' layout (default: where the tile taken, TILE, is one of them)."""
    quads = _tile() != 0 if quads is None else quads
    n, k = w_codes.shape
    step = 4 if quads or nibbles else 2  # whole k-quads (VNNI), whole pairs of k-pairs (nibbles)
    blocks, kp = -(-n // BLOCK_COLS), -(-k // step) * step
    w = torch.zeros(blocks * BLOCK_COLS, kp, dtype=torch.int8)
    w[:n, :k] = w_codes.to(torch.int8).cpu()
    group = 4 if quads else 2
    packed = w.view(blocks, BLOCK_COLS, kp // group, group).permute(0, 2, 1, 3).contiguous()
    if nibbles:
        u = (packed.view(blocks, kp // 4, 2, 32).to(torch.int16) + 8).to(torch.uint8)
        packed = (u[:, :, 0] | (u[:, :, 1] << 4)).contiguous()
    offset = (8 * w_codes.cpu().to(torch.int32).sum(dim=1, dtype=torch.int32)).contiguous()
    return PackedWeights(packed, offset, w_scale.detach().float().cpu().contiguous(), n, k, nibbles, quads)


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


class _Args(ctypes.Structure):
    """csrc's w4a4_args: one call's arguments."""
    _fields_ = [("z", ctypes.c_void_p), ("m", ctypes.c_int64), ("k", ctypes.c_int64),
                ("perm", ctypes.c_void_p), ("blocks", ctypes.c_void_p), ("nblk", ctypes.c_int64),
                ("tail", ctypes.c_void_p), ("w", ctypes.c_void_p), ("nibbles", ctypes.c_int64),
                ("quads", ctypes.c_int64), ("n", ctypes.c_int64),
                ("offset", ctypes.c_void_p), ("wscale", ctypes.c_void_p), ("rs", ctypes.c_void_p),
                ("ends", ctypes.c_void_p), ("ys", ctypes.c_void_p), ("s", ctypes.c_float),
                ("share", ctypes.c_int64)]


_NO_ROTATION = (None, None, 0, None)

# how a call's threads share its work (csrc: w4a4_linear_args): "auto" (by columns for a
# few tiles of rows per thread, else by rows), "rows" or "columns"; read as plans are
# built (benchmarks compare them; the outputs are the same)
SHARES = {"auto": 0, "rows": 1, "columns": 2}
SHARE = "auto"


class Plan:
    """One layer's kernel call with its constant arguments bound once (weights, rotation,
    how the outputs are split): a call then checks its input, allocates the outputs and
    converts one pointer (a layer at the shipped widths runs in tens of microseconds, and
    converting fifteen ctypes arguments and rebuilding the split cost several of them).
    Holds `w` and `rotation`, whose memory the kernel reads."""

    def __init__(self, w: PackedWeights, rotation: PackedRotation | None = None,
                 split: tuple[int, ...] | None = None, tile: int | None = None,
                 share: str | None = None) -> None:
        lib = _lib()
        if lib is None:
            raise RuntimeError(unavailable_reason())
        tiles = vnni_tiles()
        if w.quads and not tiles:
            raise ValueError("weights packed by k-quads need one of the kernel's VNNI tiles, "
                             "which this CPU or build lacks (cpu_kernel.vnni())")
        if w.quads and tile is not None and tile not in tiles:
            raise ValueError(f"VNNI tile {tile} does not run here (these do: {tiles})")
        if w.quads and tile is None:
            tile = _tile() or tiles[0]  # TILE = 0 packs by k-pairs: these weights came otherwise
        tile = tile if w.quads else 0
        if rotation is not None and rotation.size != w.k:
            raise ValueError(f"the rotation covers {rotation.size} features, the weights {w.k}")
        self.sizes = (w.n,) if split is None else tuple(int(c) for c in split)
        if sum(self.sizes) != w.n or min(self.sizes) <= 0:
            raise ValueError(f"split {self.sizes} does not add up to the {w.n} outputs")
        self.w, self.rotation, self.split = w, rotation, split is not None
        self._ends = (ctypes.c_int64 * len(self.sizes))(*itertools.accumulate(self.sizes))
        self._outputs = ctypes.c_void_p * len(self.sizes)
        perm, blocks, nblk, tail = _NO_ROTATION if rotation is None else rotation.args
        packed, nibbles, _, n, offset, scale = w.args
        share = SHARE if share is None else share
        if share not in SHARES:
            raise ValueError(f"share must be one of {sorted(SHARES)}, got {share!r}")
        args = _Args(None, 0, w.k, perm, blocks, nblk, tail, packed, nibbles, tile, n, offset, scale, None,
                     ctypes.addressof(self._ends), None, 1.0, SHARES[share])
        self._template = bytes(args)
        self._fn = lib.w4a4_linear_args

    def __call__(self, z: torch.Tensor, scale: float = 1.0,
                 row_scales: torch.Tensor | None = None) -> torch.Tensor | list[torch.Tensor]:
        """See linear()."""
        if not z.is_cpu:  # the kernel reads host memory
            raise ValueError(f"the AVX2 kernel takes CPU tensors, not {z.device}")
        if z.dtype != torch.float32 or not z.is_contiguous():
            z = z.float().contiguous()
        m, k = z.shape
        if k != self.w.k:
            raise ValueError(f"input has {k} features, the weights {self.w.k}")
        a = _Args.from_buffer_copy(self._template)  # this call's own (a plan may be shared by threads)
        if row_scales is not None:
            rs = row_scales.reshape(m)
            rs = rs if rs.dtype == torch.float32 and rs.is_contiguous() else rs.float().contiguous()
            a.rs = rs.data_ptr()
        ys = [torch.empty(m, c, dtype=torch.float32) for c in self.sizes]
        outputs = self._outputs(*[y.data_ptr() for y in ys])
        a.z, a.m, a.s, a.ys = z.data_ptr(), m, scale, ctypes.addressof(outputs)
        rc = self._fn(ctypes.addressof(a))
        if rc == -2:
            raise ValueError("the weights are packed for a VNNI tile this kernel build lacks")
        if rc:
            raise MemoryError("the AVX2 kernel could not allocate its per-thread scratch")
        return ys if self.split else ys[0]


def linear(z: torch.Tensor, w: PackedWeights, scale: float = 1.0,
           row_scales: torch.Tensor | None = None, rotation: PackedRotation | None = None,
           split: tuple[int, ...] | None = None, tile: int | None = None,
           share: str | None = None) -> torch.Tensor | list[torch.Tensor]:
    """Σ_k q[m,k] q_w[n,k] · s_w[n] · s_m with q = clamp(round(z' / s_m), -8, 7), for float32
    z [m, k] on the CPU, z' = z or, with `rotation`, z R (computed in the kernel);
    s_m = `scale`, or `row_scales` [m] (or [m, 1]) per row. With `split` (column counts
    summing to n) the result is one contiguous tensor per part, written by the kernel.
    `tile` picks one of the VNNI tiles (VNNI_TILES) for weights packed by k-quads (default:
    the best that runs here). `share`: how threads share the work (SHARES; default SHARE).
    A layer called many times binds its arguments once with Plan."""
    return Plan(w, rotation, split, tile, share)(z, scale, row_scales)
