"""Quantization recipes as data: which modules, which rotation, solver and scales.

A recipe has one `SideRecipe` per side of a VLA — the VLM backbone and the action
head (DiT / action expert) — each naming its modules by regular expressions on the
module's qualified name (re.search), so `quantize()` works on any nn.Module. The
recipes here carry no module names: the quantization core knows no model family.
`Recipe.with_scopes` gives a recipe its modules (each model family declares its own
scopes; `models.calibrate.quantize_model` applies them).

Which recipes execute as integer GEMMs: `omega_qvla` (the default) and `omega_qvla_int`
— per-output-channel weight scales and activation scales off the contraction axis.
All others carry 128-column weight groups and/or per-input-channel activation scales
and run on the reference path (dequantize, float matmul: the paper's simulation).

`omega_qvla` (integer-executable, the default), measured against the paper's recipe
(`omega_qvla_paper`, reference path) on the demo bag (action rel-MSE vs FP, 8 held-out
frames, same calibration): Pi0.5 small 0.0073 vs 0.0240, GR00T small 0.0054 vs 0.0087.
Its choices, each measured on both packs (Pi0.5 / GR00T):
- backbone activations: the paper code's static per-channel scale s (q0.999/7 of the
  rotated calibration inputs) is folded into the weights as s^α before GPTQ
  (x̃ / s^α · s^α W = x̃ W), leaving one static scale for the tensor, so the GEMM is
  integer. α = 0.75 (0.0073 / 0.0054) beat α = 1 (0.0081 / 0.0064) and 0.5 (0.0084 /
  0.0067); dynamic per-token scales gave 0.0063 / 0.0058.
- action head: GPTQ weights, not the paper's RTN (the paper found GPTQ hurt there;
  here it cut the error 2–3×: per-token backbone + RTN head 0.0143 / 0.0094); per-step
  scales factorized as a folded channel profile (geometric mean over steps, ^0.5) × one
  scale per step (profile exponents 0.25 / 0.75 / 1 measured worse or equal on GR00T).
- run-time cost (issue 17: W4A4 must be faster than FP32, also at the shipped widths,
  where a rotation of the input costs as much as the GEMM it feeds): layers that read
  one input (q/k/v, gate/up) share one rotation, built from their stacked weights, and
  one set of activation scales (`shared_input`), so they run as one rotation, one
  quantization and one GEMM; and the action head has no output-row rotation (its cost
  is 64/in of the layer's GEMM: half of it at the 128-wide expert). Measured on the demo
  bag (rel-MSE, 8 frames) and per chunk vs FP32 (1 thread, interleaved, ad hoc, fbgemm):
  per-layer rotations with output rotations 0.0073 / 0.0058 at 0.73× / 0.69× FP32's speed;
  shared inputs 0.0076 / 0.0062 at 0.77× / 0.79×; shared inputs without output rotations
  (this recipe) 0.0084 / 0.0061 at 0.99× / 0.96× (`bench policy`, 2 threads, torch._int_mm:
  0.84–0.89× / 0.90×). In closed loop (50 transfer-cube episodes, no recipe hands over)
  Pi0.5 reaches/lifts 25/17 vs 27/24 with output rotations, GR00T 2/1 vs 11/7 — within
  the spread over calibration draws (GR00T, other seeds: 13/12 and 6/4 vs 6/3 and 9/6).
  `omega_qvla_outrot` keeps the output rotations.

`omega_qvla_dither` (ablation, measured not helping): `omega_qvla` with subtractive dither
of the int4 activations (qlinear._dither_bank). Three quarters of W4A4's error are the same
for the same observation in every chunk, so a blending controller cannot average them;
dither redraws the rounding error on every call. On `models/pi05_small_aloha_cam_table`
(40 expert calibration observations, 80 of FP's own ensembled observations): action
rel-MSE 0.0086 for one chunk (0.0076 without dither), 0.0048 for the mean of four chunks
(0.0076: the same chunk four times) — the error does average — but in closed loop
(ensembled, 50 transfer-cube episodes, calibration draws 90000 / 90100) it hands over in 0
and 4 (touched 11 and 39) where `omega_qvla` does in 15 and 12. A lower action error on
FP's states did not mean more success here (nor did float activations in the first layers, a
mixed-precision ablation: 0 and 6 of 50; the model card).

`omega_qvla_paper` and its one-change ablations (`omega_qvla_noperstep`, `hadamard`,
`svd`): static per-input-channel backbone scales, q0.999/7 of the rotated calibration
inputs — what the paper's code runs and what its published numbers come from. The
paper's text says dynamic per-token; that variant is `omega_qvla_pertoken`. Static is
measured better or equal on the reference path — W4A4 output error on ×50–×100 outlier
channels 0.0038 vs 0.0435 (rtn 0.0398), MiniLM's real outliers 0.0190 vs 0.0247 (mean
over layers), Pi0.5 pack 0.024 vs 0.030. Per-token loses on spikes because U_b maps a
spike channel onto a dense vector that H_64 does not flatten, so the token's max sets a
coarse step for every channel.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

WEIGHT_SOLVERS = ("rtn", "gptq", "gptq_blocklocal")
DITHER_BANK = 16  # offsets per layer for the dithered recipe (a call draws one)
RECIPE_ACT_MODES = ("none", "dynamic", "static", "static_folded", "per_step", "per_step_mean",
                    "per_step_factorized")


@dataclass
class SideRecipe:
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    rotation: str = "none"
    out_rotation: bool = False
    weight_solver: str = "rtn"
    group_size: int | None = 128
    act_mode: str = "dynamic"
    smooth_alpha: float | None = None
    bits: int = 4
    damp: float = 0.01
    act_order: bool = False
    quantile: float = 0.999
    rotation_storage: str = "int8"  # int8 blocks + per-block scale, or "fp16"
    profile_alpha: float = 0.5  # per_step_factorized: share of the channel profile folded into W
    hessian_dtype: str = "float64"  # GPTQ Hessian algebra ("float32" for the published sizes)
    fold_alpha: float = 1.0  # static_folded: share of the static per-channel scale folded into W
    shared_input: bool = False  # layers reading one input (q/k/v, gate/up) share rotation and scales
    act_dither: int = 0  # subtractive dither of the int4 activations, bank size (0: off; qlinear._dither_bank)

    def __post_init__(self) -> None:
        if self.weight_solver not in WEIGHT_SOLVERS:
            raise ValueError(f"unknown weight solver {self.weight_solver!r}; choose from {WEIGHT_SOLVERS}")
        if self.act_mode not in RECIPE_ACT_MODES:
            raise ValueError(f"unknown activation mode {self.act_mode!r}; choose from {RECIPE_ACT_MODES}")
        if self.bits != 4:
            raise ValueError("only 4-bit weights and activations are implemented")
        if self.hessian_dtype not in ("float32", "float64"):
            raise ValueError(f"hessian_dtype must be float32 or float64, got {self.hessian_dtype!r}")

    def matches(self, name: str) -> bool:
        return any(re.search(p, name) for p in self.include) and not any(
            re.search(p, name) for p in self.exclude)


@dataclass
class Recipe:
    name: str
    backbone: SideRecipe | None
    action_head: SideRecipe | None
    description: str = ""

    def sides(self) -> list[tuple[str, SideRecipe]]:
        return [(k, v) for k, v in (("action_head", self.action_head), ("backbone", self.backbone))
                if v is not None]

    def side_of(self, name: str) -> tuple[str, SideRecipe] | None:
        """The side whose patterns match `name` (action head first), or None."""
        for side, sr in self.sides():
            if sr.matches(name):
                return side, sr
        return None

    @property
    def scoped(self) -> bool:
        """True when some side names the modules it quantizes."""
        return any(sr.include for _side, sr in self.sides())

    def with_scopes(self, backbone: list[str] | None = None,
                    action_head: list[str] | None = None) -> "Recipe":
        """The recipe applied to the modules these patterns name (per side)."""
        bb = self.backbone and dataclasses.replace(self.backbone, include=list(backbone or []))
        ah = self.action_head and dataclasses.replace(self.action_head, include=list(action_head or []))
        return dataclasses.replace(self, backbone=bb, action_head=ah)

    def replace_sides(self, **changes) -> "Recipe":
        """The recipe with `changes` (SideRecipe fields) applied to each side it has."""
        return dataclasses.replace(self, **{side: dataclasses.replace(sr, **changes) for side, sr in self.sides()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        def side(x):
            return None if x is None else SideRecipe(**x)
        return cls(name=d["name"], backbone=side(d.get("backbone")),
                   action_head=side(d.get("action_head")), description=d.get("description", ""))


def _bb(**kw) -> SideRecipe:
    return SideRecipe(**kw)


def _ah(**kw) -> SideRecipe:
    return SideRecipe(**kw)


def _omega(name: str, desc: str, rotation: str = "omega", out_rotation: bool = True,
           head_act: str = "per_step", group: int | None = 128, backbone_act: str = "static") -> Recipe:
    return Recipe(
        name,
        backbone=_bb(rotation=rotation, weight_solver="gptq", group_size=group, act_mode=backbone_act),
        action_head=_ah(rotation=rotation, out_rotation=out_rotation, weight_solver="rtn",
                        group_size=group, act_mode=head_act),
        description=desc,
    )


RECIPES: dict[str, Recipe] = {
    "fp16": Recipe("fp16", None, None, "reference: nothing quantized"),
    "rtn": Recipe("rtn", _bb(), _ah(), "W4A4 round-to-nearest, dynamic per-token activations"),
    "smoothquant": Recipe("smoothquant", _bb(smooth_alpha=0.5), _ah(smooth_alpha=0.5),
                          "SmoothQuant (α=0.5) channel migration, then W4A4 RTN"),
    "hadamard": _omega("hadamard", "Ω-QVLA pipeline with per-linear Hadamard blocks only "
                       "(QuaRot-like rotation ablation)", rotation="hadamard", out_rotation=False),
    "svd": _omega("svd", "Ω-QVLA pipeline with SVD block rotations only (U_b, no Hadamard)",
                  rotation="svd"),
    # the default: integer-executable (every quantized layer runs on int8 GEMM kernels)
    "omega_qvla": Recipe(
        "omega_qvla",
        backbone=_bb(rotation="omega", weight_solver="gptq", group_size=None, act_mode="static_folded",
                     fold_alpha=0.75, shared_input=True),
        action_head=_ah(rotation="omega", weight_solver="gptq", group_size=None,
                        act_mode="per_step_factorized", shared_input=True),
        description="Ω-QVLA, integer-executable: composite SVD·Hadamard input rotations, one per group of "
                    "layers reading one input (q/k/v, gate/up); GPTQ int4 weights per output channel; "
                    "backbone activations with the paper code's static per-channel scales folded into the "
                    "weights (α = 0.75) and one static scale left; action head with per-step scales "
                    "factorized into a folded channel profile × one scale per denoising step"),
    "omega_qvla_outrot": Recipe(
        "omega_qvla_outrot",
        backbone=_bb(rotation="omega", weight_solver="gptq", group_size=None, act_mode="static_folded",
                     fold_alpha=0.75, shared_input=True),
        action_head=_ah(rotation="omega", out_rotation=True, weight_solver="gptq", group_size=None,
                        act_mode="per_step_factorized", shared_input=True),
        description="ablation of omega_qvla: the action head's output-row rotations too (the paper's "
                    "composite rotation of both weight axes): lower action error, slower"),
    "omega_qvla_dynamic": Recipe(
        "omega_qvla_dynamic",
        backbone=_bb(rotation="omega", weight_solver="gptq", group_size=None, act_mode="dynamic",
                     shared_input=True),
        action_head=_ah(rotation="omega", weight_solver="gptq", group_size=None,
                        act_mode="per_step_factorized", shared_input=True),
        description="ablation of omega_qvla: dynamic per-token backbone activation scales instead of the "
                    "folded static ones (integer-executable too)"),
    "omega_qvla_paper": _omega("omega_qvla_paper", "the paper as its code runs it, on the reference "
                               "path: composite SVD·Hadamard rotation, GPTQ backbone with 128-column "
                               "groups and static per-channel activation scales, RTN action head with "
                               "output rotation and per-step per-channel tables"),
    "omega_qvla_pertoken": _omega("omega_qvla_pertoken", "the paper's text: as omega_qvla_paper with "
                                  "dynamic per-token backbone activations", backbone_act="dynamic"),
    "omega_qvla_noperstep": _omega("omega_qvla_noperstep", "ablation of omega_qvla_paper: per-step "
                                   "table replaced by its mean over steps", head_act="per_step_mean"),
    "omega_qvla_int": _omega("omega_qvla_int", "integer-executable Ω-QVLA: per-channel weight "
                             "scales, per-step factorized activation scales",
                             head_act="per_step_factorized", group=None, backbone_act="dynamic"),
}
# the default with one change (an ablation): the dither bank on both sides
RECIPES["omega_qvla_dither"] = dataclasses.replace(
    RECIPES["omega_qvla"].replace_sides(act_dither=DITHER_BANK), name="omega_qvla_dither",
    description="omega_qvla with subtractive dither of the int4 activations: each call quantizes its "
                "input shifted by one of a fixed bank of offsets (a uniform draw of half a code step "
                "either way per channel) and subtracts the offset's exact product, so the rounding "
                "error is redrawn on every call and the chunks a blending controller merges average "
                "it (the same integer GEMMs, one vector add and subtract more per layer)")


def get_recipe(name_or_recipe: "str | Recipe") -> Recipe:
    if isinstance(name_or_recipe, Recipe):
        return name_or_recipe
    try:
        return RECIPES[name_or_recipe]
    except KeyError:
        raise ValueError(f"unknown recipe {name_or_recipe!r}; choose from {sorted(RECIPES)}") from None
