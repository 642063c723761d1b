"""Omega-QVLA quantization core. Imports nothing from ROS."""
