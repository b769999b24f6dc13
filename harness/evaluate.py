"""Closed-loop evaluation: `wam-bench eval --checkpoint C --suite S`.

Environments live in worker processes; the policy lives in this process. A worker executes an
action chunk (rendering only at the policy's frame cadence and at the chunk's end) while the
policy computes the next chunk for another worker, and observations that arrive together are
inferred as one batch where the procedure allows it. Each finished episode is appended to the
cell's `episodes.jsonl` at once, so an interrupted evaluation resumes without duplicates.
A simulator fault is recorded as that episode's error, never as a task failure.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np
from tqdm import tqdm

from harness.config import Registry, SuiteSpec, to_dict
from harness.errors import UserError
from harness.suites.base import Observation, make_env


# --------------------------------------------------------------------------- the worker side

@dataclass
class Episode:
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


def _worker(conn, spec: SuiteSpec, env_vars: dict):
    """Runs in a child process: owns the simulators, answers reset / chunk / expert commands."""
    os.environ.update(env_vars)
    envs: dict[int, object] = {}
    ep: Episode | None = None
    env = None
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            break
        cmd = msg[0]
        if cmd == "close":
            break
        try:
            if cmd == "reset":
                _, task, init, seed, render = msg
                if task not in envs:
                    envs[task] = make_env(spec, task)
                env = envs[task]
                env.reset(init, seed)
                ep = Episode(task, init, seed)
                conn.send(("obs", _observe(env, render), []))
            elif cmd == "chunk":  # execute actions; frames at cadence `stride` go into history
                _, actions, stride, render_history, render_end = msg
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
                    conn.send(("done", _final(env, ep)))
                else:
                    obs = _observe(env, render_end)
                    if render_history and history and obs.images:
                        history[-1] = obs.images
                    conn.send(("obs", obs, history))
            elif cmd == "scripted":  # whole episode with the expert or uniform random actions
                _, kind, rng_seed = msg
                rng = np.random.default_rng(rng_seed)
                while not ep.done:
                    a = env.expert_action() if kind == "expert" else rng.uniform(-1, 1, spec.action_dim)
                    env.step(np.asarray(a, np.float32))
                    ep.steps += 1
                    ep.max_progress = max(ep.max_progress, float(env.progress()))
                    ep.done = env.success() or ep.steps >= spec.max_steps
                conn.send(("done", _final(env, ep)))
        except Exception as e:  # a simulator fault: report it, keep the worker alive
            conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc(limit=3),
                       ep.steps if ep else 0, ep.max_progress if ep else 0.0))
            envs.pop(ep.task_index if ep else -1, None)  # rebuild that simulator next time
    for e in envs.values():
        try:
            e.close()
        except Exception:
            pass


def _final(env, ep: Episode) -> dict:
    return {"success": bool(env.success()), "progress": float(env.progress()),
            "max_progress": max(ep.max_progress, float(env.progress())), "steps": ep.steps}


class WorkerPool:
    """Environment worker processes (spawned: simulators and GL contexts don't survive fork)."""

    def __init__(self, spec: SuiteSpec, n: int):
        self.spec = spec
        self.ctx = mp.get_context("spawn")
        env_vars = {k: os.environ[k] for k in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "LIBERO_ASSETS") if k in os.environ}
        env_vars.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
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

    def respawn(self, i: int):
        """A worker died (segfault in a simulator): replace it."""
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


# --------------------------------------------------------------------------- the driver side

def episode_plan(spec: SuiteSpec, seed: int, episodes_per_task: int | None = None,
                 tasks: list[int] | None = None) -> list[tuple[int, int, int]]:
    """(task, init index, episode seed) for every episode of a cell: init states cycle."""
    n = episodes_per_task or spec.episodes_per_task
    tasks = range(len(spec.tasks)) if tasks is None else tasks
    return [(t, i % spec.init_states, seed * 100_003 + t * 1_009 + i) for t in tasks for i in range(n)]


def stale_steps(latency_ms: float, control_hz: float) -> int:
    """Control steps that pass while the policy computes: ceil(latency x control_hz)."""
    return math.ceil(latency_ms / 1000 * control_hz - 1e-9)


def async_chunk(full: np.ndarray, carry: np.ndarray, horizon: int, late: int) -> tuple[np.ndarray, np.ndarray]:
    """Latency-aware execution of a new chunk `full` -> (actions to execute now, next carry).

    While the policy computed, the robot kept executing `carry` (the previous chunk past its
    horizon) for `late` steps, holding still (zero action) once it ran out; the new chunk's
    first `late` actions are then in the past and dropped, and the rest up to `horizon` run.
    The new chunk past what has been executed becomes the next carry. `late` 0 is sync."""
    tail = carry[:late]
    if len(tail) < late:
        tail = np.concatenate([tail, np.zeros((late - len(tail), full.shape[1]), full.dtype)])
    return np.concatenate([tail, full[late:horizon]]), full[max(horizon, late):]


@dataclass
class Running:
    task: int
    init: int
    seed: int
    t0: float
    latencies: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    calls: int = 0


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


def run_episodes(spec: SuiteSpec, plan, policy, record, *, workers: int = 2, execution: str = "sync",
                 noise_seed: int | None = None, progress: bool = True, desc: str = "eval"):
    """Run `plan` episodes and call `record(dict)` for each as it finishes.

    `policy` is a Policy-like object (`infer`, `reset`, `needs_history`, `frame_stride`,
    `action_horizon`, `last_latency_ms`) or the string "expert" / "random" (reference rows).
    """
    if policy == "random":
        policy = RandomPolicy(spec.action_dim, spec.action_horizon or 8)
    scripted = policy if isinstance(policy, str) else None
    if execution not in ("sync", "async"):
        raise UserError(f"--execution {execution!r}: expected sync or async")
    pending = deque(plan)
    pool = WorkerPool(spec, max(1, min(workers, len(plan))))
    running: dict[int, Running] = {}
    policies: dict[int, object] = {}
    bar = tqdm(total=len(plan), disable=not progress, desc=desc, unit="ep", dynamic_ncols=True)
    horizon = None if scripted else (spec.action_horizon or policy.action_horizon)
    stride = 1 if scripted else policy.frame_stride
    history = bool(not scripted and policy.needs_history)
    carry: dict[int, np.ndarray] = {}  # async: actions still executing while the policy thinks

    def start(i):
        if not pending:
            return
        task, init, seed = pending.popleft()
        running[i] = Running(task, init, seed, time.perf_counter())
        pool.conns[i].send(("reset", task, init, seed, scripted is None))

    def finish(i, payload: dict, error: str | None = None):
        r = running.pop(i)
        rec = {"task": spec.tasks[r.task].name, "task_index": r.task, "init_index": r.init, "seed": r.seed,
               "success": None if error else payload["success"], "progress": None if error else payload["progress"],
               "max_progress": payload.get("max_progress"), "steps": payload.get("steps", 0),
               "latency_ms": r.latencies, "effective_steps": r.evals, "error": error,
               "wall_s": time.perf_counter() - r.t0}
        record(rec)
        bar.update(1)
        carry.pop(i, None)
        start(i)

    def act(ready: list[tuple[int, Observation, list]]):
        """Infer for every worker whose observation is in, then send each its chunk."""
        for i, obs, hist in ready:
            r = running[i]
            if scripted:
                pool.conns[i].send(("scripted", scripted, r.seed))
                continue
            pol = policies.setdefault(i, _clone(policy))
            if r.calls == 0:
                pol.reset()
            obs.history = hist
            seed = None if noise_seed is None else noise_seed + r.calls
            full = pol.infer(obs, noise_seed=seed)
            r.latencies.append(pol.last_latency_ms)
            r.evals.append(pol.last_evals)
            r.calls += 1
            late = 0  # the first call of an episode: the robot waits, nothing is stale yet
            if execution == "async" and r.calls > 1:
                late = stale_steps(pol.last_latency_ms, spec.control_hz)
            chunk, carry[i] = async_chunk(full, carry.get(i, full[:0]), horizon, late)
            pool.conns[i].send(("chunk", chunk, stride, history, True))

    try:
        for i in range(len(pool.conns)):
            start(i)
        while running:
            ready_conns = wait([pool.conns[i] for i in running])
            ready = []
            for c in ready_conns:
                i = pool.conns.index(c)
                try:
                    msg = c.recv()
                except (EOFError, ConnectionResetError):  # the simulator took its process down
                    pool.respawn(i)
                    policies.pop(i, None)
                    finish(i, {}, error="SimulatorError: environment worker process died")
                    continue
                if msg[0] == "obs":
                    ready.append((i, msg[1], msg[2]))
                elif msg[0] == "done":
                    finish(i, msg[1])
                elif msg[0] == "error":
                    finish(i, {"steps": msg[3], "max_progress": msg[4]}, error=msg[1])
            if ready:
                act(ready)
    finally:
        bar.close()
        pool.close()


def _clone(policy):
    """Per-episode policy state (dreamzero's observed-chunk cache) must not be shared by slots."""
    if not getattr(policy, "needs_history", False):
        return policy
    import copy
    clone = copy.copy(policy)
    clone.reset()
    return clone


# --------------------------------------------------------------------------- cells

def evaluate_cell(cell, spec: SuiteSpec, policy, *, config: dict | None = None, checkpoint_path=None,
                  episodes_per_task: int | None = None, workers: int = 2, execution: str = "sync",
                  noise_seed: int | None = 0, progress: bool = True, extra: dict | None = None):
    """Evaluate into a store cell, skipping episodes already there; write result.json at the end."""
    from harness.provenance import provenance
    from harness.stats import per_task, summarize
    from harness.store import Result
    from harness.config import spec_hash

    source = cell_source(spec, checkpoint_path, policy if isinstance(policy, str) else None, execution, noise_seed)
    if cell.claim(source):
        print(f"{cell.path}: its episodes came from another checkpoint or suite version; evaluating again",
              file=sys.stderr)
    if cell.is_complete():
        return cell.result()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    plan = episode_plan(spec, cell.key.seed, episodes_per_task)
    done = cell.done_ids()
    todo = [p for p in plan if cell.episode_id(p[0], p[1], p[2]) not in done]

    def record(rec):
        rec["episode_id"] = cell.episode_id(rec["task_index"], rec["init_index"], rec["seed"])
        cell.append_episode(rec)

    if todo:
        run_episodes(spec, todo, policy, record, workers=workers, execution=execution, noise_seed=noise_seed,
                     progress=progress, desc=f"eval {cell.key.variant}/{cell.key.suite}/{cell.key.opt_level}")
    eps = cell.episodes()
    cfg = {"suite": to_dict(spec), **(config or {}), "execution": execution, "noise_seed": noise_seed,
           "episodes_per_task": episodes_per_task or spec.episodes_per_task}
    result = Result(experiment=cell.key.experiment, variant=cell.key.variant, suite=cell.key.suite,
                    seed=cell.key.seed, opt_level=cell.key.opt_level, status="complete",
                    metrics=summarize(eps), per_task=per_task(eps), config=cfg, config_hash=spec_hash(cfg),
                    checkpoint={"path": str(checkpoint_path), "sha256": source["checkpoint_sha256"]} if checkpoint_path else None,
                    provenance={**provenance(), "suite": suite_provenance(spec)}, started=started,
                    finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), extra=extra or {})
    cell.write_result(result)
    return result.to_dict()


def cell_source(spec: SuiteSpec, checkpoint_path=None, policy: str | None = None, execution: str = "sync",
                noise_seed: int | None = 0) -> dict:
    """What an eval cell's episodes depend on; a cell whose records came from another source is
    re-evaluated (`Cell.claim`), so a retrained checkpoint never inherits old episodes."""
    from harness.checkpoint import file_sha256
    from harness.config import spec_hash
    return {"suite_hash": spec_hash(spec), "checkpoint_sha256": file_sha256(checkpoint_path) if checkpoint_path else None,
            "policy": policy, "execution": execution, "noise_seed": noise_seed}


def suite_provenance(spec: SuiteSpec) -> dict:
    """Simulator versions and asset checksums the adapter module reports through a module-level
    `provenance(spec)` (e.g. LIBERO), if it has one."""
    import importlib
    from harness.suites.base import ADAPTERS
    target = ADAPTERS.get(spec.adapter, spec.adapter)
    module = importlib.import_module(target.split(":")[0])
    fn = getattr(module, "provenance", None)
    return fn(spec) if callable(fn) else {}


def add_arguments(p):
    p.add_argument("--checkpoint", help="trained checkpoint (or use --policy expert|random)")
    p.add_argument("--policy", choices=["expert", "random"], help="a reference row instead of a checkpoint")
    p.add_argument("--suite", default="tabletop")
    p.add_argument("--experiment", default="adhoc")
    p.add_argument("--level", default="O1-kvcache", help="inference-optimization level")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=None, help="episodes per task (default: the suite's)")
    p.add_argument("--workers", type=int, default=2, help="environment worker processes")
    p.add_argument("--execution", choices=["sync", "async"], default="sync")
    p.add_argument("--noise-seed", type=int, default=0, help="fixed sampling noise per call (-1: random)")
    p.add_argument("--smooth", action="store_true", help="Savitzky-Golay action smoothing (x2 upsampled)")
    p.add_argument("--root", default="results", help="results store")


def main(args) -> int:
    from harness.store import CellKey, Store
    reg = Registry(args.include_path)
    spec = reg.suite(args.suite)
    if bool(args.checkpoint) == bool(args.policy):
        raise UserError("give exactly one of --checkpoint C or --policy expert|random")
    noise = None if args.noise_seed < 0 else args.noise_seed
    if args.policy:
        key = CellKey(args.experiment, args.policy, spec.name, args.seed, "reference")
        policy, cfg, ckpt = args.policy, {"policy": args.policy}, None
    else:
        from harness.levels import load_leveled_policy
        policy, cfg = load_leveled_policy(args.checkpoint, args.level, reg)
        policy.smoothing = args.smooth
        cfg["smoothing"] = args.smooth
        key = CellKey(args.experiment, policy.variant, spec.name, args.seed, args.level)
        ckpt = Path(args.checkpoint)
    cell = Store(args.root).cell(key)
    res = evaluate_cell(cell, spec, policy, config=cfg, checkpoint_path=ckpt, episodes_per_task=args.episodes,
                        workers=args.workers, execution=args.execution, noise_seed=noise)
    m = res["metrics"]
    print(f"{key.variant} on {key.suite} [{key.opt_level}]: success {m['success_rate']:.1%} "
          f"(n={m['n_episodes']}, errors {m['n_errors']}), progress {m['progress_mean']:.2f} -> {cell.path}")
    return 0
