"""omega_qvla_ros: W4A4 Omega-QVLA quantized VLA policies on ROS 2.

Sub-packages: quant (quantization core, no ROS), models (VLA architectures, no
ROS), runtime (policy runtime, no rclpy), ros (thin rclpy glue), sim (simulator
episodes and bags), tools (the `omega-qvla` command line).
"""
__version__ = "0.1.0"
