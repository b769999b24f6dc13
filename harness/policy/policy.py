"""Inference API: `load_policy(checkpoint)`, `policy.reset()`, `policy.infer(obs) -> actions`.

The policy runs its variant's procedure under an optimization level and reports its own
latency. DreamZero-style policies keep the observed frames across calls: after each executed
chunk the real frames replace the prediction in the context (observation injection).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from harness.policy import checkpoint
from harness.suites.base import Observation
from harness.model.wam import InferOptions


def smooth_actions(actions: np.ndarray, window: int = 7, order: int = 2) -> np.ndarray:
    """Upsample x2 (linear), Savitzky-Golay along time, take every other sample back.

    Chunk boundaries and sampling noise make jerky actions; the filter keeps low-order trends
    (a linear trend passes unchanged). Chunks too short for the window
    are returned as they are."""
    from scipy.signal import savgol_filter
    a = np.asarray(actions)
    n = len(a)
    if window % 2 == 0 or window <= order:
        raise ValueError(f"smoothing window {window} must be odd and larger than order {order}")
    if 2 * n - 1 < window:
        return a
    t = np.arange(n, dtype=np.float64)
    fine = np.linspace(0, n - 1, 2 * n - 1)
    up = np.stack([np.interp(fine, t, a[:, j]) for j in range(a.shape[1])], axis=1)
    return savgol_filter(up, window, order, axis=0, mode="interp")[::2].astype(a.dtype)


class Policy:
    def __init__(self, model, meta: dict, opts: InferOptions | None = None, level: str = "O1-kvcache",
                 smoothing: bool = False):
        self.model = model.eval()
        self.smoothing = smoothing   # Savitzky-Golay on each returned chunk (`smooth_actions`)
        self.meta = meta
        self.opts = opts or InferOptions()
        self.level = level
        v = model.v
        self.variant = v.name
        self.camera = meta["camera"]
        self.chunk = v.chunk
        self.action_horizon = v.inference.action_horizon
        self.procedure = v.inference.procedure
        self.last_latency_ms = 0.0   # wall time of the last `infer`, encoding to denormalized actions
        self.last_evals = 0          # network calls in it (effective denoising steps, DiT cache included)
        self.reset()

    @property
    def needs_history(self) -> bool:
        """Whether the evaluator must render frames at `frame_stride` cadence between calls."""
        return self.model.layout.needs_history

    @property
    def frame_stride(self) -> int:
        return self.chunk.frame_stride

    def reset(self) -> None:
        self._f0 = None
        self._blocks: list[torch.Tensor] = []

    def _encode(self, images: list[np.ndarray]) -> torch.Tensor:
        frames = torch.from_numpy(np.stack(images))[None]          # (1, T, H, W, 3)
        return self.model.codec.encode(frames)                      # (1, T, g², C)

    def _context(self, obs: Observation, cur: torch.Tensor):
        """Chunk-autoregressive context: anchor frame + the last K-1 observed blocks."""
        lf, K = self.chunk.latent_frames, self.chunk.chunks
        hist = [h[self.camera] for h in obs.history if self.camera in h]
        if self._f0 is None or len(hist) < lf:
            self._f0, self._blocks = cur[:, 0], []       # first call, or an incomplete chunk: restart
        else:
            self._blocks.append(self._encode(hist[-lf:]).flatten(1, 2))
        while len(self._blocks) > K - 1:                 # slide: the dropped block's last frame anchors
            g = self.model.tokens_per_frame
            self._f0 = self._blocks.pop(0)[:, -g:]
        return self._f0[:, None], list(self._blocks)

    @torch.no_grad()
    def infer(self, obs: Observation, noise_seed: int | None = None) -> np.ndarray:
        """Action chunk (H, action_dim) in the environment's units for the current observation."""
        if self.camera not in obs.images:
            raise KeyError(f"policy needs camera '{self.camera}', observation has {list(obs.images)}")
        t0 = time.perf_counter()
        cur = self._encode([obs.images[self.camera]])
        blocks = None
        if self.needs_history:
            cur, blocks = self._context(obs, cur)
        state = torch.from_numpy(np.array(obs.state, dtype=np.float32))[None]
        out = self.model.sample(cur, state, [obs.instruction], self.opts, noise_seed, blocks)
        actions = self.model.denorm_action(out["actions"])[0].float().numpy()
        if self.smoothing:
            actions = smooth_actions(actions)
        self.last_latency_ms = (time.perf_counter() - t0) * 1000
        self.last_evals = out["evals"]
        return actions


def load_policy(path: str | Path, opts: InferOptions | None = None, level: str = "O1-kvcache") -> Policy:
    sd, meta, _ = checkpoint.load(path)
    model = checkpoint.build_model(meta, sd)
    return Policy(model, meta, opts, level)
