"""Entry point of the `policy_node` executable (the rclpy node lands with the node issue)."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("omega_qvla_ros policy_node: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
