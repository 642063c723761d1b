"""Per-layer orthogonal rotations of the contraction (input) axis, and of output rows.

A rotation R acts on row vectors: x̃ = x R, W̃ = W R, so x̃ W̃ᵀ = x Wᵀ exactly. It is
stored compactly as an optional permutation plus square blocks and applied at run
time as an index select and one batched block matmul:

    R = P · blockdiag(R_1, …, R_m, R_tail)

Modes (`RotationMode`):
- "omega": energy zigzag permutation, then per 64-block R_b = U_b · H_64 where U_b
  are the right singular vectors of the block's weight columns (composite SVD ·
  Hadamard of Ω-QVLA). Every input channel of a block then carries the same weight
  energy, and any activation spike is spread over 64 channels.
- "svd": the same permutation and U_b alone.
- "hadamard": no permutation, H_64 blocks (QuaRot-like, per linear).
- "random_hadamard": no permutation, diag(±1) · H_64 blocks (seeded).

Sizes not divisible by the block size (our rule, the paper leaves it open): the
channels are cut into ⌊n/64⌋ full blocks plus one tail block of r = n mod 64
channels. The tail uses H_r when r is a supported Hadamard order (2^k or K·2^k,
see hadamard.py), else U_b alone ("omega", "svd") or the identity ("hadamard").
Output-row rotations (action-head layers) use orthogonal Q_b from the SVD of each
64-row block of the (input-rotated) weight, with the same tail rule minus Hadamard.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .hadamard import hadamard_matrix, is_supported

RotationMode = Literal["none", "omega", "svd", "hadamard", "random_hadamard"]
ROTATION_STORAGE = ("int8", "fp16")
ROTATION_MODES = ("none", "omega", "svd", "hadamard", "random_hadamard")
BLOCK = 64


@dataclass
class BlockRotation:
    """R = P · blockdiag(blocks…, tail); perm may be None (identity)."""

    perm: torch.Tensor | None  # [n] int64
    blocks: torch.Tensor  # [m, B, B]
    tail: torch.Tensor | None  # [r, r]
    blocks_t: torch.Tensor | None = None  # the blocks transposed, contiguous (run-time form)

    @property
    def size(self) -> int:
        n = self.blocks.shape[0] * self.blocks.shape[1]
        return n + (0 if self.tail is None else self.tail.shape[0])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x R along the last axis."""
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        return self._blockwise(x, transpose=False)

    def apply_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """y Rᵀ along the last axis (R is orthogonal)."""
        x = self._blockwise(y, transpose=True)
        if self.perm is not None:
            inv = torch.empty_like(self.perm)
            inv[self.perm] = torch.arange(self.perm.numel(), device=self.perm.device)
            x = x.index_select(-1, inv)
        return x

    def _blockwise(self, x: torch.Tensor, transpose: bool) -> torch.Tensor:
        m, B, _ = self.blocks.shape
        if transpose:
            blocks = self.blocks_t if self.blocks_t is not None else self.blocks.transpose(1, 2)
        else:
            blocks = self.blocks
        if m:
            head = x[..., : m * B].reshape(-1, m, B).transpose(0, 1)  # [m, tokens, B], a view
            out = torch.bmm(head, blocks.to(x.dtype)).transpose(0, 1).reshape(*x.shape[:-1], m * B)
        else:
            out = x[..., :0]
        if self.tail is None:
            return out
        t = self.tail.t() if transpose else self.tail
        return torch.cat((out, x[..., m * B:] @ t.to(x.dtype)), dim=-1)

    def conjugate(self, H: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Rᵀ H R for a symmetric H [n, n], computed in H's own storage (H is overwritten
        and returned), block by block and `chunk` rows/columns at a time: never a dense
        [n, n] R, never a second [n, n] array (a 16384-wide float32 Hessian is 1 GiB)."""
        rot = self.to(dtype=H.dtype)
        n = H.shape[0]
        for i in range(0, n, chunk):  # H ← H R, row chunk by row chunk
            H[i:i + chunk] = rot.apply(H[i:i + chunk])
        for j in range(0, n, chunk):  # H ← Rᵀ H, column chunk by column chunk
            H[:, j:j + chunk] = rot.apply(H[:, j:j + chunk].t().contiguous()).t()
        return H

    def dense(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The full [n, n] matrix R (rows of the identity, rotated)."""
        eye = torch.eye(self.size, dtype=dtype, device=self.blocks.device)
        return BlockRotation(self.perm, self.blocks.to(dtype),
                             None if self.tail is None else self.tail.to(dtype)).apply(eye)

    def to(self, device=None, dtype=None) -> "BlockRotation":
        return BlockRotation(
            None if self.perm is None else self.perm.to(device),
            self.blocks.to(device=device, dtype=dtype),
            None if self.tail is None else self.tail.to(device=device, dtype=dtype),
        )


# At and below this many channels a rotation runs as one dense matmul (permutation and
# blocks in one n×n matrix) instead of an index select + a batched block matmul: at the
# shipped widths (128, 192) the two extra ops and their copies cost more than the dense
# product's extra multiplications (measured per call, 50 tokens at n = 128: 16 vs 49 µs).
DENSE_MAX = 192


@dataclass
class DenseRotation:
    """A BlockRotation held as its dense matrix M (x R = x @ M), for small n."""

    matrix: torch.Tensor  # [n, n]
    matrix_t: torch.Tensor  # Mᵀ, contiguous: y Rᵀ = y @ Mᵀ

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.matrix if x.dtype == self.matrix.dtype else self.matrix.to(x.dtype))

    def apply_inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y @ (self.matrix_t if y.dtype == self.matrix_t.dtype else self.matrix_t.to(y.dtype))


def runtime_form(rot: BlockRotation | None) -> "BlockRotation | DenseRotation | None":
    """How a layer applies `rot` at run time: dense when it is small (DENSE_MAX), else as
    stored with its transposed blocks ready for the inverse (same products; only the
    float summation order differs)."""
    if rot is None:
        return None
    if rot.size > DENSE_MAX:
        return BlockRotation(rot.perm, rot.blocks, rot.tail, rot.blocks.transpose(1, 2).contiguous())
    m = rot.dense(torch.float32)
    return DenseRotation(m, m.t().contiguous())


def zigzag_permutation(w: torch.Tensor) -> torch.Tensor:
    """Sort input channels by weight energy (descending) and interleave both ends."""
    energy = w.double().pow(2).mean(dim=0)
    order = torch.argsort(energy, descending=True, stable=True)
    n = order.numel()
    idx = torch.empty(n, dtype=torch.long)
    idx[0::2] = torch.arange((n + 1) // 2)
    idx[1::2] = n - 1 - torch.arange(n // 2)
    return order[idx]


def _right_singular(wb: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of wbᵀ wb (columns), by descending eigenvalue; wb [out, k] or a batch
    [m, out, k] (one eigendecomposition per block, batched)."""
    gram = wb.transpose(-1, -2) @ wb
    evals, evecs = torch.linalg.eigh(gram)
    order = torch.argsort(evals, dim=-1, descending=True)
    return torch.gather(evecs, -1, order.unsqueeze(-2).expand_as(evecs))


def _hadamard_or_identity(r: int, allow_identity: bool) -> torch.Tensor | None:
    if is_supported(r):
        return hadamard_matrix(r, torch.float64)
    return None if allow_identity else torch.eye(r, dtype=torch.float64)


def build_input_rotation(w: torch.Tensor, mode: RotationMode, block: int = BLOCK,
                         seed: int = 0) -> BlockRotation | None:
    """Rotation of the input axis of weight w [out, in], from the weights only. The
    blocks are built in one batched eigendecomposition (float64, [m, 64, 64])."""
    if mode == "none":
        return None
    if mode not in ROTATION_MODES:
        raise ValueError(f"unknown rotation mode {mode!r}; choose from {ROTATION_MODES}")
    w = w.detach().double().cpu()
    n = w.shape[1]
    m, r = divmod(n, block)
    perm = zigzag_permutation(w) if mode in ("omega", "svd") else None
    wp = w[:, perm] if perm is not None else w
    H = hadamard_matrix(block, torch.float64)
    gen = torch.Generator().manual_seed(seed)

    def make(cols: torch.Tensor, size: int) -> torch.Tensor:
        """Rotation blocks for cols [k, out, size] → [k, size, size]."""
        k = cols.shape[0]
        Hs = H if size == block else _hadamard_or_identity(size, allow_identity=True)
        if mode in ("omega", "svd"):
            U = _right_singular(cols)
            return U @ Hs if (mode == "omega" and Hs is not None) else U
        if Hs is None:
            return torch.eye(size, dtype=torch.float64).expand(k, size, size).clone()
        if mode == "random_hadamard":
            signs = torch.stack([torch.randint(0, 2, (size,), generator=gen).double() * 2 - 1 for _ in range(k)])
            return signs[:, :, None] * Hs
        return Hs.expand(k, size, size).clone()

    blocks_t = (make(wp[:, : m * block].reshape(w.shape[0], m, block).transpose(0, 1), block) if m
                else torch.zeros(0, block, block, dtype=torch.float64))
    tail = make(wp[:, m * block:][None], r)[0] if r else None
    return BlockRotation(perm, blocks_t, tail)


def build_output_rotation(w_rot: torch.Tensor, block: int = BLOCK) -> BlockRotation:
    """Output-row rotation Q from the SVD of each row block of w_rot [out, in].

    The stored weight is Qᵀ-rotated: W' = blockdiag(Q)ᵀ W̃, i.e. `rot.apply(W̃ᵀ)ᵀ`;
    the layer restores y = y' · blockdiag(Q)ᵀ = `rot.apply_inverse(y')`.
    """
    wt = w_rot.detach().double().cpu().T  # [in, out]: rows of W become columns
    out = wt.shape[1]
    m, r = divmod(out, block)
    blocks = [_right_singular(wt[:, b * block:(b + 1) * block]) for b in range(m)]  # ≤ 96 blocks
    blocks_t = torch.stack(blocks) if blocks else torch.zeros(0, block, block, dtype=torch.float64)
    tail = _right_singular(wt[:, m * block:]) if r else None
    return BlockRotation(None, blocks_t, tail)


def quantize_block(block: torch.Tensor, storage: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """How a rotation block is stored: int8 codes with one fp16-exact scale per block
    (entries of an orthogonal matrix lie in [-1, 1]), or fp16 values. Returns (stored
    tensor, scale or None)."""
    if storage == "fp16":
        return block.to(torch.float16).to(torch.float32), None
    if storage != "int8":
        raise ValueError(f"unknown rotation storage {storage!r}; choose from {ROTATION_STORAGE}")
    flat = block.reshape(-1, *block.shape[-2:]).double()
    scale = (flat.abs().amax(dim=(1, 2)) / 127).clamp_min(1e-8).to(torch.float16).to(torch.float32)
    codes = torch.clamp(torch.round(flat / scale.double()[:, None, None]), -127, 127).to(torch.int8)
    return codes.reshape(block.shape), scale


def dequantize_block(stored: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    if scale is None:
        return stored.float()
    flat = stored.reshape(-1, *stored.shape[-2:]).float() * scale.float()[:, None, None]
    return flat.reshape(stored.shape)


def stored_rotation(rot: BlockRotation | None, storage: str) -> BlockRotation | None:
    """`rot` exactly as a layer holding it in `storage` applies it at run time (float64)."""
    if rot is None:
        return None

    def rt(b):
        return dequantize_block(*quantize_block(b.float(), storage)).double()
    return BlockRotation(rot.perm, rt(rot.blocks) if rot.blocks.shape[0] else rot.blocks.double(),
                         None if rot.tail is None else rt(rot.tail))
