"""Ω-QVLA quantization core: int4 math and packing, Hadamard, rotations, GPTQ,
activation scaling (dynamic / static / per-step), step context, QuantLinear with a
reference and an integer path, recipes, calibration and packs. Imports no ROS."""
from .context import current_step, denoising_step
from .pack import (PackChecksumError, PackDtypeError, PackError, PackFormatError,
                   PackMissingFileError, PackMissingTensorError, PackShapeError,
                   PackTruncatedError, PackVersionError, load_pack, read_manifest,
                   register_family, save_pack)
from .qlinear import LayerSpec, QuantLinear
from .quantize import quantize
from .recipes import RECIPES, Recipe, SideRecipe, get_recipe

__all__ = [
    "current_step", "denoising_step", "PackChecksumError", "PackDtypeError", "PackError",
    "PackFormatError", "PackMissingFileError", "PackMissingTensorError", "PackShapeError",
    "PackTruncatedError", "PackVersionError", "load_pack", "read_manifest", "register_family",
    "save_pack", "LayerSpec", "QuantLinear", "quantize", "RECIPES", "Recipe", "SideRecipe",
    "get_recipe",
]
