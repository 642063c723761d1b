"""A Policy in its own process, for the node.

Why: on a worker thread of the node, inference and image preprocessing share the GIL
with every callback (tick, images, joints, diagnostics); a chunk is thousands of short
torch ops, each taking the GIL back. Measured on a 2-core CPU with the shipped W4A4 Pi0.5
pack and the node fed three 640x480 cameras (bench/node_inference.py): 45 ms per chunk
here against 64 ms on the node's thread (28 ms in a plain process), observation -> chunk
90 against 220 ms. The node sends the decoded observation and gets the chunk back over a
pipe (about 1 MB per 640x480 camera one way, a few kB back).

The child is `python -m omega_qvla_ros.runtime.policy_process` on one end of a socket
pair (not multiprocessing's spawn, which re-runs the caller's main module in the child):
it loads the pack itself (only the load arguments cross, as JSON), never imports rclpy,
ignores SIGINT (the node closes it on shutdown), and ends when the other end closes. The
pair carries pickles between this process and its own child only; the model itself loads
from safetensors + JSON as everywhere. A child that dies makes every later call raise,
with how it ended, so the node holds with that reason; it is not restarted behind the
node's back (loading takes seconds to minutes).
"""
from __future__ import annotations

import json
import pickle
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
    device: str


def _send(conn: Connection, obj) -> None:
    """Plain pickle (tensors by value): multiprocessing's own pickler would hand tensors
    over as shared-memory handles that only a multiprocessing child can open."""
    conn.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection):
    return pickle.loads(conn.recv_bytes())


class InferenceProcessError(RuntimeError):
    """The inference process failed to start or is gone."""


def _serve(conn, from_pack_kwargs: dict) -> None:
    """The child: load, say ready (or why not), then answer calls until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .policy import Policy, mid_range_joints
    try:
        pol = Policy.from_pack(**from_pack_kwargs)
    except Exception as e:  # noqa: BLE001 - any load failure goes back to the node as one line
        _send(conn, ("error", f"{type(e).__name__}: {e}"))
        return
    _send(conn, ("ready", _Meta(list(pol.processor.joint_names), list(pol.cameras), pol.horizon, pol.recipe,
                              pol.captures_graphs, mid_range_joints(pol.processor), str(pol.device))))
    while True:
        try:
            msg = _recv(conn)
        except (EOFError, OSError):
            return
        if msg is None:
            return
        raw, noise, num_steps, control_dt = msg
        pol.control_dt = control_dt
        try:
            reply = ("ok", pol.infer(raw, noise=noise, num_steps=num_steps))
        except ObservationError as e:
            reply = ("observation", str(e))
        except Exception as e:  # noqa: BLE001 - the node turns it into a held tick with this reason
            reply = ("error", f"{type(e).__name__}: {e}")
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
        kind, value = self._receive("loading the pack")
        if kind != "ready":
            self.close()
            raise InferenceProcessError(value)
        self.meta: _Meta = value

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
        with self._lock:
            try:
                _send(self._conn, (raw, noise, num_steps, self.control_dt))
            except (OSError, ValueError):
                raise InferenceProcessError(self._gone()) from None
            kind, value = self._receive("inference")
        if kind == "ok":
            return value
        if kind == "observation":
            raise ObservationError(value)
        raise RuntimeError(value)

    def _receive(self, doing: str):
        try:
            return _recv(self._conn)
        except (EOFError, OSError):
            raise InferenceProcessError(self._gone(doing)) from None

    def _gone(self, doing: str = "inference") -> str:
        try:
            code = self._proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            code = None
        how = "still running" if code is None else (f"killed by signal {-code}" if code < 0 else f"exit code {code}")
        return f"the inference process ended during {doing} ({how})"

    def close(self, timeout: float = 5.0) -> None:
        """Ask the child to stop; terminate it if it does not within `timeout`."""
        if self.is_alive():
            if self._lock.acquire(timeout=timeout):  # not in the middle of a call's send / receive
                try:
                    _send(self._conn, None)
                except (OSError, ValueError):
                    pass
                finally:
                    self._lock.release()
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            if self.is_alive():
                self._proc.terminate()
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
        self._conn.close()


if __name__ == "__main__":  # the child: python -m omega_qvla_ros.runtime.policy_process FD KWARGS_JSON
    from omega_qvla_ros.runtime import policy_process  # its classes pickle by this name, not __main__'s

    policy_process._serve(Connection(int(sys.argv[1])), json.loads(sys.argv[2]))
