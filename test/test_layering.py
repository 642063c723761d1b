"""House rules: quant/ and models/ import no ROS; runtime/ imports no rclpy; no pickle."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "omega_qvla_ros"
ROS = ("rclpy", "sensor_msgs", "std_msgs", "trajectory_msgs", "diagnostic_msgs", "std_srvs",
       "builtin_interfaces", "rosgraph_msgs", "launch", "launch_ros", "cv_bridge")


def _imports(folder: str) -> set[tuple[str, str]]:
    out = set()
    for f in (PKG / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                out |= {(f.name, a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.add((f.name, node.module.split(".")[0]))
    return out


def test_core_and_models_import_no_ros():
    for folder in ("quant", "models"):
        bad = {(f, m) for f, m in _imports(folder) if m in ROS}
        assert not bad, (folder, bad)
    bad = {(f, m) for f, m in _imports("runtime") if m in ROS}
    assert not bad, bad


def test_no_pickle_loading_anywhere():
    for f in PKG.rglob("*.py"):
        text = f.read_text()
        banned_calls = ("import " + "pickle", "pickle" + ".load", "torch" + ".load(", "weights_only=" + "False")
        for banned in banned_calls:
            assert banned not in text, (f, banned)


def _project_imports(folder: str) -> set[tuple[str, str]]:
    """(file, sub-package of omega_qvla_ros) for every absolute import of the project."""
    out = set()
    for f in (PKG / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                parts = node.module.split(".")
                if parts[0] == "omega_qvla_ros" and len(parts) > 1:
                    out.add((f.name, parts[1]))
    return out


def test_layers_point_one_way():
    """quant/ knows no model family (nor anything above it); models/ knows no runtime,
    node, simulator or tools; runtime/ knows no node, simulator or tools."""
    allowed = {"quant": {"quant"}, "models": {"quant", "models"}, "runtime": {"quant", "models", "runtime"}}
    for folder, ok in allowed.items():
        bad = {(f, m) for f, m in _project_imports(folder) if m not in ok}
        assert not bad, (folder, bad)
