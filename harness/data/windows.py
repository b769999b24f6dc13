"""Training windows: the same (frame, future frames, action chunk, state) slices for every variant.

A frame is the model's video frame: the dataset's cameras composed by `Frame.compose_images`
(harness/model/frame.py), the function the policy composes its observations with. Several
datasets (one per suite, for a model trained on several) are one sampler: their episodes are
concatenated in the order given and their task strings merged. Everything is decoded once into
flat arrays; a window is a gather with indices clamped to the episode's last step, so `sample()`
is a handful of numpy fancy-indexing calls per batch. A dataset rendered every K steps
(`LeRobotData.image_stride`, `demos --image-stride`) holds its last frame in the rows between:
its windows start only at rendered rows (steps 0, K, 2K, ... of an episode), and a frame stride K
does not divide is refused, so every frame a window shows was rendered at its own step. The decoded
arrays are cached per dataset
in `<dataset>/cache/` (keyed by the dataset's content hash and the frame), so the six training
processes of `make run` decode the videos once, not six times.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from harness.data.lerobot import LeRobotData, dataset_hash
from harness.errors import UserError
from harness.model.frame import Frame


class WindowSampler:
    """Training windows for every variant: current frame, future frames every `frame_stride`
    steps, the next `actions` actions, the state; padding masks at episode ends."""

    def __init__(self, data: LeRobotData | list[LeRobotData], *, frame: Frame, actions: int, frame_stride: int,
                 future_frames: int):
        datas = [data] if isinstance(data, LeRobotData) else list(data)
        for d in datas:
            missing = [c for c in frame.cameras if c not in d.camera_names]
            if missing:
                raise UserError(f"dataset {d.root}: no camera {', '.join(repr(c) for c in missing)} for the frame "
                                f"{frame.describe()}; it has {', '.join(d.camera_names) or 'no cameras'}")
        if actions < 1 or frame_stride < 1 or future_frames < 0:
            raise UserError(f"window: need actions >= 1, frame_stride >= 1, future_frames >= 0; "
                            f"got {actions}, {frame_stride}, {future_frames}")
        for d in datas:
            if frame_stride % d.image_stride:
                raise UserError(f"dataset {d.root} has a frame every {d.image_stride} steps; frame_stride {frame_stride} "
                                f"is not a multiple of it: train a variant whose chunk.frame_stride it divides, or make "
                                f"demos with --image-stride dividing {frame_stride}")
        self.actions, self.frame_stride, self.future_frames = actions, frame_stride, future_frames
        self.frame = frame
        parts = []
        for d in datas:
            cache = _cache_path(d, frame)
            arrays = _load_cached(cache)
            if arrays is None:
                arrays = _decode(d, frame)
                _store_cached(cache, arrays)
            parts.append(arrays)
        arrays = _concatenate(parts, [d.image_stride for d in datas])
        self.frames, self.action, self.state = arrays["frames"], arrays["action"], arrays["state"]
        self.last = arrays["last"]                 # flat index of each frame's episode end
        self.starts = arrays["starts"]             # flat index of each window's first row: a rendered one
        self.task_id = arrays["task_id"]
        self.tasks: list[str] = arrays["tasks"]
        if len(self.starts) == 0:
            raise UserError(f"dataset {', '.join(str(d.root) for d in datas)}: has no frames to train on")
        self._frame_offsets = np.arange(1 + future_frames) * frame_stride
        self._action_offsets = np.arange(actions)

    def __len__(self) -> int:
        """Windows: one per rendered row (every row of a dataset rendered every step)."""
        return len(self.starts)

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict:
        return self.get(rng.integers(0, len(self), size=batch_size))

    def get(self, indices) -> dict:
        """Windows number `indices` (deterministic; what sample() draws); window i starts at flat
        row `starts[i]` (= i where every row is rendered)."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"window index out of range 0..{len(self) - 1}")
        idx = self.starts[idx]
        end = self.last[idx][:, None]
        f_want = idx[:, None] + self._frame_offsets
        a_want = idx[:, None] + self._action_offsets
        return {
            "frames": self.frames[np.minimum(f_want, end)],
            "frame_pad": f_want > end,
            "actions": self.action[np.minimum(a_want, end)],
            "action_pad": a_want > end,
            "state": self.state[idx],
            "task": [self.tasks[t] for t in self.task_id[idx]],
        }


def _starts(last: np.ndarray, stride: int) -> np.ndarray:
    """Flat indices of the rows at steps 0, stride, 2*stride, ... of their episodes."""
    rows = np.arange(len(last))
    begins = np.r_[True, last[1:] != last[:-1]] if len(last) else rows.astype(bool)
    first = np.maximum.accumulate(np.where(begins, rows, 0))   # each row's episode start
    return np.flatnonzero((rows - first) % stride == 0)


def _concatenate(parts: list[dict], strides: list[int]) -> dict:
    """One dataset's arrays after another: episode ends shifted, task ids into one merged list,
    the rendered rows where windows may start."""
    tasks: list[str] = []
    out = {k: [] for k in ("frames", "action", "state", "last", "task_id", "starts")}
    start = 0
    for p, stride in zip(parts, strides):
        names = [str(t) for t in p["tasks"]]
        for t in names:
            if t not in tasks:
                tasks.append(t)
        remap = np.array([tasks.index(t) for t in names] or [0], np.int64)
        for k in ("frames", "action", "state"):
            out[k].append(p[k])
        out["last"].append(p["last"] + start)
        out["starts"].append(_starts(p["last"], stride) + start)
        out["task_id"].append(remap[p["task_id"]])
        start += len(p["last"])
    cat = {k: (v[0] if len(v) == 1 else np.concatenate(v)) for k, v in out.items()}
    return {**cat, "tasks": tasks}


def _decode(data: LeRobotData, frame: Frame) -> dict:
    frames, acts, states, last, task_ids, tasks = [], [], [], [], [], []
    start = 0
    for ep in data.episodes():
        T = len(ep)
        frames.append(frame.compose_images(ep.images))
        acts.append(ep.action)
        states.append(ep.state)
        last.append(np.full(T, start + T - 1, np.int64))
        if ep.task not in tasks:
            tasks.append(ep.task)
        task_ids.append(np.full(T, tasks.index(ep.task), np.int64))
        start += T
    cat = lambda xs, dtype=None: np.concatenate(xs).astype(dtype or xs[0].dtype, copy=False) if xs else np.zeros(0)  # noqa: E731
    return {"frames": cat(frames), "action": cat(acts, np.float32), "state": cat(states, np.float32),
            "last": cat(last), "task_id": cat(task_ids), "tasks": np.array(tasks, dtype=str)}


def _cache_path(data: LeRobotData, frame: Frame) -> Path:
    """Named by the frame and the dataset's content hash: a rewritten dataset gets a new cache
    file."""
    how = "" if len(frame.cameras) == 1 else f"-{frame.compose}"
    return data.root / "cache" / f"windows-{'+'.join(frame.cameras)}{how}-{frame.tile}-{dataset_hash(data.root)[:16]}.npz"


def _load_cached(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent or damaged: decode again
        return None


def _store_cached(path: Path, arrays: dict) -> None:
    """Atomic (temp file + rename), so concurrent trainers never read half a file; a read-only
    dataset folder simply goes uncached."""
    try:
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        pass
