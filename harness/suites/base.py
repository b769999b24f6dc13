"""The one environment interface every suite adapter implements.

A suite (suites/*.yaml, `SuiteSpec`) lists tasks and its protocol; an adapter turns one task of
it into a `SuiteEnv`. The evaluator and the demo writer only talk to this interface, so a new
simulator is one new adapter module plus its entry in `ADAPTERS`.
"""
from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field

import numpy as np

from harness.config import ConfigError, SuiteSpec
from harness.errors import UserError

# adapter name -> "module:Class"; imported only when used (LIBERO pulls in robosuite).
ADAPTERS = {
    "tabletop": "harness.suites.tabletop:TabletopEnv",
    "libero": "harness.suites.libero:LiberoEnv",
    "robotwin": "harness.suites.robotwin:RoboTwinEnv",
}


class SimulatorError(RuntimeError):
    """The simulator itself failed (not the policy): recorded as an episode error, never a failure."""


@dataclass
class Observation:
    images: dict[str, np.ndarray]   # camera name -> (H, W, 3) uint8; empty when not rendered
    state: np.ndarray               # (state_dim,) float32 proprioception
    instruction: str
    history: list[dict[str, np.ndarray]] = field(default_factory=list)  # images at the policy's frame cadence since its last call


class SuiteEnv(abc.ABC):
    """One task of a suite. Rendering happens only in `observe(render=True)`."""

    # How a remote client's request maps onto an Observation (`wam-bench serve`): client key ->
    # camera for images, the state key, the prompt key. None: `serve_keys` derives one.
    SERVE_KEYS: dict | None = None
    # A wire format's own names for the suite's cameras: {wire: {its name: the suite's camera}}
    # (RoboTwin's: harness/suites/robotwin.py CAMERAS). A format not listed names them as the suite does.
    WIRE_CAMERAS: dict[str, dict[str, str]] = {}
    # `wam-bench demos` renders the cameras every this many steps (harness/data/demos.py)
    DEMO_IMAGE_STRIDE: int = 1

    @classmethod
    def unavailable(cls, spec: SuiteSpec) -> str | None:
        """Why this adapter cannot make an environment in this process (one line saying what to do
        instead), or None. Checked before any worker starts (`require_runnable`)."""
        return None

    def __init__(self, spec: SuiteSpec, task_index: int):
        self.spec = spec
        self.task_index = task_index
        self.task = spec.tasks[task_index]

    @abc.abstractmethod
    def reset(self, init_index: int | None, seed: int) -> None:
        """`init_index` selects a fixed evaluation init state; None draws a fresh one from `seed` (demos)."""

    @abc.abstractmethod
    def observe(self, render: bool = True) -> Observation:
        """Current state; camera images only when `render` (software GL costs ~25 ms a frame)."""

    @abc.abstractmethod
    def step(self, action: np.ndarray) -> None:
        """Advance one control step. Raise SimulatorError on a simulator fault."""

    @abc.abstractmethod
    def success(self) -> bool: ...

    @abc.abstractmethod
    def progress(self) -> float:
        """Task progress: partial credit in [0, 1]."""

    def expert_action(self) -> np.ndarray:
        """Scripted expert's next action from privileged state (for demos and the expert row)."""
        raise NotImplementedError(f"suite adapter '{self.spec.adapter}' has no scripted expert")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def adapter_class(spec: SuiteSpec) -> type[SuiteEnv]:
    target = ADAPTERS.get(spec.adapter, spec.adapter if ":" in spec.adapter else None)
    if target is None:
        raise ConfigError(f"suite '{spec.name}': unknown adapter '{spec.adapter}'; known: {', '.join(ADAPTERS)}, "
                          "or a 'module:Class' path to your own SuiteEnv")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def require_runnable(spec: SuiteSpec) -> type[SuiteEnv]:
    """The suite's adapter class, or a UserError with its one line when it cannot run here."""
    cls = adapter_class(spec)
    reason = cls.unavailable(spec) if hasattr(cls, "unavailable") else None  # a 'module:Class' of the user's
    if reason:
        raise UserError(reason)
    return cls


def make_env(spec: SuiteSpec, task_index: int) -> SuiteEnv:
    cls = require_runnable(spec)
    if not 0 <= task_index < len(spec.tasks):
        raise ConfigError(f"suite '{spec.name}' has {len(spec.tasks)} tasks; task index {task_index} is out of range")
    return cls(spec, task_index)


def serve_keys(spec: SuiteSpec) -> dict:
    """The suite's client-key mapping: {"images": {client key: camera}, "state": key, "prompt": key}.
    Without an adapter declaration: the first camera is `observation/image`, others `observation/<camera>`."""
    keys = adapter_class(spec).SERVE_KEYS
    if keys is None:
        cams = list(spec.cameras)
        keys = {"images": {("observation/image" if i == 0 else f"observation/{c}"): c for i, c in enumerate(cams)},
                "state": "observation/state", "prompt": "prompt"}
    return keys


def wire_cameras(spec: SuiteSpec, wire: str) -> dict[str, str]:
    """{a camera's name in wire format `wire`: the suite's camera}; a camera's own name always maps to itself."""
    named = getattr(adapter_class(spec), "WIRE_CAMERAS", {}).get(wire, {})  # a user's 'module:Class' may lack it
    return {**named, **{c: c for c in spec.cameras}}
