"""The rollout loop: run a plan of episodes over environment workers with one policy.

Each finished episode goes to `record` at once (the cell appends it to `episodes.jsonl`), so an
interrupted evaluation resumes without duplicates. Async execution makes a slow policy pay in
task progress as on a real robot (`async_chunk`).
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait

import numpy as np
from tqdm import tqdm

from harness.config import SuiteSpec
from harness.errors import UserError
from harness.eval.workers import WorkerPool
from harness.policy.reference import RandomPolicy
from harness.suites.base import Observation


def episode_plan(spec: SuiteSpec, seed: int, episodes_per_task: int | None = None,
                 tasks: list[int] | None = None) -> list[tuple[int, int, int]]:
    """(task, init index, episode seed) for every episode of a cell: init states cycle."""
    n = episodes_per_task or spec.episodes_per_task
    tasks = range(len(spec.tasks)) if tasks is None else tasks
    return [(t, i % spec.init_states, seed * 100_003 + t * 1_009 + i) for t in tasks for i in range(n)]


def executed(policy, spec: SuiteSpec) -> int:
    """How many actions of a chunk run before the policy observes again: the suite's
    `action_horizon`, else the policy's, never more than the chunk holds. A suite asking for more
    (RoboTwin's 24 from a tiny model's 8-action chunk) is said once on stderr, not run silently."""
    h = spec.action_horizon or policy.action_horizon
    chunk = getattr(getattr(policy, "chunk", None), "actions", None)
    if chunk is not None and h > chunk:
        import sys
        print(f"note: suite {spec.name} executes {h} actions a call; this checkpoint's chunk holds {chunk}, "
              f"so {chunk} are executed between observations", file=sys.stderr)
        return chunk
    return h


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
    state: object = None                       # the policy's per-episode context (batched policies)
    latencies: list = field(default_factory=list)
    batch_sizes: list = field(default_factory=list)
    effective_steps: list = field(default_factory=list)
    forward_passes: list = field(default_factory=list)
    calls: int = 0


def run_episodes(spec: SuiteSpec, plan, policy, record, *, workers: int = 2, execution: str = "sync",
                 noise_seed: int | None = None, progress: bool = True, desc: str = "eval",
                 max_batch: int = 1, max_wait_ms: float = 5.0, envs_per_worker: int = 1):
    """Run `plan` episodes and call `record(dict)` for each as it finishes.

    `policy` is a Policy-like object (`infer`, `reset`, `needs_history`, `frame_stride`,
    `action_horizon`, `last_latency_ms`) or the string "expert" / "random" (reference rows).
    A policy with `infer_batch` (Policy, RemotePolicy) keeps one state per episode and, with
    `max_batch` > 1, is batched dynamically: once an observation is in, the driver waits for the
    other running environments (every one of them is stepping its chunk, so each is due) up to
    `max_batch` of them, for at most the longer of `max_wait_ms` and the last call's latency:
    inferring the late ones apart would cost about one more call, so waiting longer never pays.
    It infers them in one call and sends each worker its chunk. A batch gives each episode its
    batch-1 actions (tests/test_batch.py), so outcomes do not depend on `max_batch`, except with
    async execution, where a batch's latency decides how many actions are stale. The default (1)
    keeps every call at batch 1, so the ladder's latencies stay batch-1 figures; other policies
    infer one at a time. Each episode record keeps, per call, its latency (the whole batch's),
    the batch size it ran at, its effective denoising steps and its network forward passes.
    `envs_per_worker` > 1 runs several environments in each worker process (fewer processes, for
    hosts with few cores per GPU); `workers` counts processes.
    """
    if policy == "random":
        policy = RandomPolicy(spec.action_dim, spec.action_horizon or 8)
    scripted = policy if isinstance(policy, str) else None
    if execution not in ("sync", "async"):
        raise UserError(f"--execution {execution!r}: expected sync or async")
    if envs_per_worker < 1:
        raise UserError(f"--envs-per-worker {envs_per_worker}: need at least 1")
    if max_batch < 1 or max_wait_ms < 0:
        raise UserError(f"--max-batch {max_batch} / --max-wait-ms {max_wait_ms}: need a batch >= 1 and a wait >= 0")
    batched = not scripted and hasattr(type(policy), "infer_batch")
    pending = deque(plan)
    procs = max(1, min(workers, math.ceil(len(plan) / envs_per_worker)))
    pool = WorkerPool(spec, procs, envs_per_worker)
    running: dict[int, Running] = {}
    policies: dict[int, object] = {}
    bar = tqdm(total=len(plan), disable=not progress, desc=desc, unit="ep", dynamic_ncols=True)
    horizon = None if scripted else executed(policy, spec)
    stride = 1 if scripted else policy.frame_stride
    history = bool(not scripted and policy.needs_history)
    carry: dict[int, np.ndarray] = {}  # async: actions still executing while the policy thinks
    arrived: dict[int, float] = {}     # when each waiting observation was sent (time.monotonic, system-wide)

    def start(i):
        if not pending:
            return
        task, init, seed = pending.popleft()
        running[i] = Running(task, init, seed, time.perf_counter(), policy.new_state() if batched else None)
        pool.send(i, "reset", task, init, seed, scripted is None)

    def finish(i, payload: dict, error: str | None = None):
        r = running.pop(i)
        if batched and hasattr(policy, "end_episode"):
            policy.end_episode(r.state)  # a remote policy's session goes back to its pool
        rec = {"task": spec.tasks[r.task].name, "task_index": r.task, "init_index": r.init, "seed": r.seed,
               "success": None if error else payload["success"], "progress": None if error else payload["progress"],
               "max_progress": payload.get("max_progress"), "steps": payload.get("steps", 0),
               "latency_ms": r.latencies, "batch_size": r.batch_sizes, "effective_steps": r.effective_steps,
               "forward_passes": r.forward_passes, "error": error, "wall_s": time.perf_counter() - r.t0}
        record(rec)
        bar.update(1)
        carry.pop(i, None)
        start(i)

    def send_chunk(i, full: np.ndarray, stats: dict, queued_s: float = 0.0):
        """`queued_s`: how long the observation waited between its worker sending it and its call
        beginning (behind other calls, or for its batch-mates); async execution pays it as latency."""
        r = running[i]
        r.latencies.append(stats["latency_ms"])
        r.batch_sizes.append(stats["batch_size"])
        r.effective_steps.append(stats["effective_steps"])
        r.forward_passes.append(stats["forward_passes"])
        r.calls += 1
        late = 0  # the first call of an episode: the robot waits, nothing is stale yet
        if execution == "async" and r.calls > 1:
            late = stale_steps(stats["latency_ms"] + 1000 * queued_s, spec.control_hz)
        chunk, carry[i] = async_chunk(full, carry.get(i, full[:0]), horizon, late)
        pool.send(i, "chunk", chunk, stride, history, True)

    def seed_of(r: Running):
        return None if noise_seed is None else noise_seed + r.calls

    def act(ready: dict[int, tuple[Observation, list]]):
        """Infer for every worker whose observation is in, then send each its chunk."""
        slots = list(ready)
        for i in slots:
            ready[i][0].history = ready[i][1]
        if scripted:
            for i in slots:
                arrived.pop(i, None)
                pool.send(i, "scripted", scripted, running[i].seed)
            return
        if batched:
            for k in range(0, len(slots), max_batch):
                part = slots[k:k + max_batch]
                t_call = time.monotonic()
                chunks = policy.infer_batch([ready[i][0] for i in part], [seed_of(running[i]) for i in part],
                                            [running[i].state for i in part])
                for i, full, stats in zip(part, chunks, policy.last_stats):
                    send_chunk(i, full, stats, t_call - arrived.pop(i))
            return
        for i in slots:
            r = running[i]
            pol = policies.setdefault(i, _clone(policy))
            if r.calls == 0:
                pol.reset()
            t_call = time.monotonic()
            full = pol.infer(ready[i][0], noise_seed=seed_of(r))
            steps = getattr(pol, "last_effective_steps", getattr(pol, "last_evals", 0))
            send_chunk(i, full, {"latency_ms": pol.last_latency_ms, "batch_size": 1, "effective_steps": steps,
                                 "forward_passes": getattr(pol, "last_forward_passes", 0)}, t_call - arrived.pop(i))

    def receive(conns, ready: dict):
        for c in conns:
            p = pool.conns.index(c)
            try:
                while c.poll():  # everything this process has sent so far (one message per busy slot)
                    msg = pool.recv(p)
                    i = msg[1]
                    if msg[0] == "obs":
                        ready[i] = (msg[2], msg[3])
                        arrived[i] = msg[4]
                    elif msg[0] == "done":
                        finish(i, msg[2])
                    elif msg[0] == "error":
                        finish(i, {"steps": msg[4], "max_progress": msg[5]}, error=msg[2])
            except (EOFError, ConnectionResetError, OSError):  # the simulator took its process down
                pool.respawn(p)
                dead = [i for i in pool.slots_of(p) if i in running]
                for i in dead:
                    policies.pop(i, None)
                    ready.pop(i, None)
                    arrived.pop(i, None)
                for i in dead:
                    finish(i, {}, error="SimulatorError: environment worker process died")

    def busy_conns(exclude=()):
        """Processes with a running slot that has not sent its observation yet."""
        return [pool.conns[p] for p in range(len(pool.conns))
                if any(i in running and i not in exclude for i in pool.slots_of(p))]

    try:
        for i in range(pool.slots):
            start(i)
        while running:
            ready: dict[int, tuple[Observation, list]] = {}
            receive(wait(busy_conns()), ready)
            if batched and ready:  # dynamic batching: wait for the batch-mates that are due
                deadline = time.perf_counter() + max(max_wait_ms, policy.last_latency_ms) / 1000
                while len(ready) < max_batch:
                    others = busy_conns(ready)
                    left = deadline - time.perf_counter()
                    if not others or left <= 0:
                        break
                    receive(wait(others, timeout=left), ready)
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
