"""VLA model families in plain PyTorch. Imports nothing from ROS."""
