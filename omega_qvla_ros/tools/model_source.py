"""Where the tools get their floating-point model from: an FP pack (the shipped default
under models/, one `omega-qvla train --export` wrote, or an imported checkpoint), or
`random:<family>:<size>` for plumbing checks. A pack carries its processor — cameras,
image handling, prompt, tokenizer, normalisation — so every tool prepares observations
exactly as training did."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

def shipped_packs() -> dict[str, str]:
    """Trained FP pack under models/ per family (from the family registry)."""
    from omega_qvla_ros.models import families

    return {n: f.shipped for n, f in sorted(families().items()) if f.shipped}


DEFAULT_FAMILY = "pi05"
DEFAULT_MODEL = "pi05_small_aloha"  # the shipped default (the pi05 family's shipped pack)
REPO = Path(__file__).resolve().parents[2]  # the checkout (or site-packages when installed)


def repo_relative(path: str | os.PathLike) -> str:
    """`path` relative to this checkout when inside it (committed results and the README
    should not carry this machine's paths), else unchanged."""
    p = Path(path)
    if p.is_absolute() and p.is_relative_to(REPO):
        return os.fspath(p.relative_to(REPO))
    return os.fspath(path)


def default_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """A shipped FP pack: models/ of this checkout, else the installed share/."""
    here = REPO / "models" / name
    if here.is_dir():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("omega_qvla_ros")) / "models" / name
    except Exception:  # no ament index (plain pip install): share/ under the prefix
        import sys

        return Path(sys.prefix) / "share" / "omega_qvla_ros" / "models" / name


def model_spec(model: str | None, family: str | None) -> str | None:
    """--model wins; else --family names that family's shipped pack; else the default."""
    if model or not family:
        return model
    shipped = shipped_packs()
    if family not in shipped:
        raise SystemExit(f"--family {family!r}: no shipped model; known: {sorted(shipped)}")
    return os.fspath(default_model_dir(shipped[family]))


@dataclass
class FPModel:
    model: object  # nn.Module in eval mode
    processor: object  # models.processor.Processor
    robot: object  # RobotSpec: the joint limits (the processor's joints)
    description: dict = field(default_factory=dict)  # family, size, source (for reports)
    size: str | None = None
    manifest: dict = field(default_factory=dict)
    root: Path | None = None  # the pack folder (assets such as the tokenizer live there)

    @property
    def cameras(self) -> list[str]:
        return self.processor.cameras

    def policy(self, model=None, recipe: str = "fp16"):
        """A runtime Policy of this model (or of `model`, e.g. a quantized copy)."""
        from omega_qvla_ros.runtime.policy import Policy

        return Policy(model or self.model, self.processor, "cpu", robot=self.robot, recipe=recipe,
                      manifest=self.manifest)

    def pack_extras(self) -> dict:
        """save_pack keyword arguments that carry the processor (and its tokenizer file)
        and the robot limits into a pack derived from this model."""
        tok = self.processor.config.tokenizer
        assets = {tok: self.root / tok} if tok != "byte" and self.root is not None else {}
        return {"processor": self.processor.to_dict(), "assets": assets,
                "extra": {"robot": self.robot.to_dict(), "cameras": self.cameras, "fp_model": self.description}}


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="FP model pack directory, or random:<family>:<size> (random init, plumbing "
                        f"checks only); default: the shipped models/{DEFAULT_MODEL}")
    p.add_argument("--seed", type=int, default=0, help="seed for random:… models and calibration")


def add_family_arg(p: argparse.ArgumentParser) -> None:
    shipped = shipped_packs()
    p.add_argument("--family", choices=sorted(shipped),
                   help="use this family's shipped model (" + ", ".join(f"models/{v}" for v in shipped.values())
                        + ") instead of --model")


def load_fp_model(spec: str | None, seed: int = 0) -> FPModel:
    """Load the model named by `spec` (see add_model_args) on the CPU, in eval mode.
    A bad spec or pack ends the command with one line (SystemExit)."""
    from omega_qvla_ros.models import build_model
    from omega_qvla_ros.models.processor import legacy_processor_config, processor_for, processor_from_manifest
    from omega_qvla_ros.quant.pack import PackError, load_pack
    from omega_qvla_ros.runtime.policy import default_robot_for
    from omega_qvla_ros.runtime.robot import RobotSpec

    if spec and spec.startswith("random:"):
        parts = spec.split(":")
        if len(parts) != 3:
            raise SystemExit(f"--model {spec!r}: expected random:<family>:<size>")
        _, family, size = parts
        try:
            model = build_model(family, size, seed=seed).eval()
        except ValueError as e:
            raise SystemExit(f"--model {spec!r}: {e}") from None
        proc = processor_for(legacy_processor_config(model.config, {}, RobotSpec().to_dict()), model.config)
        return FPModel(model, proc, default_robot_for(proc),
                       {"family": family, "size": size, "source": f"random init (seed {seed})"}, size)
    path = Path(spec) if spec else default_model_dir()
    if not (path / "manifest.json").exists():
        hint = "" if spec else " (the shipped default is missing: is this a complete checkout?)"
        raise SystemExit(f"no model pack at {path}{hint}")
    try:
        model, manifest = load_pack(path)
        proc = processor_from_manifest(manifest, path, RobotSpec().to_dict(), model.config)
    except (PackError, ValueError, OSError) as e:
        raise SystemExit(f"{path}: {e}") from None
    if (manifest.get("recipe") or {}).get("name", "fp16") != "fp16":
        raise SystemExit(f"{path} is a {manifest['recipe']['name']} pack; tools start from an FP pack")
    model = model.float()
    info = manifest["model"]
    return FPModel(model, proc, default_robot_for(proc, manifest.get("extra")),
                   {"family": info["family"], "size": info.get("size"), "source": repo_relative(path)},
                   info.get("size"), manifest, path)
