"""Keep DDS discovery on loopback for every rclpy process started on a dev/CI machine.

Without these settings Fast DDS multicasts discovery onto the external network.
Tests, tools and the demo call `apply_localhost_dds()` before importing rclpy; a
robot deployment does not (it uses its own network configuration).
"""
from __future__ import annotations

import os
import random
from typing import MutableMapping

LOCALHOST_ENV = {
    "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",  # Iron and newer
    "ROS_LOCALHOST_ONLY": "1",  # Humble; newer distros accept it silently
}


def apply_localhost_dds(
    env: MutableMapping[str, str] | None = None, domain_id: int | None = None
) -> MutableMapping[str, str]:
    """Set loopback-only discovery in `env` (default: os.environ).

    A random ROS_DOMAIN_ID (1..100) is chosen when none is set or given, so that
    parallel runs on one machine do not see each other.
    """
    env = os.environ if env is None else env
    env.update(LOCALHOST_ENV)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    elif not env.get("ROS_DOMAIN_ID"):
        env["ROS_DOMAIN_ID"] = str(random.randint(1, 100))
    return env


def is_localhost_dds(env: MutableMapping[str, str] | None = None) -> bool:
    """True when `env` confines DDS discovery to loopback."""
    env = os.environ if env is None else env
    return all(env.get(k) == v for k, v in LOCALHOST_ENV.items())
