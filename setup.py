"""ament_python build of omega_qvla_ros.

Installs the Python package, the ament resource marker, package.xml and the
contents of launch/, config/ and models/ into share/omega_qvla_ros, and the
executables into lib/omega_qvla_ros so that `ros2 run omega_qvla_ros <exe>` works.
"""
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "omega_qvla_ros"
HERE = Path(__file__).resolve().parent


def tree(folder: str) -> list[tuple[str, list[str]]]:
    """data_files entries mirroring `folder` under share/<package>/<folder>."""
    out: dict[str, list[str]] = {}
    for path in sorted((HERE / folder).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            rel = path.relative_to(HERE)
            out.setdefault(str(Path("share") / PACKAGE / rel.parent), []).append(str(rel))
    return sorted(out.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, PACKAGE + ".*"]),
    package_data={PACKAGE: ["quant/csrc/*.c"]},  # built on first use (quant/cpu_kernel.py)
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        *tree("launch"),
        *tree("config"),
        *tree("models"),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="omega-qvla-ros maintainers",
    maintainer_email="maintainers@omega-qvla-ros.invalid",
    description="W4A4 Omega-QVLA quantized VLA policies for ROS 2 bimanual robots",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "policy_node = omega_qvla_ros.ros.policy_node:main",
            "omega-qvla = omega_qvla_ros.tools.cli:main",
        ],
    },
)
