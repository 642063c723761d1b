"""int4 codes <-> compressed-tensors `pack-quantized` int32 words.

Layout (compressed-tensors, num_bits=4, packed along the input dimension): the stored
value is q + 8 in [0, 15]; eight consecutive columns share one int32 word, column
8·w + j in bits [4j, 4j + 4) of word w (least significant nibble first); a row whose
length is not a multiple of 8 is zero padded. Tools that read compressed-tensors
checkpoints unpack these words unchanged.
"""
from __future__ import annotations

import sys

import torch

OFFSET = 8
PER_WORD = 8


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes [rows, cols] in [-8, 7] -> int32 [rows, ceil(cols / 8)]."""
    if codes.dtype != torch.int8:
        raise TypeError(f"pack_int4 expects int8 codes, got {codes.dtype}")
    if codes.numel() and (codes.min() < -8 or codes.max() > 7):
        raise ValueError("int4 codes must lie in [-8, 7]")
    rows, cols = codes.shape
    words = -(-cols // PER_WORD)
    v = (codes.to(torch.int64) + OFFSET)
    if words * PER_WORD != cols:
        v = torch.nn.functional.pad(v, (0, words * PER_WORD - cols))
    v = v.reshape(rows, words, PER_WORD)
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=codes.device)
    packed = (v << shifts).sum(dim=-1)  # < 2**32, fits int64
    # reinterpret as signed int32 (two's complement), as compressed-tensors stores it
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32)


def unpack_int4(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """int32 words [rows, W] -> int8 codes [rows, cols]. Works on the words' bytes (two
    nibbles each, uint8 arithmetic): byte k of word w holds columns 8w+2k (low nibble)
    and 8w+2k+1 (high nibble) on a little-endian host, which every supported CPU and GPU is."""
    if packed.dtype != torch.int32:
        raise TypeError(f"unpack_int4 expects int32 words, got {packed.dtype}")
    rows, words = packed.shape
    if words * PER_WORD < cols:
        raise ValueError(f"{words} words cannot hold {cols} int4 values")
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts: the portable way
        p = packed.to(torch.int64) & 0xFFFFFFFF
        shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=packed.device)
        v = (p.unsqueeze(-1) >> shifts) & 0xF
        return (v.reshape(rows, words * PER_WORD)[:, :cols] - OFFSET).to(torch.int8)
    b = packed.contiguous().view(torch.uint8).reshape(rows, words * 4)
    v = torch.stack((b & 0xF, b >> 4), dim=-1).reshape(rows, words * PER_WORD)[:, :cols]
    return v.view(torch.int8) - OFFSET
