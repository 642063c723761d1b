"""Denoising-step context: the sampler says which step runs; quantized layers read it.

A context variable (not a global) so that concurrent inferences on different threads
do not see each other's step. Layers that find no step use their step-mean scales.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

_STEP: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "omega_qvla_denoising_step", default=None)


@contextlib.contextmanager
def denoising_step(index: int, total: int) -> Iterator[None]:
    """Run the body as denoising step `index` of `total`."""
    if not 0 <= index < total:
        raise ValueError(f"step {index} outside [0, {total})")
    token = _STEP.set((index, total))
    try:
        yield
    finally:
        _STEP.reset(token)


def current_step() -> tuple[int, int] | None:
    """(index, total) of the running denoising step, or None outside the loop."""
    return _STEP.get()


def step_row(step: tuple[int, int] | None, table_steps: int) -> int | None:
    """Row of a [table_steps, …] table for `step`; None → caller uses the step mean.

    When the sampler runs a different number of steps than calibration saw, the row
    is the calibrated step nearest in denoising progress (index / total).
    """
    if step is None:
        return None
    index, total = step
    if total == table_steps:
        return index
    if total <= 1 or table_steps <= 1:
        return 0
    return min(table_steps - 1, round(index * (table_steps - 1) / (total - 1)))
