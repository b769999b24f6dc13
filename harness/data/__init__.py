"""Demonstration data: LeRobot v3.0 dataset I/O and the training window sampler."""
from harness.data.lerobot import Episode, LeRobotData, open_dataset, write_dataset

__all__ = ["Episode", "LeRobotData", "open_dataset", "write_dataset"]
