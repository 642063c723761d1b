"""Thin rclpy glue around the runtime: the node, message conversions, QoS."""
