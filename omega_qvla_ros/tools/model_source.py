"""Where the tools get their floating-point model from: an FP pack (the shipped default
under models/, or one `omega-qvla train --export` wrote), or `random:<family>:<size>`
for plumbing checks. A pack carries what the model was trained with — config, joint
normalisation and camera list — so every tool normalises as training did."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

SHIPPED = {"pi05": "pi05_small_aloha", "gr00t": "gr00t_small_aloha"}  # trained FP pack per family
DEFAULT_MODEL = SHIPPED["pi05"]
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
    if family not in SHIPPED:
        raise SystemExit(f"--family {family!r}: no shipped model; known: {sorted(SHIPPED)}")
    return os.fspath(default_model_dir(SHIPPED[family]))


@dataclass
class FPModel:
    model: object  # nn.Module in eval mode
    robot: object  # RobotSpec with the model's normalisation
    cameras: list[str]
    description: dict = field(default_factory=dict)  # family, size, source (for reports)
    size: str | None = None


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="FP model pack directory, or random:<family>:<size> (random init, plumbing "
                        f"checks only); default: the shipped models/{DEFAULT_MODEL}")
    p.add_argument("--seed", type=int, default=0, help="seed for random:… models and calibration")


def add_family_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=sorted(SHIPPED),
                   help="use this family's shipped model (" + ", ".join(f"models/{v}" for v in SHIPPED.values())
                        + ") instead of --model")


def load_fp_model(spec: str | None, seed: int = 0) -> FPModel:
    """Load the model named by `spec` (see add_model_args) on the CPU, in eval mode."""
    from omega_qvla_ros.models import build_model
    from omega_qvla_ros.runtime.robot import RobotSpec

    if spec and spec.startswith("random:"):
        parts = spec.split(":")
        if len(parts) != 3:
            raise SystemExit(f"--model {spec!r}: expected random:<family>:<size>")
        _, family, size = parts
        model = build_model(family, size, seed=seed).eval()
        robot = RobotSpec()
        return FPModel(model, robot, robot.cameras[: model.config.cameras],
                       {"family": family, "size": size, "source": f"random init (seed {seed})"}, size)
    from omega_qvla_ros.quant.pack import load_pack

    path = Path(spec) if spec else default_model_dir()
    if not (path / "manifest.json").exists():
        hint = "" if spec else " (the shipped default is missing: is this a complete checkout?)"
        raise SystemExit(f"no model pack at {path}{hint}")
    model, manifest = load_pack(path)
    if (manifest.get("recipe") or {}).get("name", "fp16") != "fp16":
        raise SystemExit(f"{path} is a {manifest['recipe']['name']} pack; tools start from an FP pack")
    model = model.float()
    extra = manifest.get("extra", {})
    robot = RobotSpec.from_dict(extra["robot"]) if "robot" in extra else RobotSpec()
    cams = list(extra.get("cameras") or robot.cameras[: model.config.cameras])
    info = manifest["model"]
    return FPModel(model, robot, cams, {"family": info["family"], "size": info.get("size"),
                                        "source": repo_relative(path)}, info.get("size"))
