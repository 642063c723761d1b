"""Test-wide settings: DDS stays on loopback, in a random domain per test run.

This runs before any test module imports rclpy, so no rclpy process started by the
tests (in-process or as a subprocess inheriting the environment) can multicast onto
the network.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omega_qvla_ros.ros.dds import apply_localhost_dds  # noqa: E402

apply_localhost_dds()
os.environ.setdefault("PYTHONUNBUFFERED", "1")
# Triton kernels run through Triton's interpreter on machines without a CUDA GPU; it must
# be on before triton is first imported (its own library functions are wrapped then).
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
