"""Clean failure everywhere: every user mistake in the CLI is one line and a non-zero exit
(never a traceback, nothing written), a node that cannot load its pack logs one clear
error and exits 1, and every malformed pack gets its own PackError."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omega_qvla_ros.quant import pack as P
from omega_qvla_ros.tools.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
BAG = REPO / "test" / "data" / "demo_bag"
W4A4 = REPO / "models" / "pi05_small_aloha_w4a4"


def _one_line(capsys, code, want_code=None):
    err = capsys.readouterr().err
    assert code != 0 and (want_code is None or code == want_code), (code, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _bags(tmp_path: Path) -> dict[str, Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    meta = tmp_path / "bad_meta"
    shutil.copytree(BAG, meta)
    (meta / "metadata.yaml").write_text("rosbag2_bagfile_information: [unclosed\n")
    corrupt = tmp_path / "corrupt_data"
    shutil.copytree(BAG, corrupt)
    for f in corrupt.iterdir():
        if f.suffix in (".mcap", ".db3"):
            f.write_bytes(b"\0" * 64)
    return {"missing": tmp_path / "nope", "empty": empty, "metadata": meta, "data": corrupt}


@pytest.mark.parametrize("kind", ["missing", "empty", "metadata", "data"])
def test_replay_bad_bags_one_line_and_no_report(kind, tmp_path, capsys):
    bag = _bags(tmp_path)[kind]
    report = tmp_path / "report"
    code = cli(["replay", str(bag), "--compare", "fp16", "--report", str(report)])
    err = _one_line(capsys, code)
    assert str(bag.name) in err and not report.exists()


def test_replay_bag_without_the_models_camera(tmp_path, capsys):
    """The default model reads cam_high; a model reading a camera the bag lacks fails
    with the list of image topics the bag does have."""
    from omega_qvla_ros.models.processor import ProcessorConfig

    pack = tmp_path / "pack"
    shutil.copytree(REPO / "models" / "pi05_small_aloha", pack)
    m = json.loads((pack / "manifest.json").read_text())
    proc = ProcessorConfig.from_dict(m["processor"])
    proc.cameras = ["cam_front"]
    m["processor"] = proc.to_dict()
    (pack / "manifest.json").write_text(json.dumps(m))
    code = cli(["replay", str(BAG), "--model", str(pack), "--compare", "fp16", "--report", str(tmp_path / "r")])
    err = _one_line(capsys, code)
    assert "cam_front" in err and "/cam_high/" in err and not (tmp_path / "r").exists()


def _pack_copy(tmp_path: Path) -> Path:
    p = tmp_path / "pack"
    shutil.copytree(W4A4, p)
    return p


def _edit_manifest(p: Path, fn) -> None:
    m = json.loads((p / P.MANIFEST).read_text())
    fn(m)
    (p / P.MANIFEST).write_text(json.dumps(m))


BROKEN = {
    "no sha256": (lambda m: m["files"][P.WEIGHTS].pop("sha256"), P.PackFormatError, "needs 'bytes' and 'sha256'"),
    "no config": (lambda m: m["model"].pop("config"), P.PackFormatError, "'family' name and a 'config'"),
    "no model": (lambda m: m.pop("model"), P.PackFormatError, "lacks 'model'"),
    "no tensors": (lambda m: m.pop("tensors"), P.PackFormatError, "lacks 'tensors'"),
    "no files": (lambda m: m.pop("files"), P.PackFormatError, "lacks 'files'"),
    "tensor shape not a list": (lambda m: m["tensors"][next(iter(m["tensors"]))].update(shape="big"),
                                P.PackFormatError, "needs 'shape'"),
    "file outside the pack": (lambda m: m["files"].update({"../evil": {"bytes": 1, "sha256": "0"}}),
                              P.PackFormatError, "outside the pack folder"),
    "bad layer spec": (lambda m: m["layers"][next(iter(m["layers"]))].update(act_mode="telepathy"),
                       P.PackFormatError, "bad layer spec"),
    "bad family": (lambda m: m["model"].update(family="smolvla9"), P.PackFormatError, "unknown model family"),
    "bad config": (lambda m: m["model"]["config"].update(cameras="three", bogus=1), P.PackFormatError,
                   "does not build"),
    "version": (lambda m: m.update(format_version=99), P.PackVersionError, "version 99"),
    "format": (lambda m: m.update(format="zip"), P.PackFormatError, "not an omega-qvla-pack"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_manifests_get_their_own_pack_error(case, tmp_path):
    fn, err, msg = BROKEN[case]
    p = _pack_copy(tmp_path)
    _edit_manifest(p, fn)
    with pytest.raises(err, match=msg.replace("(", r"\(")):
        P.load_pack(p)


def test_pickle_renamed_to_safetensors_is_a_pack_error(tmp_path, capsys):
    p = _pack_copy(tmp_path)
    fake = p / P.WEIGHTS
    fake.write_bytes(b"\x80\x04\x95" + b"\0" * 100)  # a pickle header, not safetensors
    import hashlib
    _edit_manifest(p, lambda m: m["files"][P.WEIGHTS].update(bytes=fake.stat().st_size,
                                                              sha256=hashlib.sha256(fake.read_bytes()).hexdigest()))
    with pytest.raises(P.PackFormatError, match="not a safetensors file"):
        P.load_pack(p)
    code = cli(["quantize", "--model", str(p), "--recipe", "rtn", "--out", str(tmp_path / "o")])
    _one_line(capsys, code)


def test_bad_processor_in_a_pack(tmp_path):
    from omega_qvla_ros.runtime.policy import Policy

    p = _pack_copy(tmp_path)
    _edit_manifest(p, lambda m: m["processor"].update(prompt="sonnet"))
    with pytest.raises(P.PackFormatError, match="bad processor"):
        Policy.from_pack(p, "cpu")


@pytest.mark.parametrize("args,msg", [
    (["import-checkpoint", "/nonexistent/ckpt"], "no such file or folder"),
    (["import-checkpoint", str(BAG)], "no model.safetensors"),
    (["memory", "--family", "pi05", "--size", "full", "--recipe", "omega_qvla"], None),
    (["quantize", "--model", "random:pi05", "--out", "/tmp/x"], "expected random:<family>:<size>"),
    (["quantize", "--model", "random:pi05:huge", "--out", "/tmp/x"], "has no size 'huge'"),
    (["quantize", "--model", "/nonexistent", "--out", "/tmp/x"], "no model pack"),
    (["quantize", "--calib", "/nonexistent/bag", "--out", "/tmp/x"], "no such bag"),
])
def test_cli_user_errors_are_one_line(args, msg, capsys, tmp_path):
    code = cli(args + (["--json"] if args[0] == "memory" else []))
    if msg is None:
        assert code == 0
        return
    err = _one_line(capsys, code)
    assert msg in err, err


def test_import_checkpoint_errors(tmp_path, capsys):
    src = REPO / "test" / "data" / "lerobot_pi05_tiny"
    ck = tmp_path / "ck"
    shutil.copytree(src, ck)
    (ck / "tokenizer.json").unlink()
    assert cli(["import-checkpoint", str(ck), "--out", str(tmp_path / "p")]) == 2
    err = _one_line(capsys, 2)
    assert "--tokenizer PATH" in err and "nothing is downloaded" in err and not (tmp_path / "p").exists()
    (ck / "model.safetensors").write_bytes(b"garbage" * 10)
    assert cli(["import-checkpoint", str(ck), "--tokenizer", str(src / "tokenizer.json")]) == 2
    assert "not a readable safetensors file" in _one_line(capsys, 2)
    shutil.copytree(src, tmp_path / "ck2")
    (tmp_path / "ck2" / "policy_preprocessor.json").write_text("{")
    assert cli(["import-checkpoint", str(tmp_path / "ck2")]) == 2
    assert "not valid JSON" in _one_line(capsys, 2)


def test_node_that_cannot_load_its_pack_exits_with_one_error(tmp_path):
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "omega_qvla_ros.ros.policy_node", "--ros-args",
                        "-p", f"pack_path:={tmp_path / 'missing'}"], capture_output=True, text=True,
                       timeout=120, env=env, cwd=REPO)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out and "cannot start" in out and "manifest.json" in out
    lines = [ln for ln in out.splitlines() if "ERROR" in ln or "Error" in ln]
    assert len(lines) == 1, out
