"""Attention masks as data: one pure function from token labels and a variant's rule.

Every token carries a label: its group (F0, F+, A, C, N, V, W, ...), the chunk it belongs to and
its frame index. A variant's `mask:` maps each query group to the key groups it may attend to,
optionally qualified by a relation on chunks or frames:

    all                 any token of that group (the default)
    same                same chunk
    causal              key chunk <= query chunk (and within `window` chunks)
    before              key chunk <  query chunk (and within `window` chunks)
    first_frame_causal  frame-0 queries see only frame 0; later frames see the whole group

So `fastwam` is `{F0: [F0], F+: [F0, F+], A: [F0, A]}` and no variant needs its own model class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from harness.config import ConfigError

RELATIONS = ("all", "same", "causal", "before", "first_frame_causal")


@dataclass
class Labels:
    """Per-token labels of a token sequence (numpy arrays of equal length)."""
    group: np.ndarray   # str
    chunk: np.ndarray   # int
    frame: np.ndarray   # int (video frame index within its group/copy; -1 for actions)

    def __len__(self) -> int:
        return len(self.group)

    @staticmethod
    def of(group: str, n: int, chunk: int = 0, frame: np.ndarray | int = -1) -> "Labels":
        frame = np.broadcast_to(np.asarray(frame), (n,)).astype(np.int64)
        return Labels(np.full(n, group, dtype=object), np.full(n, chunk, dtype=np.int64), frame.copy())

    @staticmethod
    def frames(group: str, frames: list[int], per_frame: int, chunk: int = 0) -> "Labels":
        """Video tokens: `per_frame` tokens for each of `frames`, in order."""
        return Labels.of(group, per_frame * len(frames), chunk, np.repeat(np.asarray(frames, dtype=np.int64), per_frame))

    @staticmethod
    def cat(parts: list["Labels"]) -> "Labels":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Labels(np.zeros(0, dtype=object), np.zeros(0, np.int64), np.zeros(0, np.int64))
        return Labels(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("group", "chunk", "frame")))


def parse_rule(rule: dict[str, list[str]]) -> dict[str, list[tuple[str, str]]]:
    """`{"A": ["F0", "C:before"]}` -> `{"A": [("F0", "all"), ("C", "before")]}`, validated."""
    parsed = {}
    for q, keys in rule.items():
        parsed[q] = []
        for item in keys:
            group, _, rel = str(item).partition(":")
            rel = rel or "all"
            if rel not in RELATIONS:
                raise ConfigError(f"mask rule {q}: '{item}': unknown relation '{rel}'; known: {', '.join(RELATIONS)}")
            parsed[q].append((group, rel))
    return parsed


def build_mask(q: Labels, k: Labels, rule: dict[str, list[str]], window: int | None = None) -> torch.Tensor:
    """Boolean (len(q), len(k)) mask, True where query token may attend to key token."""
    parsed = parse_rule(rule)
    unknown = set(q.group) - set(parsed)
    if unknown:
        raise ConfigError(f"mask rule has no entry for token group(s) {sorted(unknown)}; rule covers {sorted(parsed)}")
    allowed = np.zeros((len(q), len(k)), dtype=bool)
    qc, kc = q.chunk[:, None], k.chunk[None, :]
    qf, kf = q.frame[:, None], k.frame[None, :]
    win = np.ones_like(allowed) if window is None else (qc - kc) <= window
    relation = {
        "all": np.ones_like(allowed),
        "same": qc == kc,
        "causal": (kc <= qc) & win,
        "before": (kc < qc) & win,
        "first_frame_causal": (qf > 0) | (kf == 0),
    }
    for qg, keys in parsed.items():
        qsel = (q.group == qg)[:, None]
        for kg, rel in keys:
            allowed |= qsel & (k.group == kg)[None, :] & relation[rel]
    return torch.from_numpy(allowed)


def render(mask: torch.Tensor, q: Labels, k: Labels) -> str:
    """Group-level picture of a mask for `variants show` and debugging: '#' all, '+' some, '.' none."""
    qg = list(dict.fromkeys(q.group))
    kg = list(dict.fromkeys(k.group))
    lines = ["      " + " ".join(f"{g:>3}" for g in kg)]
    for a in qg:
        row = []
        for b in kg:
            block = mask[np.ix_(q.group == a, k.group == b)]
            row.append("  #" if block.all() else "  +" if block.any() else "  .")
        lines.append(f"{a:>5} " + " ".join(row))
    return "\n".join(lines)
