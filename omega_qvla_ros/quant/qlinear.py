"""QuantLinear: a W4A4 linear layer holding packed int4 weights, rotations and
activation-scale state, with a reference and an integer execution path.

Forward, for input x [..., in]:
    x̃ = x R                         (rotation: index select + batched 64×64 blocks; one
                                      dense matmul when small, rotation.DENSE_MAX)
    z = x̃ ⊘ d                      (optional channel divisor folded into the weights:
                                      SmoothQuant factors, or the per-step profile)
    q_z, s = activation quantizer   (dynamic per-token | static per-channel | per-step
                                      table | per-step factorized, see ACT_MODES)
    y' = reference: (q_z·s) @ Ŵᵀ    (dequantized weights, float matmul; the paper)
         integer:   s ⊙ (q_z q_wᵀ) ⊙ s_w  (int GEMM with int32 accumulation)
    y = y' · blockdiag(Q)ᵀ + b      (optional output-row rotation restored)

The integer path needs every scale off the contraction axis: per-output-channel
weight scales (group_size None) and a per-token or per-tensor activation scale
(modes "dynamic" and "per_step_factorized"). 128-group weight scales and the
per-input-channel modes ("static", "per_step") run on the reference path only; a static
per-channel scale folded into the weights ("static_tensor": channel divisor + one static
scale) is integer-executable. Integer backends (int_gemm.BACKENDS): on x86 CPUs our AVX2
kernel (cpu_kernel.py) where it builds, else torch._int_mm with VNNI, fbgemm without;
the fused Triton kernels on CUDA (triton_kernels.py; torch._int_mm where they do not
apply), torch's int4 CPU kernel for `kernel_weights="int4_bf16"`, our AVX2 kernel on the
int4 codes for `kernel_weights="int4_avx2"`.

Input groups (`LayerSpec.input_group`, InputGroup): layers that read one input (q/k/v,
gate/up) and were quantized with one rotation and one set of activation scales run on
the integer path as one layer — one rotation, one quantization, one GEMM over their
stacked weights — and each takes its columns of the result.
"""
from __future__ import annotations

import random
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from . import cpu_kernel, int_gemm, triton_kernels
from .context import current_step, step_row
from .int4 import dequantize_weight, num_groups, per_token_scales, quantize_codes
from .packing import pack_int4, unpack_int4
from .pages import release_pages
from .rotation import (BLOCK, ROTATION_STORAGE, BlockRotation, DenseRotation, dequantize_block,
                       quantize_block, runtime_form)

STORAGE_FLOAT = torch.float16  # quantization state is stored (and held) at fp16 precision

_HALF = (torch.float16, torch.bfloat16)  # activations a fused kernel writes in their own precision


def storage_round(t: torch.Tensor) -> torch.Tensor:
    """Round float quantization state to what the pack stores (fp16), so that saving and
    loading a pack is lossless and every byte is counted at its stored size."""
    return t.to(STORAGE_FLOAT).to(t.dtype) if t.is_floating_point() else t


def storage_dtype(name: str, t: torch.Tensor) -> torch.dtype:
    """Dtype a QuantLinear buffer takes in a pack (by buffer name)."""
    if name == "input_perm":
        return torch.int16 if t.numel() <= 32767 else torch.int32
    if t.is_floating_point():
        return STORAGE_FLOAT
    return t.dtype


ACT_MODES = ("none", "dynamic", "static", "static_tensor", "per_step", "per_step_factorized")
KERNEL_WEIGHTS = ("hold", "per_call", "int4_bf16", "int4_avx2")
INTEGER_ACT_MODES = ("dynamic", "static_tensor", "per_step_factorized")
PATHS = ("auto", "reference", "integer")
DITHER_ACT_MODES = ("static_tensor", "per_step_factorized")
DITHER_SEED = 20261205  # the offset bank's draw: fixed, so a pack runs the same everywhere


@dataclass
class LayerSpec:
    """Everything that fixes a QuantLinear's buffers; stored per layer in the pack."""

    in_features: int
    out_features: int
    bias: bool
    group_size: int | None = 128
    rotation: str = "none"
    out_rotation: bool = False
    act_mode: str = "dynamic"
    steps: int = 0
    channel_div: bool = False
    block: int = BLOCK
    side: str = "backbone"
    rotation_storage: str = "int8"
    input_group: str | None = None  # layers of one model with the same key share their input
    act_dither: int = 0  # subtractive dither of the activation codes: a bank of this many offsets (0: off)

    def __post_init__(self) -> None:
        if self.act_mode not in ACT_MODES:
            raise ValueError(f"unknown activation mode {self.act_mode!r}; choose from {ACT_MODES}")
        if self.group_size is not None and self.group_size >= self.in_features:
            self.group_size = None
        if self.rotation_storage not in ROTATION_STORAGE:
            raise ValueError(f"unknown rotation storage {self.rotation_storage!r}")
        if self.act_mode in ("per_step", "per_step_factorized") and self.steps < 1:
            raise ValueError(f"activation mode {self.act_mode} needs steps >= 1")
        if self.act_dither < 0 or (self.act_dither and self.act_mode not in DITHER_ACT_MODES):
            raise ValueError(f"act_dither needs a bank size >= 1 and one activation scale per tensor "
                             f"({DITHER_ACT_MODES}); got {self.act_dither} with {self.act_mode!r}")

    @property
    def integer_ok(self) -> bool:
        return self.group_size is None and self.act_mode in INTEGER_ACT_MODES

    def integer_blocker(self) -> str | None:
        if self.group_size is not None:
            return f"weight scales per {self.group_size}-column group lie on the contraction axis"
        if self.act_mode not in INTEGER_ACT_MODES:
            return f"activation mode {self.act_mode!r} scales input channels (contraction axis)"
        return None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LayerSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown layer spec keys {sorted(unknown)}")
        return cls(**d)


def _rot_buffers(n: int, block: int) -> tuple[int, int]:
    return divmod(n, block)


class QuantLinear(nn.Module):
    """W4A4 linear layer. Build with `from_parts`, or empty from a spec to load a pack."""

    def __init__(self, spec: LayerSpec, path: str = "auto", backend: str = "auto") -> None:
        super().__init__()
        if path not in PATHS:
            raise ValueError(f"unknown path {path!r}; choose from {PATHS}")
        self.spec = spec
        self.in_features, self.out_features = spec.in_features, spec.out_features
        self.path = path
        self.backend = backend
        self.cache_weights = False
        # integer kernels' int8 weights: "hold" (built once, kept: one byte per weight, twice
        # the int4 codes) or "per_call" (rebuilt from the int4 codes on every call and
        # dropped: the pack's memory, one unpack + repack per call). pack.load_pack picks.
        self.kernel_weights = "hold"
        n, o = spec.in_features, spec.out_features
        f32 = torch.float32
        self.register_buffer("weight_packed", torch.zeros(o, -(-n // 8), dtype=torch.int32))
        self.register_buffer("weight_scale", torch.ones(o, num_groups(n, spec.group_size), dtype=f32))
        self.register_buffer("weight_shape", torch.tensor([o, n], dtype=torch.int64))
        if spec.bias:
            self.register_buffer("bias", torch.zeros(o, dtype=f32))
        else:
            self.bias = None
        if spec.rotation in ("omega", "svd"):
            self.register_buffer("input_perm", torch.arange(n, dtype=torch.int64))
        if spec.rotation != "none":
            self._register_rot("input", n, spec.block)
        if spec.out_rotation:
            self._register_rot("output", o, spec.block)
        if spec.channel_div:
            self.register_buffer("input_channel_div", torch.ones(n, dtype=f32))
        if spec.act_mode == "static":
            self.register_buffer("act_scale", torch.ones(n, dtype=f32))
        elif spec.act_mode == "static_tensor":
            self.register_buffer("act_scale", torch.ones(1, dtype=f32))
        elif spec.act_mode == "per_step":
            self.register_buffer("act_step_table", torch.ones(spec.steps, n, dtype=f32))
        elif spec.act_mode == "per_step_factorized":
            self.register_buffer("act_step_scale", torch.ones(spec.steps, dtype=f32))
        self._cache: dict[str, object] = {}
        self.siblings: list[QuantLinear] | None = None  # its input group, leader first (link_input_groups)
        # plain attributes (asked on every call: an nn.Module's missing attribute costs an exception)
        self.codes_released = False  # the int4 codes given back at load (prepare)
        self.triton_failed = False  # the fused kernels failed to build here: unfused from then on
        self.avx2_split: tuple[int, ...] | None = None  # an input group's member widths (InputGroup)

    def _register_rot(self, prefix: str, n: int, block: int) -> None:
        """Rotation blocks: int8 codes + one scale per block, or fp16-exact floats."""
        m, r = _rot_buffers(n, block)
        int8 = self.spec.rotation_storage == "int8"
        for name, count, size in ((f"{prefix}_rot_blocks", m, block), (f"{prefix}_rot_tail", 1 if r else 0, r)):
            if not count:
                continue
            shape = (count, size, size) if name.endswith("blocks") else (size, size)
            self.register_buffer(name, torch.zeros(shape, dtype=torch.int8 if int8 else torch.float32))
            if int8:
                self.register_buffer(f"{name}_scale", torch.ones(count))

    # ---------------------------------------------------------------- building
    @classmethod
    def from_parts(cls, spec: LayerSpec, codes: torch.Tensor, scales: torch.Tensor,
                   bias: torch.Tensor | None = None, rot_in: BlockRotation | None = None,
                   rot_out: BlockRotation | None = None, channel_div: torch.Tensor | None = None,
                   act_scale: torch.Tensor | None = None, act_step_table: torch.Tensor | None = None,
                   act_step_scale: torch.Tensor | None = None, **kw) -> "QuantLinear":
        q = cls(spec, **kw)
        q.weight_packed.copy_(pack_int4(codes.to(torch.int8)))
        q.weight_scale.copy_(storage_round(scales))
        if spec.bias:
            q.bias.copy_(storage_round(bias))
        if rot_in is not None:
            if rot_in.perm is not None:
                q.input_perm.copy_(rot_in.perm)
            q._set_rot("input", rot_in)
        if rot_out is not None:
            q._set_rot("output", rot_out)
        for name, val in (("input_channel_div", channel_div), ("act_scale", act_scale),
                          ("act_step_table", act_step_table), ("act_step_scale", act_step_scale)):
            if val is not None:
                getattr(q, name).copy_(storage_round(val))
        return q

    def _set_rot(self, prefix: str, rot: BlockRotation) -> None:
        for name, block in ((f"{prefix}_rot_blocks", rot.blocks if rot.blocks.shape[0] else None),
                            (f"{prefix}_rot_tail", rot.tail)):
            if block is None:
                continue
            stored, scale = quantize_block(block.float(), self.spec.rotation_storage)
            getattr(self, name).copy_(stored)
            if scale is not None:
                getattr(self, f"{name}_scale").copy_(scale)

    # ---------------------------------------------------------------- caches
    def _clear_caches(self) -> None:
        self._cache.clear()
        if self.siblings is not None:  # the group's fused layer holds this layer's weights too
            self.siblings[0]._cache.pop("input_group", None)

    def __getstate__(self) -> dict:
        """A copy (deepcopy, pickle) starts with empty caches: they hold kernel plans with
        C pointers into this layer's tensors and functions bound to this layer."""
        state = super().__getstate__()
        return {**state, "_cache": {}}

    def _load_from_state_dict(self, *args, **kwargs):
        self._clear_caches()
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        if self.codes_released:
            raise RuntimeError("this layer gave back its int4 codes at load (integer_codes='drop'): it "
                               "cannot be moved or converted; load the pack again on the target device")
        self._clear_caches()
        return super()._apply(fn, recurse)

    def _cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def weight_codes(self) -> torch.Tensor:
        """int8 codes [out, in], unpacked on every call (never cached: a model's worth of
        unpacked codes would double its memory)."""
        if self.codes_released:  # unpacking the placeholder would give garbage, not weights
            raise RuntimeError(
                "this layer gave back its int4 codes (integer_codes='drop' at load, or it is an input "
                "group's stacked layer): only the kernel it was built for can run it; keep that "
                "backend and kernel_weights, or load the pack again")
        return unpack_int4(self.weight_packed, self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the reference path multiplies, rebuilt on every call unless
        `cache_weights` is set (a documented option: speed for memory)."""
        if self.cache_weights:
            return self._cached("w", lambda: dequantize_weight(
                self.weight_codes(), self.weight_scale, self.spec.group_size))
        return dequantize_weight(self.weight_codes(), self.weight_scale, self.spec.group_size)

    def prepare(self, release_codes: bool = False) -> None:
        """Build this layer's integer-kernel cache now (at load), not on the first call;
        `release_codes` then gives back the packed int4 codes the kernel no longer needs
        (the kernel's int8 copy replaces them: the layer runs, it cannot be saved)."""
        if self.kernel_weights == "per_call":
            return  # nothing to build; the int4 codes stay (every call repacks from them)
        if self.siblings is not None and self.uses_integer_path() and self.weight_packed.device.type != "meta":
            group = self._group()  # the group's one fused layer holds the kernel weights (built once)
            if release_codes and group.layer.weight_packed.device.type == "meta":
                self._release_codes()
            return
        if self.uses_integer_path() and self.weight_packed.device.type != "meta":
            if self.kernel_weights == "int4_avx2" and (self.weight_packed.device.type != "cpu"
                                                      or not cpu_kernel.available()):
                raise ValueError("kernel_weights 'int4_avx2' needs our AVX2 kernel and a CPU device "
                                 f"({cpu_kernel.unavailable_reason() or self.weight_packed.device}); "
                                 "use 'hold', 'int4_bf16' or 'per_call'")
            if self.spec.act_dither:
                self._dither_bank()  # built from the int4 codes: before they may be given back
            backend = self._backend(self.weight_packed.device)
            if backend == "int4_bf16":
                if self.weight_packed.device.type != "cpu" or not int_gemm.int4_bf16_available():
                    raise ValueError("kernel_weights 'int4_bf16' needs torch's CPU int4 kernel "
                                     "(aten._weight_int4pack_mm_for_cpu) and a CPU device; "
                                     "use 'hold' or 'per_call'")
                self._int4_weights()
            elif backend == "fbgemm":
                self._fbgemm_weights()
            elif backend == "avx2":
                self._kernel_weights("avx2_plan", self._avx2_plan)
            elif backend == "int_mm":
                self._int_mm_weights()
            else:  # "triton" reads the pack's int4 words; "exact" unpacks them per call
                return
            if release_codes:
                self._release_codes()

    def _release_codes(self) -> None:
        release_pages(self.weight_packed)  # the pack's mapped pages leave the resident set
        self.weight_packed = torch.empty_like(self.weight_packed, device="meta")
        self.codes_released = True

    def set_kernel_weights(self, kind: str, release_codes: bool = False) -> None:
        """Choose how this layer's integer kernel holds its weights (KERNEL_WEIGHTS) and
        build them now; kernel weights built for another choice are dropped."""
        if kind not in KERNEL_WEIGHTS:
            raise ValueError(f"kernel_weights must be one of {KERNEL_WEIGHTS}, got {kind!r}")
        self.kernel_weights = kind
        for key in ("fbgemm", "avx2_plan", "avx2_fast", "wt_i8", "int4"):
            self._cache.pop(key, None)
        if self.siblings is not None:  # a group built for another kind is rebuilt (the leader's kind)
            group = self.siblings[0]._cache.get("input_group")
            if group is not None and group.layer.kernel_weights != self.siblings[0].kernel_weights:
                self.siblings[0]._cache.pop("input_group")
        self.prepare(release_codes=release_codes)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.codes_released:
            raise RuntimeError("this layer gave back its int4 codes at load (integer_codes='drop'); "
                               "load the pack again to save or inspect it")
        return super()._save_to_state_dict(destination, prefix, keep_vars)

    def _rotation(self, prefix: str) -> BlockRotation | None:
        def read(name):
            t = getattr(self, name, None)
            return None if t is None else dequantize_block(t, getattr(self, f"{name}_scale", None))

        def make():
            blocks, tail = read(f"{prefix}_rot_blocks"), read(f"{prefix}_rot_tail")
            if blocks is None and tail is None:
                return None
            if blocks is None:
                blocks = torch.zeros(0, self.spec.block, self.spec.block, device=tail.device)
            perm = getattr(self, "input_perm", None) if prefix == "input" else None
            return BlockRotation(perm, blocks, tail)
        return self._cached(f"rot_{prefix}", make)

    # ---------------------------------------------------------------- forward
    def uses_integer_path(self) -> bool:
        if self.path == "reference" or self.spec.act_mode == "none":
            return False
        if self.path == "integer":
            why = self.spec.integer_blocker()
            if why:
                raise ValueError(f"integer path impossible for this layer: {why}")
            return True
        return self.spec.integer_ok

    def activation_scale(self, z: torch.Tensor) -> torch.Tensor:
        """Scale(s) for the activation codes: [M,1], [in] or a 0-d tensor."""
        mode = self.spec.act_mode
        if mode == "dynamic":
            return per_token_scales(z)
        if mode in ("static", "static_tensor"):
            return self.act_scale
        row = step_row(current_step(), self.spec.steps)
        table = self.act_step_table if mode == "per_step" else self.act_step_scale
        if row is None:  # no step context: the mean over steps (cached, invalidated on load)
            return self._cached("step_mean", lambda: table.mean(dim=0))
        return table[row]

    def _input_transform(self) -> tuple[BlockRotation | DenseRotation | None, torch.Tensor | None]:
        """(rotation in its run-time form, leftover divisor): _fused_input_rotation, dense
        when small (rotation.runtime_form)."""
        def make():
            rot, div = self._fused_input_rotation()
            return runtime_form(rot), div
        return self._cached("rot_run", make)

    def _fused_input_rotation(self) -> tuple[BlockRotation | None, torch.Tensor | None]:
        """(rotation, leftover divisor) with the channel divisor — and for "static_tensor"
        the static scale too — folded into the rotation's blocks: x·P·blockdiag(R_b)/d =
        x·P·blockdiag(R_b·diag(1/d_b)), one elementwise pass fewer per call. Built once."""
        def make():
            rot = self._rotation("input")
            div = self.input_channel_div if self.spec.channel_div else None
            if self.spec.act_mode == "static_tensor":
                div = self.act_scale.expand(self.in_features) if div is None else div * self.act_scale
            if div is None or rot is None:
                return rot, div
            m, B, _ = rot.blocks.shape
            inv = 1.0 / div.float()
            blocks = rot.blocks * inv[: m * B].view(m, 1, B)
            tail = None if rot.tail is None else rot.tail * inv[m * B:][None, :]
            return BlockRotation(rot.perm, blocks, tail), None
        return self._cached("rot_fused", make)

    def _transformed_input(self, x: torch.Tensor, own: bool = False) -> torch.Tensor:
        """x as [tokens, in] float, rotated and divided by the folded channel profile (and,
        for "static_tensor", by its scale); `own`: a tensor of this call's own, never x's
        memory (the integer paths quantize it in place)."""
        z = x.reshape(-1, self.in_features)
        if z.dtype != torch.float32:
            z = z.float()
        rot, div = self._input_transform()
        if rot is not None:
            z = rot.apply(z)
        elif div is None and own:
            return z.clone()
        return z if div is None else z / div

    def _scaled_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(z, s, prescaled): _transformed_input and its activation scale s; for
        "static_tensor" z is already divided by s."""
        z = self._transformed_input(x)
        if self.spec.act_mode == "static_tensor":
            return z, self.act_scale, True
        if self.spec.act_mode == "none":
            return z, torch.ones((), device=z.device), False
        return z, self.activation_scale(z), False

    def _rotated_input(self, x: torch.Tensor) -> torch.Tensor:
        """x as [tokens, in] float, rotated and divided by the folded channel profile."""
        z, s, prescaled = self._scaled_input(x)
        return z * s if prescaled else z

    def activation_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The int4 activation codes (float-valued) and their scale that the GEMM multiplies
        for input x, in the current step context."""
        z, s, prescaled = self._scaled_input(x)
        return (torch.clamp(torch.round(z), -8, 7) if prescaled else quantize_codes(z, s)), s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = self._cache.get("avx2_fast")
        key = (self.path, self.backend, self.kernel_weights)
        current = fast is not None and fast[0] == key
        if current and fast[1] is not None and x.is_cpu:
            y = fast[1](x)
            if y is not None:
                return y
        if self.siblings is not None and self.uses_integer_path():
            y = self._group().output(self, x)
        else:
            y, bias_added = self._product(x)
            y = self._finish(y, x, bias_added)
        if not current and x.is_cpu:
            self._cache["avx2_fast"] = (key, self._avx2_fast())
        return y

    def _avx2_fast(self) -> Callable[[torch.Tensor], torch.Tensor | None] | None:
        """The whole forward on the AVX2 kernel as one short function, for the layers whose
        call is nothing else (integer path, the kernel rotating and quantizing, one scale
        per tensor, no output rotation): at the shipped widths a layer's kernel call takes
        20-60 us and the general forward's Python added 10-30 us more to it. None where
        the general forward is needed. Built after the first call, kept with the caches
        (a load or a move clears them) for this path, backend and kernel_weights. The
        function answers None when its group has been rebuilt: the general forward then
        runs."""
        if not self.uses_integer_path() or self.kernel_weights == "per_call" or \
                self.spec.act_mode not in ("static_tensor", "per_step_factorized"):
            return None
        if self.spec.act_dither and self.siblings is None:  # the general forward dithers (_product)
            return None
        if self.siblings is not None:
            if not self._group().runs_on_avx2():
                return None
            leader = self.siblings[0]

            def member(x: torch.Tensor) -> torch.Tensor | None:
                g = leader._cache.get("input_group")
                return None if g is None else g.fast_output(self, x)
            return member
        if self._backend(torch.device("cpu")) != "avx2" or self._cached(
                "rot_output_run", lambda: runtime_form(self._rotation("output"))) is not None:
            return None
        plan, in_kernel = self._kernel_weights("avx2_plan", self._avx2_plan)
        if not in_kernel:
            return None
        k, n, bias, tensor_scale = self.in_features, self.out_features, self.bias, self._tensor_scale
        static = self.spec.act_mode == "static_tensor"

        def single(x: torch.Tensor) -> torch.Tensor:
            y = plan(x.reshape(-1, k), 1.0 if static else tensor_scale())
            if bias is not None:
                y.add_(bias)
            if x.dim() != 2:
                y = y.view(*x.shape[:-1], n)
            return y if x.dtype is torch.float32 else y.to(x.dtype)
        return single

    def _finish(self, y: torch.Tensor, x: torch.Tensor, bias_added: bool) -> torch.Tensor:
        """The product y [tokens, out] (before the output rotation) as this layer's output
        for input x: output rotation restored, bias added, x's leading shape and dtype."""
        rot_out = self._cached("rot_output_run", lambda: runtime_form(self._rotation("output")))
        if rot_out is not None:
            y = rot_out.apply_inverse(y)
        if self.bias is not None and not bias_added:
            y = y.add_(self.bias)  # y is this call's own tensor (or its own columns of one)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def _group(self) -> "InputGroup":
        """This layer's input group (its leader builds and holds it; rebuilt after a load
        or a move, which clear the caches)."""
        leader = self.siblings[0]
        group = leader._cache.get("input_group")
        if group is None or group.layer.backend != leader.backend:
            # (re)built for the leader's backend: the stacked layer keeps only the weights of
            # the kernel it was built for (its int4 codes are given back)
            group = leader._cache["input_group"] = InputGroup(leader.siblings)
        return group

    # ---------------------------------------------------------------- dither
    def _dither_bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(E [K, in], C [K, out]) for subtractive dither of the activation codes. The layer's
        input transform maps E_k onto d_k, a uniform draw in [-1/2, 1/2) per channel in code
        units (per unit of the step's tensor scale for "per_step_factorized"); C_k is E_k's
        exact image through the layer's linear map (the same int4 weights, no activation
        rounding, no bias). The layer then computes Q(x + f·E_k) − f·C_k with k drawn per
        call: the same integer GEMM on a shifted input and one vector subtracted, and its
        rounding error no longer the same function of the input in every call, so the
        chunks a controller blends average it (why: the recipe's docstring). The inverse of
        the rotation is its transpose (exact for the stored rotation up to its int8
        rounding, which only bends d_k's distribution: C_k stays exact). Built once, from
        the int4 codes (prepare builds it before giving them back)."""
        def make():
            K, n = self.spec.act_dither, self.in_features
            g = torch.Generator().manual_seed(DITHER_SEED + n)
            e = (torch.rand(K, n, generator=g, dtype=torch.float64) - 0.5).to(self.weight_packed.device)
            if self.spec.channel_div:
                e = e * self.input_channel_div.double()
            if self.spec.act_mode == "static_tensor":
                e = e * self.act_scale.double()
            rot = self._rotation("input")
            if rot is not None:
                e = rot.to(dtype=torch.float64).apply_inverse(e)
            e = e.float()
            c = self._rotated_input(e) @ self.dequantized_weight().t()
            return e, c
        return self._cached("dither", make)

    def _dither_draw(self) -> tuple[int, float]:
        """(bank row k for this call, factor f: the step's tensor scale, or 1 when the static
        scale is inside E); a fixed-seed draw per layer, restarted on load. Drawn in Python:
        a captured CUDA graph replays the row drawn at capture (dither off in effect)."""
        draw = self._cached("dither_draw", lambda: random.Random(DITHER_SEED).randrange)
        f = 1.0 if self.spec.act_mode == "static_tensor" else self._tensor_scale()
        return draw(self.spec.act_dither), f

    def _dither_offsets(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + f·E_k, f·C_k) for this call (see _dither_bank)."""
        e, c = self._dither_bank()
        k, f = self._dither_draw()
        ek, ck = (e[k], c[k]) if f == 1.0 else (e[k] * f, c[k] * f)
        return x + ek.to(x.dtype), ck

    def _product(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(the layer's product before its output rotation, whether the bias is in it)."""
        if self.spec.act_dither:
            x, ck = self._dither_offsets(x)
            y, bias_added = self._undithered_product(x)
            return y - ck, bias_added
        return self._undithered_product(x)

    def _undithered_product(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if self.spec.act_mode == "none":
            return self._rotated_input(x) @ self.dequantized_weight().t(), False
        if not self.uses_integer_path():
            codes, s = self.activation_codes(x)
            return (codes * s) @ self.dequantized_weight().t(), False
        backend = self._backend(x.device)
        if backend == "triton":
            y = self._triton_forward(x)
            if y is not None:
                return y, not self.spec.out_rotation
            backend = self._backend(x.device)  # the kernels failed here: unfused from now on
        if backend == "avx2":
            return self._avx2_forward(x), False
        if backend == "fbgemm":
            return self._fbgemm_forward(x), False
        if backend == "int_mm" and x.device.type == "cpu":
            return self._int_mm_cpu_forward(x), False
        codes, s = self.activation_codes(x)
        return self._integer_gemm(codes) * s, False

    def _fbgemm_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The integer path on fbgemm with as few ops per call as the scales allow (at the
        shipped widths every op costs about as much as the GEMM): fbgemm quantizes its
        float input itself (round half to even, as torch.round), so a per-tensor scale goes
        in as the kernel's input scale and comes out in its output (no divide, no
        multiply); a static one is folded into the prepacked weight scales."""
        z = self._transformed_input(x, own=True)
        packed = self._fbgemm_weights()
        mode = self.spec.act_mode
        if mode == "static_tensor":  # z = x̃ / s already, s inside the packed weight scales
            return int_gemm.gemm_fbgemm(z.clamp_(-8, 7), packed)
        if mode == "per_step_factorized":  # one scale per tensor
            sf = self._tensor_scale()
            return int_gemm.gemm_fbgemm(z.clamp_(-8 * sf, 7 * sf), packed, sf)
        s = self.activation_scale(z)
        return int_gemm.gemm_fbgemm((z / s).clamp_(-8, 7), packed) * s

    def _avx2_forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The integer path on our AVX2 kernel (cpu_kernel.py): rotation, activation
        quantization, the int4 GEMM and the rescale in one call (a static per-tensor scale,
        "static_tensor", is folded into the rotation and the packed weight scales). Dynamic
        per-token scales and a channel divisor without a rotation are applied here first.
        With `avx2_split` set (an input group's fused layer) the columns come back as one
        contiguous tensor per part."""
        plan, in_kernel = self._kernel_weights("avx2_plan", self._avx2_plan)
        mode = self.spec.act_mode
        if in_kernel:
            z = x.reshape(-1, self.in_features)
        else:
            z = self._transformed_input(x)  # the kernel only reads z
            if mode == "dynamic":
                return plan(z, row_scales=self.activation_scale(z))
        # "static_tensor": z (or its rotation) is already divided by the scale
        return plan(z, 1.0 if mode == "static_tensor" else self._tensor_scale())

    def _avx2_plan(self) -> tuple["cpu_kernel.Plan", bool]:
        """(the kernel call with this layer's packed weights and, where the kernel applies
        it, rotation bound; whether the kernel takes x as it comes): built once
        (kernel_weights "hold")."""
        rot, div = self._fused_input_rotation()
        in_kernel = not (self.spec.act_mode == "dynamic" or div is not None
                         or (rot is not None and rot.blocks.shape[1:] != (64, 64)))
        packed_rot = cpu_kernel.pack_rotation(rot) if in_kernel and rot is not None else None
        return cpu_kernel.Plan(self._avx2_weights(), packed_rot, self.avx2_split), in_kernel

    def _int_mm_cpu_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The integer path on `torch._int_mm` on a CPU (oneDNN; fast with VNNI): the codes
        quantized in place as int8, one GEMM, one rescale by the per-row weight scales with
        a per-tensor activation scale folded in (built once per scale value)."""
        z = self._transformed_input(x, own=True)
        wt = self._int_mm_weights()
        mode = self.spec.act_mode
        if mode in ("static_tensor", "per_step_factorized"):
            sf = self._tensor_scale()
            codes = z.round_() if mode == "static_tensor" else z.div_(sf).round_()  # static: z = x̃ / s
            scale = self._cached(("int_mm_scale", sf), lambda: self.weight_scale[:, 0] * sf)
            # int32 × float32 promotes to float32 in the one op (no separate .float())
            return torch.mul(torch._int_mm(codes.clamp_(-8, 7).to(torch.int8), wt), scale)
        s = self.activation_scale(z)
        codes = z.div_(s).round_().clamp_(-8, 7).to(torch.int8)
        return torch.mul(torch._int_mm(codes, wt), self.weight_scale[:, 0]).mul_(s)

    def _backend(self, device: torch.device) -> str:
        """This layer's integer backend on `device`: int_gemm.pick_backend, with "triton"
        only where the fused kernels apply (one activation scale per tensor, a rotation in
        whole 64-blocks, codes in the pack's words) and have not failed to build."""
        if self.kernel_weights == "int4_bf16":
            return "int4_bf16"
        if self.kernel_weights == "int4_avx2":
            return "avx2"
        key = ("backend", device.type, self.backend, self.triton_failed)

        def pick() -> str:
            backend = int_gemm.pick_backend(device, self.backend)
            if backend == "triton" and not self._triton_capable():
                return "int_mm" if device.type == "cuda" else "exact"
            return backend
        return self._cached(key, pick)  # asked on every call: decided once per device and setting

    def _triton_capable(self) -> bool:
        rot, div = self._fused_input_rotation()
        return (not self.triton_failed and not self.codes_released
                and self.spec.act_mode in ("static_tensor", "per_step_factorized")
                and rot is not None and rot.tail is None and div is None)

    def _triton_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """The integer path as two fused Triton kernels (triton_kernels): rotate + quantize,
        then the int4 GEMM with the rescale (and the bias, without an output rotation) in
        its epilogue; small layers as one kernel doing both (triton_kernels.fuse_pays).
        None, and the layer unfused for good, when they fail to build."""
        def make():
            rot = self._fused_input_rotation()[0]
            perm = rot.perm if rot.perm is not None else torch.arange(self.in_features, device=rot.blocks.device)
            return (perm.to(torch.int32).contiguous(), rot.blocks.float().contiguous(),
                    self.weight_scale[:, 0].float().contiguous())
        perm, blocks, w_scale = self._cached("triton", make)
        s = self._tensor_scale()
        s_in = 1.0 if self.spec.act_mode == "static_tensor" else s  # static: folded into the blocks
        x2 = x.reshape(-1, self.in_features)
        bias = None if self.spec.out_rotation else self.bias
        # the output in the input's precision (one rounding, in the epilogue) unless an output
        # rotation still has to run on it in float32
        out_dtype = x.dtype if x.dtype in _HALF and not self.spec.out_rotation else torch.float32
        weights = triton_kernels.gemm_weights()  # a wrong setting is an error, not a kernel failure
        try:
            if triton_kernels.fuse_pays(x2.shape[0], self.in_features, self.out_features):
                return triton_kernels.rotate_quantize_gemm(x2, perm, blocks, s_in, self.weight_packed, w_scale, s,
                                                           bias, out_dtype=out_dtype)
            codes = triton_kernels.rotate_quantize(x2, perm, blocks, s_in)
            if weights == "int8":  # the trial: an int8 copy of the codes, built once
                w8 = self._cached("triton_int8", lambda: unpack_int4(self.weight_packed, self.in_features).contiguous())
                return triton_kernels.int8_gemm(codes, w8, w_scale, s, bias, out_dtype=out_dtype)
            return triton_kernels.int4_gemm(codes, self.weight_packed, w_scale, s, bias, out_dtype=out_dtype)
        except Exception as e:  # a compiler or driver refusing the kernels: never a dead node
            warnings.warn(f"Triton W4A4 kernels failed on {x.device} ({type(e).__name__}: {e}); "
                          "this layer runs the unfused integer path from now on", RuntimeWarning)
            self.triton_failed = True
            return None

    def _tensor_scale(self) -> float:
        """The one activation scale of a "static_tensor" or "per_step_factorized" layer in
        the current step context, as a Python float (read from the buffers once: a
        `.item()` per call costs as much as a small op)."""
        if self.spec.act_mode == "static_tensor":
            return self._cached("act_float", lambda: float(self.act_scale))
        row = step_row(current_step(), self.spec.steps)
        if row is None:  # no step context: the mean over steps, as activation_scale
            return self._cached("step_mean_float", lambda: float(self.act_step_scale.mean()))
        return self._cached("step_floats", lambda: self.act_step_scale.tolist())[row]

    def _integer_gemm(self, codes: torch.Tensor) -> torch.Tensor:
        """Σ q_x q_w · s_w for the backends that take codes (fbgemm and triton run whole
        forwards: _fbgemm_forward, _triton_forward)."""
        backend = self._backend(codes.device)
        w_scale = self.weight_scale[:, 0]
        if backend == "int4_bf16":
            return int_gemm.gemm_int4_bf16(codes, self._int4_weights()) * w_scale
        if backend == "int_mm":
            return int_gemm.gemm_int_mm(codes, self._int_mm_weights()) * w_scale
        return int_gemm.gemm_exact(codes, self.weight_codes()) * w_scale

    def _kernel_weights(self, key: str, make):
        """An integer kernel's int8 weights: cached under `key`, or rebuilt for this call
        only when `kernel_weights` is "per_call"."""
        return make() if self.kernel_weights == "per_call" else self._cached(key, make)

    def _kernel_row_scales(self) -> torch.Tensor:
        """The per-row weight scales a CPU kernel multiplies its integer sums by (float64),
        a static per-tensor activation scale folded in ("static_tensor": one multiply
        fewer per call)."""
        scale = self.weight_scale[:, 0].double()
        return scale * self.act_scale.double() if self.spec.act_mode == "static_tensor" else scale

    def _fbgemm_weights(self):
        """fbgemm's prepacked int8 weights (one byte per weight) and _kernel_row_scales."""
        return self._kernel_weights("fbgemm", lambda: int_gemm.prepack_fbgemm(
            self.weight_codes(), self._kernel_row_scales()))

    def _avx2_weights(self) -> "cpu_kernel.PackedWeights":
        """The AVX2 kernel's packed weights (int8, or int4 for kernel_weights "int4_avx2")
        and _kernel_row_scales (in float32)."""
        return cpu_kernel.pack_weights(self.weight_codes(), self._kernel_row_scales(),
                                       nibbles=self.kernel_weights == "int4_avx2")

    def _int4_weights(self) -> "int_gemm.Int4Weights":
        """The int4 codes in the CPU int4 kernel's layout (half a byte per weight), held."""
        return self._cached("int4", lambda: int_gemm.Int4Weights(self.weight_codes()))

    def _int_mm_weights(self) -> torch.Tensor:
        return self._kernel_weights("wt_i8", lambda: self.weight_codes().t().contiguous())

    def extra_repr(self) -> str:
        s = self.spec
        return (f"in={s.in_features}, out={s.out_features}, rot={s.rotation}"
                f"{'+out' if s.out_rotation else ''}, group={s.group_size}, act={s.act_mode}, "
                f"path={self.path}")


INPUT_SIDE_BUFFERS = ("input_perm", "input_rot_blocks", "input_rot_blocks_scale", "input_rot_tail",
                      "input_rot_tail_scale", "input_channel_div", "act_scale", "act_step_table",
                      "act_step_scale")
INPUT_SIDE_SPEC = ("in_features", "group_size", "rotation", "act_mode", "steps", "channel_div", "block",
                   "side", "rotation_storage", "act_dither")


class InputGroup:
    """Sibling layers that read one input (q/k/v, gate/up) run as one layer: one rotation,
    one activation quantization and one integer GEMM over their stacked weights (and their
    stacked output rotations and biases), each member taking its columns. At the shipped
    widths a rotation costs as much as the GEMM it feeds and every op has a fixed cost,
    so running three layers as one saves most of two layers' time.

    The quantizer gives the members identical input-side state (quantize.
    shared_input_groups); link_input_groups checks it. The first member called computes
    every member's output and keeps the others' for their own call with the very same
    input tensor (identity, not equality: the group never guesses); a call with another
    input, or a second call by one member, computes the group again (correct, only
    slower). Runs on the integer path only; the reference path stays per layer."""

    def __init__(self, members: list[QuantLinear]) -> None:
        lead = members[0]
        # one output rotation over the stacked rows when every member's is whole 64-blocks
        # (block-diagonal either way): the members' outputs are then plain column views
        whole = all(m.spec.out_rotation and getattr(m, "output_rot_tail", None) is None for m in members)
        self.per_member = not whole and any(m.spec.out_rotation for m in members)
        # no output rotation anywhere: the product's columns are the members' outputs
        self.direct = not any(m.spec.out_rotation for m in members)
        bias = not self.per_member and any(m.bias is not None for m in members)
        spec = LayerSpec(**{**lead.spec.to_dict(), "out_features": sum(m.out_features for m in members),
                            "bias": bias, "out_rotation": whole, "input_group": None})
        with torch.device(lead.weight_packed.device):
            fused = QuantLinear(spec, path=lead.path, backend=lead.backend)
        fused.weight_packed = torch.cat([m.weight_packed for m in members])
        fused.codes_released = any(m.codes_released for m in members)  # nothing to build from: a clear error
        fused.weight_scale = torch.cat([m.weight_scale for m in members])
        if bias:
            fused.bias = torch.cat([m.bias if m.bias is not None else torch.zeros_like(m.weight_scale[:, 0])
                                    for m in members])
        if whole:
            for name in ("output_rot_blocks", "output_rot_blocks_scale"):
                if getattr(lead, name, None) is not None:
                    setattr(fused, name, torch.cat([getattr(m, name) for m in members]))
        for name in INPUT_SIDE_BUFFERS:
            if getattr(lead, name, None) is not None:
                setattr(fused, name, getattr(lead, name))
        fused.kernel_weights = lead.kernel_weights
        self.sizes = tuple(m.out_features for m in members)
        # no output rotation: the AVX2 kernel writes each member's columns as its own tensor
        fused.avx2_split = self.sizes if self.direct else None
        fused.prepare(release_codes=True)  # its stacked codes go where its kernel holds weights
        self.layer, self.members = fused, members
        self.biases = [m.bias for m in members]  # the group is rebuilt when they are loaded again
        self._input: torch.Tensor | None = None
        self._pending: dict[int, torch.Tensor] = {}  # member -> its output, until it asks
        self._avx2: bool | None = None  # runs_on_avx2, decided on its first ask

    def output(self, member: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        """`member`'s output for input x (see the class docstring)."""
        key = id(member)
        if not (self._input is x and key in self._pending):
            if self.direct and self.layer._backend(x.device) == "avx2":
                self._pending = self._avx2_outputs(x)
            else:
                if self.per_member:  # output rotations with tails: each member restores its own
                    y, _ = self.layer._product(x)
                else:
                    y = self.layer.forward(x)  # not a submodule of the model: no hooks to run
                self._pending = {id(m): part for m, part in zip(self.members, y.split(self.sizes, dim=-1))}
            self._input = x
        y = self._pending.pop(key)
        if not self._pending:
            self._input = None
        return member._finish(y, x, False) if self.per_member else y

    def _avx2_outputs(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Every member's output for x from one AVX2 kernel call: the kernel writes each
        member's columns as its own contiguous tensor (the attention and MLP after it then
        read contiguous memory, as in float)."""
        lay = self.layer
        corr: tuple[torch.Tensor | None, ...] = (None,) * len(self.members)
        x_in = x
        if lay.spec.act_dither:  # one draw for the group: its members share one quantized input
            x_in, ck = lay._dither_offsets(x)
            corr = ck.split(self.sizes)
        parts = lay._avx2_forward(x_in)
        lead, reshape, dtype = x.shape[:-1], x.dim() != 2, x.dtype
        out = {}
        for m, p, b, c in zip(self.members, parts, self.biases, corr):
            if c is not None:
                p.sub_(c)
            if b is not None:
                p.add_(b)
            if reshape:
                p = p.view(*lead, p.shape[1])
            out[id(m)] = p if dtype is torch.float32 else p.to(dtype)
        return out

    def runs_on_avx2(self) -> bool:
        """Whether the group runs as one AVX2 kernel call writing its members' outputs
        (no output rotations; the fused layer's backend, fixed when it was built)."""
        if self._avx2 is None:
            self._avx2 = self.direct and self.layer._backend(torch.device("cpu")) == "avx2"
        return self._avx2

    def fast_output(self, member: QuantLinear, x: torch.Tensor) -> torch.Tensor | None:
        """output() for QuantLinear._avx2_fast; None when this group does not run on the
        AVX2 kernel, or the leader's backend changed since it was built (the general
        forward then rebuilds it)."""
        if not self.runs_on_avx2() or self.layer.backend != self.members[0].backend:
            return None
        return self.output(member, x)

def link_input_groups(model: nn.Module) -> int:
    """Give every QuantLinear of `model` whose spec names an input group its siblings
    (in model order); returns the number of groups. Raises ValueError when members of
    a group differ in their input-side state (a group must be one rotation, one
    quantization)."""
    groups: dict[str, list[QuantLinear]] = {}
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.siblings = None
            m._cache.pop("input_group", None)
            if m.spec.input_group is not None:
                groups.setdefault(m.spec.input_group, []).append(m)
    linked = 0
    for key, members in groups.items():
        if len(members) < 2:
            continue
        lead = members[0]
        for m in members[1:]:
            for f in INPUT_SIDE_SPEC:
                if getattr(m.spec, f) != getattr(lead.spec, f):
                    raise ValueError(f"input group {key!r}: members differ in {f}")
            for name in INPUT_SIDE_BUFFERS:
                a, b = getattr(lead, name, None), getattr(m, name, None)
                if (a is None) != (b is None) or (a is not None and (
                        a.device.type != "meta" and not torch.equal(a, b))):
                    raise ValueError(f"input group {key!r}: members differ in {name}")
        for m in members:
            m.siblings = members
        linked += 1
    return linked
