"""Ray grid runner: store cells as Ray tasks with declared resources, retries and a live summary.

A `GridCell` is a function that runs in a Ray worker and writes into the results store itself.
The driver checks the store first (finished cells are never submitted), hands a cell's return
value to the cells that depend on it (Ray object references: an eval cell starts when its
checkpoint exists), and prints what is done, running, failed and left as cells finish.

- A cell that raises is recorded failed in its folder (`error.txt` with the traceback, plus a
  failed `result.json` / `train.json` status), cells depending on it are skipped, the rest goes
  on, and the summary lists it; the caller exits non-zero.
- A worker process that dies mid-cell (killed, OOM, segfault) is retried by Ray up to
  `max_retries` times; the retry resumes from the store (episodes already appended are skipped,
  training resumes from its last checkpoint), so nothing finished is lost or counted twice.
- `worker.json` in a running cell's folder says which process runs it (pid, host, attempt).
"""
from __future__ import annotations

import os
import socket
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.env import apply, forwarded
from harness.errors import UserError
from harness.results.store import CellKey, Result, Store, atomic_write_json

ERROR_FILE = "error.txt"
WORKER_FILE = "worker.json"


@dataclass
class RayOptions:
    """Where and how cells run: a local Ray (default) or an existing cluster (`address`)."""
    address: str | None = None
    num_cpus: int | None = None       # local Ray only (default: all cores)
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0
    max_retries: int = 3              # retries of a cell whose worker process died


@dataclass
class GridCell:
    """One unit of work. `fn(*dep_values, *args)` runs in a worker; `deps` are other cells' keys."""
    key: CellKey
    fn: Callable
    args: tuple = ()
    deps: tuple = ()
    label: str = ""
    cpus: float | None = None         # None: RayOptions.cpus_per_cell
    gpus: float | None = None

    def __post_init__(self):
        if not self.label:
            k = self.key
            self.label = f"{k.variant}/{k.suite}/seed{k.seed}/{k.opt_level}"


@dataclass
class GridSummary:
    done: list = field(default_factory=list)       # labels finished in this run
    skipped: list = field(default_factory=list)    # already complete in the store
    failed: list = field(default_factory=list)     # (label, one-line error)
    blocked: list = field(default_factory=list)    # (label, failed dependency)
    values: dict = field(default_factory=dict)     # key -> the cell's return value
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked

    def line(self) -> str:
        return (f"{len(self.done)} done, {len(self.skipped)} already complete, {len(self.failed)} failed, "
                f"{len(self.blocked)} skipped after a failure ({self.wall_s:.0f} s)")


# ------------------------------------------------------------------ Ray session

def connect(ro: RayOptions) -> bool:
    """Start a local Ray or join `ro.address`; returns whether this call started it."""
    import logging

    import ray
    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    # Ray starts workers at nice 15; on a shared machine that starves the cells (measured ~10x slower
    # training next to other users' jobs). Cells are the work: run them at normal priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    t0 = time.perf_counter()
    try:
        if ro.address:
            ray.init(address=ro.address, **kw)
        else:
            ray.init(num_cpus=ro.num_cpus or os.cpu_count() or 1, **kw)
    except ConnectionError as e:
        raise UserError(f"cannot reach the Ray cluster at {ro.address}: {e}") from None
    res = ray.cluster_resources()
    print(f"[ray] {'cluster ' + ro.address if ro.address else 'local'}: {res.get('CPU', 0):g} CPUs, "
          f"{res.get('GPU', 0):g} GPUs ({time.perf_counter() - t0:.1f} s to start)", flush=True)
    return True


def check_resources(ro: RayOptions) -> None:
    """A cell asking for more than the whole cluster has would wait forever: say so now."""
    import ray
    res = ray.cluster_resources()
    if ro.cpus_per_cell > res.get("CPU", 0):
        raise UserError(f"--cpus-per-cell {ro.cpus_per_cell:g} but the Ray cluster has {res.get('CPU', 0):g} CPUs")
    if ro.gpus_per_cell > res.get("GPU", 0):
        raise UserError(f"--gpus-per-cell {ro.gpus_per_cell:g} but the Ray cluster has {res.get('GPU', 0):g} GPUs")


# ------------------------------------------------------------------ failure records

def record_failure(root, key: CellKey, error: str, tb: str) -> None:
    """error.txt with the traceback, and a failed status where the store reads one."""
    cell = Store(root).cell(key)
    cell.path.mkdir(parents=True, exist_ok=True)
    (cell.path / ERROR_FILE).write_text(f"{error}\n\n{tb}")
    if key.is_train:
        prev = cell.train_info() or {}
        if prev.get("status", "complete") == "complete" and "step" in prev:
            return  # a finished training is never marked failed afterwards
        atomic_write_json(cell.path / cell.TRAIN, {"status": "failed", "error": error})
    elif not cell.is_complete():
        cell.write_result(Result(key.experiment, key.variant, key.suite, key.seed, key.opt_level, status="failed",
                                 finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 extra={"error": error, "traceback": tb[-4000:]}))


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"


# ------------------------------------------------------------------ the worker side

def _run_cell(root: str, key: tuple, run_id: str, env: dict, fn: Callable, args: tuple, *deps):
    """Runs in a Ray worker: torch threads = the CPUs Ray gave this cell; failures recorded."""
    apply(env)
    k = CellKey(*key)
    cell = Store(root).cell(k)
    cell.path.mkdir(parents=True, exist_ok=True)
    bad = [d for d in deps if not d.get("ok")]
    if bad:
        return {"ok": False, "blocked": True, "error": bad[0].get("error", "a dependency failed")}
    import ray
    import torch
    try:  # a cluster started without RAY_worker_niceness=0: back to normal priority where allowed
        if os.getpriority(os.PRIO_PROCESS, 0) > 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        pass
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    wpath = cell.path / WORKER_FILE
    attempt = 1
    try:
        import json
        prev = json.loads(wpath.read_text())
        if prev.get("run_id") == run_id:
            attempt = int(prev.get("attempt", 0)) + 1
    except (OSError, ValueError):
        pass
    info = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(), "attempt": attempt,
            "torch_threads": torch.get_num_threads(), "nice": os.getpriority(os.PRIO_PROCESS, 0), "started": time.time(), "state": "running"}
    atomic_write_json(wpath, info)
    t0 = time.perf_counter()
    try:
        value = fn(*[d["value"] for d in deps], *args)
    except Exception as e:  # noqa: BLE001  (recorded, reported, the grid goes on)
        tb = traceback.format_exc()
        record_failure(root, k, _short(e), tb)
        atomic_write_json(wpath, {**info, "state": "failed", "wall_s": time.perf_counter() - t0})
        return {"ok": False, "error": _short(e), "attempt": attempt}
    (cell.path / ERROR_FILE).unlink(missing_ok=True)
    atomic_write_json(wpath, {**info, "state": "done", "wall_s": time.perf_counter() - t0})
    return {"ok": True, "value": value, "attempt": attempt, "wall_s": time.perf_counter() - t0}


# ------------------------------------------------------------------ the driver side

def _running(root, cells: list[GridCell], run_id: str) -> list[str]:
    """Cells a worker of this run is on, with how far they got (train steps, episodes)."""
    import json
    out = []
    for c in cells:
        cell = Store(root).cell(c.key)
        try:
            w = json.loads((cell.path / WORKER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if w.get("run_id") != run_id or w.get("state") != "running":
            continue
        try:
            if c.key.is_train:
                losses = cell.losses()
                where = f"step {losses[-1]['step'] + 1}" if losses else "starting"
            else:
                where = f"{len(cell.episodes())} episodes"
        except Exception:  # noqa: BLE001  (a file being written: the count can wait)
            where = "running"
        out.append(f"{c.label} ({where})")
    return out


def run_cells(cells: list[GridCell], root, ro: RayOptions, done_values: dict | None = None,
              *, quiet: bool = False) -> GridSummary:
    """Run `cells` (dependencies listed before dependents) on Ray; `done_values`: keys already complete."""
    import ray
    from ray.exceptions import RayError

    root = str(Path(root).resolve())
    done_values = dict(done_values or {})
    summary = GridSummary(skipped=[str(k) for k in done_values])
    t0 = time.perf_counter()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))  # noqa: E731
    if not cells:
        summary.values = done_values
        say(f"[grid] nothing to do: {len(done_values)} cells already complete")
        return summary
    connect(ro)
    check_resources(ro)
    env = forwarded()
    run_id = uuid.uuid4().hex[:12]
    remote = ray.remote(_run_cell)
    refs: dict[CellKey, Any] = {}
    by_ref: dict[Any, GridCell] = {}
    for c in cells:
        deps = []
        for d in c.deps:
            if d in refs:
                deps.append(refs[d])
            elif d in done_values:
                deps.append({"ok": True, "value": done_values[d]})
            else:
                raise UserError(f"cell {c.label} depends on {d}, which is neither in the grid nor complete")
        ref = remote.options(num_cpus=ro.cpus_per_cell if c.cpus is None else c.cpus,
                             num_gpus=ro.gpus_per_cell if c.gpus is None else c.gpus,
                             max_retries=ro.max_retries, retry_exceptions=False,
                             name=f"cell {c.label}").remote(root, _astuple(c.key), run_id, env, c.fn, c.args, *deps)
        refs[c.key] = ref
        by_ref[ref] = c
    say(f"[grid] {len(cells)} cells to run, {len(done_values)} already complete; "
        f"{ro.cpus_per_cell:g} CPU / {ro.gpus_per_cell:g} GPU per cell, {ro.max_retries} retries")
    pending = list(by_ref)
    last_line, last_t = "", 0.0
    failed_keys: set = set()
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        for ref in ready:
            c = by_ref[ref]
            try:
                out = ray.get(ref)
            except RayError as e:  # the worker died more than max_retries times, or a dependency did
                if any(d in failed_keys for d in c.deps):
                    out = {"ok": False, "blocked": True, "error": "a dependency failed"}
                else:
                    out = {"ok": False, "error": f"worker lost after {ro.max_retries} retries: {_short(e)}"}
                    record_failure(root, c.key, out["error"], str(e))
            el = time.perf_counter() - t0
            if out.get("ok"):
                summary.done.append(c.label)
                summary.values[c.key] = out["value"]
                extra = f", attempt {out['attempt']}" if out.get("attempt", 1) > 1 else ""
                say(f"[grid {el:5.0f}s] done    {c.label} ({out.get('wall_s', 0):.0f} s{extra})")
            elif out.get("blocked"):
                failed_keys.add(c.key)
                summary.blocked.append((c.label, out["error"]))
                say(f"[grid {el:5.0f}s] skipped {c.label}: depends on a failed cell")
            else:
                failed_keys.add(c.key)
                summary.failed.append((c.label, out["error"]))
                say(f"[grid {el:5.0f}s] FAILED  {c.label}: {out['error']} (traceback in "
                    f"{c.key.path(root) / ERROR_FILE})")
        running = _running(root, [by_ref[r] for r in pending], run_id) if pending else []
        finished = len(summary.done) + len(summary.failed) + len(summary.blocked)
        line = (f"[grid] {finished}/{len(cells)} finished: {len(summary.done)} done, {len(running)} running, "
                f"{len(summary.failed)} failed, {len(pending) - len(running)} left")
        now = time.perf_counter()
        if line != last_line or now - last_t > 30:
            say(line + f" ({now - t0:.0f} s)" + (": " + "; ".join(running) if running else ""))
            last_line, last_t = line, now
    summary.values = {**done_values, **summary.values}
    summary.wall_s = time.perf_counter() - t0
    return summary


def _astuple(k: CellKey) -> tuple:
    return (k.experiment, k.variant, k.suite, k.seed, k.opt_level)
