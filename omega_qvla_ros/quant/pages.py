"""Give a dropped tensor's memory pages back to the OS.

A pack's tensors are views of its memory-mapped safetensors file, one mapping per shard
kept alive by every tensor still in use. A layer that releases its int4 codes (its
kernel holds its own copy) drops the tensor, but the file pages it touched stay in the
process's resident set while the shard's mapping lives. `release_pages` tells the kernel
they are no longer needed (madvise MADV_DONTNEED over the whole pages inside the
tensor's bytes; pages shared with neighbouring tensors stay), so resident memory follows
what the model holds. The tensor must not be read again.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys

import torch

_MADV_DONTNEED = 4
_libc = None


def _madvise():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return _libc.madvise


def release_pages(t: torch.Tensor) -> int:
    """Drop the whole pages inside `t`'s bytes from this process (Linux, CPU tensors);
    returns the bytes released (0 where nothing can be done)."""
    if not sys.platform.startswith("linux") or t.device.type != "cpu" or t.numel() == 0:
        return 0
    page = mmap.PAGESIZE
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    lo, hi = -(-start // page) * page, end // page * page
    if hi <= lo:
        return 0
    if _madvise()(lo, hi - lo, _MADV_DONTNEED) != 0:
        return 0
    return hi - lo
