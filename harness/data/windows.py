"""Training windows: the same (frame, future frames, action chunk, state) slices for every variant.

Everything is decoded once into flat arrays; a window is a gather with indices clamped to the
episode's last step, so `sample()` is a handful of numpy fancy-indexing calls per batch.
"""
from __future__ import annotations

import numpy as np

from harness.data.lerobot import LeRobotData
from harness.errors import UserError


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3): box filter (area) down, bilinear up."""
    from PIL import Image
    if frames.shape[1:3] == (size, size):
        return frames
    shrink = size <= min(frames.shape[1:3])
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), method)) for f in frames])


class WindowSampler:
    """Training windows for every variant: current frame, future frames every `frame_stride`
    steps, the next `actions` actions, the state; padding masks at episode ends."""

    def __init__(self, data: LeRobotData, *, camera: str, actions: int, frame_stride: int,
                 future_frames: int, image_size: int | None = None):
        if camera not in data.camera_names:
            raise UserError(f"dataset {data.root}: no camera '{camera}'; it has "
                            f"{', '.join(data.camera_names) or 'no cameras'}")
        if actions < 1 or frame_stride < 1 or future_frames < 0:
            raise UserError(f"window: need actions >= 1, frame_stride >= 1, future_frames >= 0; "
                            f"got {actions}, {frame_stride}, {future_frames}")
        self.actions, self.frame_stride, self.future_frames = actions, frame_stride, future_frames
        frames, acts, states, last, task_ids = [], [], [], [], []
        self.tasks: list[str] = []
        start = 0
        for ep in data.episodes():
            T = len(ep)
            img = ep.images[camera]
            frames.append(resize_frames(img, image_size) if image_size else img)
            acts.append(ep.action)
            states.append(ep.state)
            last.append(np.full(T, start + T - 1, np.int64))
            if ep.task not in self.tasks:
                self.tasks.append(ep.task)
            task_ids.append(np.full(T, self.tasks.index(ep.task), np.int64))
            start += T
        if start == 0:
            raise UserError(f"dataset {data.root}: has no frames to train on")
        self.frames = np.concatenate(frames)
        self.action = np.concatenate(acts).astype(np.float32, copy=False)
        self.state = np.concatenate(states).astype(np.float32, copy=False)
        self.last = np.concatenate(last)          # flat index of each frame's episode end
        self.task_id = np.concatenate(task_ids)
        self._frame_offsets = np.arange(1 + future_frames) * frame_stride
        self._action_offsets = np.arange(actions)

    def __len__(self) -> int:
        return len(self.last)

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict:
        return self.get(rng.integers(0, len(self), size=batch_size))

    def get(self, indices) -> dict:
        """The windows starting at flat frame `indices` (deterministic; what sample() draws)."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"window index out of range 0..{len(self) - 1}")
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
