"""Environment worker processes and their typed messages.

Simulators live in child processes (spawned: simulators and GL contexts don't survive fork).
A worker executes an action chunk (rendering only at the policy's frame cadence and at the
chunk's end) while the driver computes the next chunk for another worker. A simulator fault is
reported as that episode's error, never as a task failure.
"""
from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from dataclasses import dataclass

import numpy as np

from harness.config import SuiteSpec
from harness.env import apply, forwarded
from harness.suites.base import Observation, make_env, require_runnable


@dataclass


class EpisodeState:
    """What a worker tracks for the episode it is running."""
    task_index: int
    init_index: int
    seed: int
    steps: int = 0
    max_progress: float = 0.0
    done: bool = False


def _observe(env, render):
    obs = env.observe(render=render)
    return Observation(obs.images, np.asarray(obs.state, np.float32), obs.instruction)


MAX_ENVS = 2  # simulators a slot keeps, least recently used closed first: a LIBERO one holds ~0.9 GB,
# and a slot that kept every task's took 9 GB for libero_object (measured; Ray then killed cells for
# memory). Plans are task-major (`episode_plan`), so a slot meets each task once and two never thrash.


class _Slot:
    """One environment slot of a worker: its simulators (reused per task, at most MAX_ENVS) and its episode."""

    def __init__(self):
        self.envs: dict[int, object] = {}
        self.ep: EpisodeState | None = None
        self.env = None


def _worker(conn, spec: SuiteSpec, env_vars: dict):
    """Runs in a child process: owns the simulators of its slots, answers reset / chunk / expert
    commands. Every message carries its slot index, every reply too; an observation also the
    system-wide monotonic time it was sent (the driver's async execution counts its wait)."""
    apply(env_vars)
    slots: dict[int, _Slot] = {}
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            break
        cmd = msg[0]
        if cmd == "close":
            break
        k = msg[1]
        sl = slots.setdefault(k, _Slot())
        try:
            if cmd == "reset":
                _, _, task, init, seed, render = msg
                env = sl.envs.pop(task, None)
                if env is None:
                    while len(sl.envs) >= MAX_ENVS:
                        sl.envs.pop(next(iter(sl.envs))).close()
                    env = make_env(spec, task)
                sl.envs[task] = sl.env = env
                env.reset(init, seed)
                sl.ep = EpisodeState(task, init, seed)
                conn.send(("obs", k, _observe(env, render), [], time.monotonic()))
            elif cmd == "chunk":  # execute actions; frames at cadence `stride` go into history
                _, _, actions, stride, render_history, render_end = msg
                env, ep = sl.env, sl.ep
                history = []
                for a in actions:
                    env.step(np.asarray(a, np.float32))
                    ep.steps += 1
                    ep.max_progress = max(ep.max_progress, float(env.progress()))
                    if env.success() or ep.steps >= spec.max_steps:
                        ep.done = True
                        break
                    if render_history and ep.steps % stride == 0:
                        history.append(env.observe(render=True).images)
                if ep.done:
                    conn.send(("done", k, _final(env, ep)))
                else:
                    obs = _observe(env, render_end)
                    if render_history and history and obs.images:
                        history[-1] = obs.images
                    conn.send(("obs", k, obs, history, time.monotonic()))
            elif cmd == "scripted":  # whole episode with the expert or uniform random actions
                _, _, kind, rng_seed = msg
                env, ep = sl.env, sl.ep
                rng = np.random.default_rng(rng_seed)
                while not ep.done:
                    a = env.expert_action() if kind == "expert" else rng.uniform(-1, 1, spec.action_dim)
                    env.step(np.asarray(a, np.float32))
                    ep.steps += 1
                    ep.max_progress = max(ep.max_progress, float(env.progress()))
                    ep.done = env.success() or ep.steps >= spec.max_steps
                conn.send(("done", k, _final(env, ep)))
        except Exception as e:  # a simulator fault: report it, keep the worker alive
            ep = sl.ep
            conn.send(("error", k, f"{type(e).__name__}: {e}", traceback.format_exc(limit=3),
                       ep.steps if ep else 0, ep.max_progress if ep else 0.0))
            sl.envs.pop(ep.task_index if ep else -1, None)  # rebuild that simulator next time
    for sl in slots.values():
        for e in sl.envs.values():
            try:
                e.close()
            except Exception:
                pass


def _final(env, ep: EpisodeState) -> dict:
    return {"success": bool(env.success()), "progress": float(env.progress()),
            "max_progress": max(ep.max_progress, float(env.progress())), "steps": ep.steps}


class WorkerPool:
    """Environment worker processes (spawned: simulators and GL contexts don't survive fork), each
    with `envs_per_worker` environment slots; slot s lives in process s // envs_per_worker."""

    def __init__(self, spec: SuiteSpec, n: int, envs_per_worker: int = 1):
        require_runnable(spec)  # a simulator that cannot run here says so once, not once per episode
        self.spec = spec
        self.per = envs_per_worker
        self.slots = n * envs_per_worker
        self.ctx = mp.get_context("spawn")
        env_vars = {**forwarded(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.env_vars = env_vars
        self.conns, self.procs = [], []
        for _ in range(n):
            self._spawn()

    def _spawn(self, index: int | None = None):
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(child, self.spec, self.env_vars), daemon=True)
        proc.start()
        child.close()
        if index is None:
            self.conns.append(parent)
            self.procs.append(proc)
        else:
            self.conns[index], self.procs[index] = parent, proc

    def send(self, slot: int, cmd: str, *args):
        self.conns[slot // self.per].send((cmd, slot % self.per, *args))

    def recv(self, proc: int) -> tuple:
        """One message from process `proc`, its local slot made global (EOFError if it died)."""
        msg = self.conns[proc].recv()
        return (msg[0], proc * self.per + msg[1], *msg[2:])

    def slots_of(self, proc: int) -> range:
        return range(proc * self.per, (proc + 1) * self.per)

    def respawn(self, i: int):
        """A worker process died (segfault in a simulator): replace it (all its slots)."""
        try:
            self.procs[i].kill()
        except Exception:
            pass
        self._spawn(i)

    def close(self):
        for c, p in zip(self.conns, self.procs):
            try:
                c.send(("close",))
            except (BrokenPipeError, OSError):
                pass
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
