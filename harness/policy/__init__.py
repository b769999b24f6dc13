"""Policies: a checkpoint at an optimization level on a device (`build_policy`), and the reference policies."""
from harness.policy.policy import Policy, build_policy, load_policy

__all__ = ["Policy", "build_policy", "load_policy"]
