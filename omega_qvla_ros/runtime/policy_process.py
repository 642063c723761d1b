"""A Policy in its own process, for the node.

Why: on a worker thread of the node, inference and image preprocessing share the GIL
with every callback (tick, images, joints, diagnostics); a chunk is thousands of short
torch ops, each taking the GIL back. Measured on a 2-core CPU with the shipped W4A4 Pi0.5
pack and the node fed three 640x480 cameras (bench/node_inference.py): 45-47 ms per
chunk here against 60-64 ms on the node's thread (28 ms in a plain process), observation
-> chunk 90-103 against 168-220 ms. The node sends the decoded observation and gets the
chunk back over a socket (about 1 MB per 640x480 camera one way, a few kB back).

The child is `python -m omega_qvla_ros.runtime.policy_process` on one end of a socket
pair (not multiprocessing's spawn, which re-runs the caller's main module in the child):
it loads the pack itself (only the load arguments cross, as JSON), never imports rclpy,
ignores SIGINT (the node closes it on shutdown), and ends when the other end closes. The
messages are safetensors + JSON too (arrays as tensors, the rest in the metadata): no
pickle crosses, as nowhere in this package. A child that dies makes every later call raise,
with how it ended, so the node holds with that reason; it is not restarted behind the
node's back (loading takes seconds to minutes).
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np
import torch

from .preprocess import ObservationError, RawObservation
from .scheduler import ActionChunk


@dataclass
class _Meta:
    """What the node reads of a policy, sent back by the child once it has loaded."""

    joint_names: list[str]
    cameras: list[str]
    horizon: int
    recipe: str
    captures_graphs: bool
    mid_range_joints: np.ndarray


def _send(conn: Connection, fields: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    """One message: `arrays` as safetensors tensors, `fields` as JSON in its metadata."""
    import safetensors.numpy

    data = {k: np.ascontiguousarray(v) for k, v in (arrays or {}).items()}
    conn.send_bytes(safetensors.numpy.save(data, metadata={"fields": json.dumps(fields)}))


def _recv(conn: Connection) -> tuple[dict, dict[str, np.ndarray]]:
    import safetensors.numpy

    buf = conn.recv_bytes()
    arrays = safetensors.numpy.load(buf)
    n = int.from_bytes(buf[:8], "little")  # safetensors: the header's length, then the header (JSON)
    fields = json.loads(json.loads(buf[8:8 + n])["__metadata__"]["fields"])
    return fields, arrays


def _observation_message(raw: RawObservation, noise: torch.Tensor | None, num_steps: int | None,
                         control_dt: float) -> tuple[dict, dict]:
    arrays = {}
    for cam, img in raw.images.items():
        if not isinstance(img, np.ndarray):
            raise ObservationError(f"camera {cam}: image is {type(img).__name__}, not an array")
        arrays[f"image/{cam}"] = img
    arrays["joints"] = np.asarray(raw.joint_positions)
    if noise is not None:
        arrays["noise"] = noise.detach().cpu().numpy()
    fields = {"kind": "infer", "cameras": list(raw.images), "joint_names": list(raw.joint_names),
              "instruction": raw.instruction, "stamp": raw.stamp, "image_stamps": dict(raw.image_stamps),
              "num_steps": num_steps, "control_dt": control_dt}
    return fields, arrays


def _observation_from(fields: dict, arrays: dict) -> tuple[RawObservation, torch.Tensor | None]:
    raw = RawObservation({c: arrays[f"image/{c}"] for c in fields["cameras"]}, fields["joint_names"],
                         arrays["joints"], fields["instruction"], fields["stamp"], fields["image_stamps"])
    return raw, (torch.from_numpy(arrays["noise"]) if "noise" in arrays else None)


class InferenceProcessError(RuntimeError):
    """The inference process failed to start or is gone."""


def _serve(conn, from_pack_kwargs: dict) -> None:
    """The child: load, say ready (or why not), then answer calls until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .policy import Policy, mid_range_joints
    try:
        pol = Policy.from_pack(**from_pack_kwargs)
    except Exception as e:  # noqa: BLE001 - any load failure goes back to the node as one line
        _send(conn, {"kind": "error", "message": f"{type(e).__name__}: {e}"})
        return
    _send(conn, {"kind": "ready", "joint_names": list(pol.processor.joint_names), "cameras": list(pol.cameras),
                 "horizon": pol.horizon, "recipe": pol.recipe, "captures_graphs": pol.captures_graphs},
          {"mid_range_joints": mid_range_joints(pol.processor)})
    while True:
        try:
            fields, arrays = _recv(conn)
        except (EOFError, OSError):
            return
        if fields.get("kind") != "infer":
            return
        raw, noise = _observation_from(fields, arrays)
        pol.control_dt = fields["control_dt"]
        try:
            chunk = pol.infer(raw, noise=noise, num_steps=fields["num_steps"])
            _send(conn, {"kind": "ok", "stamp": chunk.stamp, "dt": chunk.dt, "inference_s": chunk.inference_s},
                  {"positions": chunk.positions})
            continue
        except ObservationError as e:
            reply = {"kind": "observation", "message": str(e)}
        except Exception as e:  # noqa: BLE001 - the node turns it into a held tick with this reason
            reply = {"kind": "error", "message": f"{type(e).__name__}: {e}"}
        _send(conn, reply)


class PolicyProcess:
    """Policy.from_pack(...) run in a child process, with the calls the node makes:
    infer, synthetic_observation, joint_names, cameras, horizon, recipe, control_dt,
    captures_graphs. Calls take turns (one child, one model); close() ends it."""

    def __init__(self, path: str, device: str = "auto", control_dt: float = 0.02,
                 kernel_weights: str | None = None, cuda_graphs: bool | None = None,
                 precision: str = "float32") -> None:
        ours, theirs = socket.socketpair()
        kwargs = dict(path=str(path), device=device, control_dt=control_dt, kernel_weights=kernel_weights,
                      cuda_graphs=cuda_graphs, precision=precision)
        self._lock = threading.Lock()
        self._proc = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno()), json.dumps(kwargs)],
                                      pass_fds=(theirs.fileno(),))
        theirs.close()
        self._conn = Connection(ours.detach())
        self.control_dt = control_dt
        fields, arrays = self._receive("loading the pack")
        if fields["kind"] != "ready":
            self.close()
            raise InferenceProcessError(fields["message"])
        self.meta = _Meta(fields["joint_names"], fields["cameras"], int(fields["horizon"]), fields["recipe"],
                          bool(fields["captures_graphs"]), arrays["mid_range_joints"])

    @property
    def pid(self) -> int:
        return self._proc.pid

    def is_alive(self) -> bool:
        return self._proc.poll() is None

    @property
    def exitcode(self) -> int | None:
        """None while it runs; negative: the signal that ended it."""
        return self._proc.poll()

    @property
    def joint_names(self) -> list[str]:
        return self.meta.joint_names

    @property
    def cameras(self) -> list[str]:
        return self.meta.cameras

    @property
    def horizon(self) -> int:
        return self.meta.horizon

    @property
    def recipe(self) -> str:
        return self.meta.recipe

    @property
    def captures_graphs(self) -> bool:
        return self.meta.captures_graphs

    def synthetic_observation(self, instruction: str = "", cameras: list[str] | None = None) -> RawObservation:
        from .policy import synthetic_observation
        return synthetic_observation(cameras or self.cameras, self.joint_names, self.meta.mid_range_joints,
                                     instruction)

    def infer(self, raw: RawObservation, noise: torch.Tensor | None = None,
              num_steps: int | None = None) -> ActionChunk:
        """As Policy.infer, in the child; raises ObservationError for a bad observation,
        InferenceProcessError once the child is gone, RuntimeError for its other errors."""
        message = _observation_message(raw, noise, num_steps, self.control_dt)
        with self._lock:
            try:
                _send(self._conn, *message)
            except (OSError, ValueError):
                raise InferenceProcessError(self._gone()) from None
            fields, arrays = self._receive("inference")
        if fields["kind"] == "ok":
            return ActionChunk(arrays["positions"], fields["stamp"], fields["dt"], fields["inference_s"])
        if fields["kind"] == "observation":
            raise ObservationError(fields["message"])
        raise RuntimeError(fields["message"])

    def _receive(self, doing: str):
        try:
            return _recv(self._conn)
        except (EOFError, OSError):
            raise InferenceProcessError(self._gone(doing)) from None

    def _wait(self, timeout: float) -> int | None:
        """The child's exit code once it has ended within `timeout`, else None."""
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _gone(self, doing: str = "inference") -> str:
        code = self._wait(1.0)
        how = "still running" if code is None else (f"killed by signal {-code}" if code < 0 else f"exit code {code}")
        return f"the inference process ended during {doing} ({how})"

    def close(self, timeout: float = 5.0) -> None:
        """Ask the child to stop; terminate it if it does not within `timeout`."""
        if self.is_alive():
            if self._lock.acquire(timeout=timeout):  # not in the middle of a call's send / receive
                try:
                    _send(self._conn, {"kind": "stop"})
                except (OSError, ValueError):
                    pass
                finally:
                    self._lock.release()
                self._wait(timeout)
            if self.is_alive():
                self._proc.terminate()
                if self._wait(timeout) is None:
                    self._proc.kill()
                    self._proc.wait()
        self._conn.close()


if __name__ == "__main__":  # the child: python -m omega_qvla_ros.runtime.policy_process FD KWARGS_JSON
    from omega_qvla_ros.runtime import policy_process  # one copy of the module, not a __main__ twin

    policy_process._serve(Connection(int(sys.argv[1])), json.loads(sys.argv[2]))
