"""Simulator episodes, the scripted teleop source and bag recording."""
