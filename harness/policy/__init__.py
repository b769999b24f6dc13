"""Policies: a checkpoint at an optimization level (`load_policy`), and the reference policies."""
from harness.policy.policy import Policy, load_policy

__all__ = ["Policy", "load_policy"]
