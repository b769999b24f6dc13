"""Inference API: `build_policy(checkpoint, level)`, `policy.reset()`, `policy.infer(obs) -> actions`.

`build_policy` is the one way every command (eval, run, sweep, nightly, bench) builds a policy
at an optimization level: the level's model transforms, its per-call options and the device are
fixed at construction, and `policy.config` is what an evaluation cell records, the same whichever
command made it. The policy runs its variant's procedure and reports its own latency, synchronised
on its device. DreamZero-style policies keep the observed frames across calls: after each executed
chunk the real frames replace the prediction in the context (observation injection).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from harness.config import OptLevelSpec, Registry, to_dict
from harness.errors import UserError
from harness.policy import checkpoint, levels
from harness.suites.base import Observation


def resolve_device(name: str | None = None) -> torch.device:
    """`--device`: None means CUDA where present, else the CPU; a CUDA device that is not there
    is a clear error, not a traceback at the first call."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible here; use --device cpu")
    return dev


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
    """A model at one optimization level on one device, configured once, here.

    `config` is what an evaluation cell records and hashes (variant, level, smoothing, horizon,
    device); `level_info` what building it did (compile mode and time), recorded apart."""

    def __init__(self, model, meta: dict, level: OptLevelSpec, *, device: str | torch.device | None = "cpu",
                 smoothing: bool = False, action_horizon: int | None = None, warm: bool = True):
        v = model.v
        why = levels.not_applicable(level, v)
        if why:
            raise UserError(f"level {level.name} does not apply to {v.name}: {why}")
        self.device = resolve_device(device) if not isinstance(device, torch.device) else device
        levels.check(level, self.device)
        self.model = model.eval().to(self.device)
        self.meta = meta
        self.spec = level
        self.level = level.name
        self.smoothing = smoothing   # Savitzky-Golay on each returned chunk (`smooth_actions`)
        self.variant = v.name
        self.camera = meta["camera"]
        self.chunk = v.chunk
        self.action_horizon = v.inference.action_horizon if action_horizon is None else int(action_horizon)
        if not 1 <= self.action_horizon <= self.chunk.actions:
            raise UserError(f"action horizon {self.action_horizon}: must be 1..{self.chunk.actions} (the chunk length)")
        self.procedure = v.inference.procedure
        self.last_latency_ms = 0.0   # wall time of the last `infer`, encoding to denormalized actions
        self.last_evals = 0          # network calls in it (effective denoising steps, DiT cache included)
        self.opts, self.level_info = levels.prepare(self.model, level, warm)
        self.reset()

    @property
    def config(self) -> dict:
        return {"variant": to_dict(self.model.v), "level": to_dict(self.spec), "smoothing": self.smoothing,
                "action_horizon": self.action_horizon, "device": self.device.type}

    @property
    def needs_history(self) -> bool:
        """Whether the evaluator must render frames at `frame_stride` cadence between calls."""
        return self.procedure == "chunk_autoregressive"

    @property
    def frame_stride(self) -> int:
        return self.chunk.frame_stride

    def reset(self) -> None:
        self._f0 = None
        self._blocks: list[torch.Tensor] = []

    def _encode(self, images: list[np.ndarray]) -> torch.Tensor:
        frames = torch.from_numpy(np.stack(images))[None].to(self.device)   # (1, T, H, W, 3)
        return self.model.codec.encode(frames)                               # (1, T, g², C)

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

    def _inputs(self, obs: Observation):
        """(current/anchor latents, state, observed blocks) on the policy's device."""
        if self.camera not in obs.images:
            raise KeyError(f"policy needs camera '{self.camera}', observation has {list(obs.images)}")
        cur = self._encode([obs.images[self.camera]])
        blocks = None
        if self.needs_history:
            cur, blocks = self._context(obs, cur)
        state = torch.from_numpy(np.array(obs.state, dtype=np.float32))[None].to(self.device)
        return cur, state, blocks

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def infer(self, obs: Observation, noise_seed: int | None = None) -> np.ndarray:
        """Action chunk (H, action_dim) in the environment's units for the current observation."""
        self._sync()
        t0 = time.perf_counter()
        cur, state, blocks = self._inputs(obs)
        out = self.model.sample(cur, state, [obs.instruction], self.opts, noise_seed, blocks)
        actions = self.model.denorm_action(out["actions"])[0].float().cpu().numpy()
        if self.smoothing:
            actions = smooth_actions(actions)
        self.last_latency_ms = (time.perf_counter() - t0) * 1000   # .cpu() above waited for the device
        self.last_evals = out["evals"]
        return actions


def build_policy(path: str | Path, level: str | OptLevelSpec = "O1-kvcache", *, registry: Registry | None = None,
                 device: str | torch.device | None = None, smoothing: bool = False, overrides: dict | None = None,
                 action_horizon: int | None = None, warm: bool = True) -> Policy:
    """The checkpoint at `path` as a policy at `level` (a name or a spec; `overrides` replace dotted
    level fields, e.g. a sweep trial's `{"steps": 6}`), on `device` (None: CUDA where present).
    Refuses a level the variant does not declare."""
    if isinstance(level, str):
        level = (registry or Registry()).opt_level(level)
    level = levels.with_overrides(level, overrides)
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    levels.check(level, dev)
    sd, meta, _ = checkpoint.load(path)
    return Policy(checkpoint.build_model(meta, sd), meta, level, device=dev, smoothing=smoothing,
                  action_horizon=action_horizon, warm=warm)


load_policy = build_policy  # the name the inference API has always had
