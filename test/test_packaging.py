"""Packaging: colcon builds the repo as an ament_python package into a temp workspace."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".venv", ".venv-*", ".git", "build", "install", "log", "__pycache__",
                                "*.egg-info", ".pytest_cache", ".scratch", ".gl", ".whl")


def test_package_xml_format3():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "omega_qvla_ros"
    deps = {e.text for e in root.findall("exec_depend")}
    for need in ["rclpy", "sensor_msgs", "std_msgs", "trajectory_msgs", "diagnostic_msgs",
                 "std_srvs", "launch", "launch_ros"]:
        assert need in deps, need
    assert root.find("export/build_type").text == "ament_python"


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory):
    colcon = Path(sys.executable).with_name("colcon")
    if not colcon.exists():
        pytest.fail(f"colcon is not installed next to {sys.executable}; run `make setup`")
    ws = tmp_path_factory.mktemp("ws")
    shutil.copytree(REPO, ws / "src" / "omega_qvla_ros", ignore=IGNORE)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    proc = subprocess.run(
        [str(colcon), "--log-base", str(ws / "log"), "build", "--base-paths", str(ws / "src"),
         "--build-base", str(ws / "build"), "--install-base", str(ws / "install"),
         "--event-handlers", "console_direct-"],
        cwd=ws, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return ws / "install" / "omega_qvla_ros"


def test_colcon_install_space(colcon_install):
    share = colcon_install / "share" / "omega_qvla_ros"
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "omega_qvla.launch.py").is_file()
    assert (share / "config" / "aloha_bimanual.yaml").is_file()
    for f in (REPO / "models").rglob("*"):
        if f.is_file():
            assert (share / "models" / f.relative_to(REPO / "models")).is_file(), f
    marker = colcon_install / "share" / "ament_index" / "resource_index" / "packages"
    assert (marker / "omega_qvla_ros").is_file()
    lib = colcon_install / "lib" / "omega_qvla_ros"
    for exe in ["policy_node", "omega-qvla"]:
        assert (lib / exe).is_file() and os.access(lib / exe, os.X_OK), exe
    # the installed package is importable from the install space
    site = list(colcon_install.glob("lib/python3*/site-packages/omega_qvla_ros/__init__.py"))
    assert site, "python package missing from the install space"


def test_installed_cli_help(colcon_install):
    site = next(colcon_install.glob("lib/python3*/site-packages"))
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, str(colcon_install / "lib/omega_qvla_ros/omega-qvla"),
                          "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "usage: omega-qvla" in out.stdout


def test_launch_file_parses_and_declares_arguments():
    tree = ast.parse((REPO / "launch" / "omega_qvla.launch.py").read_text())
    declared = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"
    }
    assert {"pack_path", "config_file", "mode", "dry_run", "use_sim_time", "namespace"} <= declared


def test_shipped_packs_verify_and_the_launch_default_is_one():
    """models/ ships the FP16 default and its W4A4 pack; both pass the full pack check
    (sha256, tensor names, shapes, dtypes), carry the training normalisation, and the
    launch file's default pack_path names the W4A4 one."""
    from omega_qvla_ros.quant.pack import load_pack

    src = (REPO / "launch" / "omega_qvla.launch.py").read_text()
    assert '"models", "pi05_small_aloha_w4a4"' in src
    fp, fp_man = load_pack(REPO / "models" / "pi05_small_aloha")
    q, q_man = load_pack(REPO / "models" / "pi05_small_aloha_w4a4")
    assert fp_man["recipe"]["name"] == "fp16" and q_man["recipe"]["name"] == "omega_qvla"
    assert q_man["processor"] == fp_man["processor"]  # the training normalisation, cameras, prompt
    assert q_man["processor"]["cameras"] == ["cam_high"]
    assert len(q_man["layers"]) == 42  # 3 trunk + 3 expert layers × 7 linears
    assert all(s["act_mode"] in ("static_tensor", "per_step_factorized") and s["group_size"] is None
               for s in q_man["layers"].values())  # integer-executable: every layer on int8 kernels
    # five small packs (four FP16 policies of 7-10 MB, one W4A4 pack): a
    # budget that catches an FP32 pack or a dataset committed by mistake
    size = sum(f.stat().st_size for f in (REPO / "models").rglob("*") if f.is_file())
    assert size < 48 * 2**20


def test_shipped_gr00t_pack_is_what_eval_family_gr00t_loads():
    """models/gr00t_small_aloha: a trained FP16 GR00T-style pack with its model card, the
    one `--family gr00t` names, started from the Pi0.5 pack's (frozen) vision tower."""
    from omega_qvla_ros.quant.pack import load_pack
    from omega_qvla_ros.tools.model_source import model_spec

    path = Path(model_spec(None, "gr00t"))
    assert path == REPO / "models" / "gr00t_small_aloha" and (path / "MODEL_CARD.md").is_file()
    model, man = load_pack(path)
    assert man["model"]["family"] == "gr00t" and man["recipe"]["name"] == "fp16"
    assert man["extra"]["cameras"] == ["cam_high"] and model.config.num_steps == 4
    training = man["extra"]["training"]
    assert training["steps"] >= 2000 and training["data"]["vision"]["frozen_parameters"] > 0
    assert training["data"]["vision"]["init_from"].endswith("pi05_small_aloha")
    assert model_spec("some/pack", "gr00t") == "some/pack"  # --model wins


def test_shipped_table_camera_pack_is_the_default_fine_tuned_on_cam_table():
    """models/pi05_small_aloha_cam_table: the default Pi0.5 pack fine-tuned on the
    simulator's narrower top camera; it verifies, reads `cam_table` (a camera the simulator
    mounts) and keeps the default's joint normalisation."""
    from omega_qvla_ros.quant.pack import load_pack
    from omega_qvla_ros.sim.aloha import CAMERAS

    _, base = load_pack(REPO / "models" / "pi05_small_aloha")
    model, man = load_pack(REPO / "models" / "pi05_small_aloha_cam_table")
    assert (REPO / "models" / "pi05_small_aloha_cam_table" / "MODEL_CARD.md").is_file()
    assert man["model"]["family"] == "pi05" and man["recipe"]["name"] == "fp16"
    assert man["processor"]["cameras"] == man["extra"]["cameras"] == ["cam_table"] and "cam_table" in CAMERAS
    assert man["processor"]["state_norm"] == base["processor"]["state_norm"]
    training = man["extra"]["training"]
    assert training["steps"] == 3000 and "--init-from models/pi05_small_aloha " in training["commands"][0][1]


def test_shipped_gr00t_table_camera_pack_is_the_gr00t_model_fine_tuned_on_cam_table():
    """models/gr00t_small_aloha_cam_table: the GR00T pack fine-tuned on `cam_table` with the
    vision tower of the Pi0.5 cam_table pack, frozen; it verifies, keeps the GR00T pack's
    joint normalisation and records where its weights came from."""
    from omega_qvla_ros.quant.pack import load_pack

    _, base = load_pack(REPO / "models" / "gr00t_small_aloha")
    model, man = load_pack(REPO / "models" / "gr00t_small_aloha_cam_table")
    assert (REPO / "models" / "gr00t_small_aloha_cam_table" / "MODEL_CARD.md").is_file()
    assert man["model"]["family"] == "gr00t" and man["recipe"]["name"] == "fp16" and model.config.num_steps == 4
    assert man["processor"]["cameras"] == man["extra"]["cameras"] == ["cam_table"]
    assert man["processor"]["state_norm"] == base["processor"]["state_norm"]
    training = man["extra"]["training"]
    vision = training["data"]["vision"]
    assert training["steps"] == 3000 and vision["frozen_parameters"] > 0
    assert vision["init_from"].endswith("pi05_small_aloha_cam_table")
    assert vision["init_from_pack"].endswith("gr00t_small_aloha")


def test_a_fresh_process_loads_a_pack_without_importing_the_models_first():
    """The model families register on import of omega_qvla_ros.models; load_pack must
    not depend on someone having imported it (a node or tool that loads a pack first)."""
    code = ("import sys; from omega_qvla_ros.quant.pack import load_pack; "
            "assert 'omega_qvla_ros.models' not in sys.modules; "
            "m, man = load_pack(sys.argv[1]); print(type(m).__name__)")
    pack = Path(__file__).resolve().parents[1] / "models" / "pi05_small_aloha"
    out = subprocess.run([sys.executable, "-c", code, str(pack)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "Pi05Model"
