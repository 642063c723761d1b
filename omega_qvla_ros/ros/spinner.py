"""Spin an rclpy executor on a background thread that can be stopped cleanly.

`threading.Thread(target=ex.spin)` followed by `ex.shutdown()` races the executor's
teardown twice over: the spinning thread may still be dispatching callbacks, and a
MultiThreadedExecutor's pool may still hold callbacks it was handed. rclpy's
`Executor.shutdown` (Kilted) destroys the executor's guard condition before its pool has
run them, and each such callback then fails on `gc.trigger()` into a task nobody awaits
("The following exception was never retrieved: cannot use Destroyable because
destruction was requested"). Here the thread runs `spin_once` in a loop until a stop
event is set; `stop()` joins it, lets the pool run what it was handed, and only then shuts
the executor down.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from rclpy.executors import Executor


def shutdown_executor(executor: Executor, timeout_s: float = 2.0) -> None:
    """Shut down an executor that no thread is spinning any more: a MultiThreadedExecutor's
    pool (`_executor` from Humble to Kilted) first runs the callbacks it was handed (short,
    by the node's design) while the guard condition they trigger still exists. They are run,
    not cancelled: each is a coroutine already created, and a cancelled one is reported as
    "never awaited". Shutting a pool down twice is a no-op."""
    pool = getattr(executor, "_executor", None)
    if isinstance(pool, ThreadPoolExecutor):
        pool.shutdown(wait=True)
    executor.shutdown(timeout_sec=timeout_s)


class BackgroundSpin:
    """`start()` spins `executor` on a daemon thread; `stop()` ends the loop, joins the
    thread, then shuts the executor down (`shutdown_executor`). The loop also ends, quietly,
    when the context is shut down under it (rclpy's signal handler does that on Ctrl-C)."""

    def __init__(self, executor: Executor, poll_s: float = 0.05) -> None:
        self.executor = executor
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="rclpy-spin", daemon=True)

    def _spin(self) -> None:
        while not self._stop.is_set() and self.executor.context.ok():
            try:
                self.executor.spin_once(timeout_sec=self.poll_s)
            except Exception:  # noqa: BLE001 - rclpy's errors (ExternalShutdownException among them)
                if self.executor.context.ok():  # once the context shut down under us
                    raise
                return

    def start(self) -> "BackgroundSpin":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """Idempotent. Nodes may be destroyed once this returns."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s + self.poll_s)
        shutdown_executor(self.executor, timeout_s)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()
