"""Reference policies: the random row (the scripted expert runs inside the environment worker)."""
from __future__ import annotations

import time

import numpy as np


class RandomPolicy:
    """Uniform random actions in [-1, 1] through the same chunk path as a trained policy (the
    random reference row, and the harness-overhead benchmark)."""
    variant = "random"
    needs_history = False
    last_latency_ms = 0.0
    last_evals = 0

    def __init__(self, action_dim: int, action_horizon: int = 8, frame_stride: int = 8, seed: int = 0):
        self.action_dim, self.action_horizon, self.frame_stride = action_dim, action_horizon, frame_stride
        self.rng = np.random.default_rng(seed)

    def reset(self):
        pass

    def infer(self, obs, noise_seed=None):
        t0 = time.perf_counter()
        rng = self.rng if noise_seed is None else np.random.default_rng(noise_seed)
        out = rng.uniform(-1, 1, (self.action_horizon, self.action_dim)).astype(np.float32)
        self.last_latency_ms = (time.perf_counter() - t0) * 1000
        return out
