"""`wam-bench demos`: scripted-expert demonstrations written as a LeRobot dataset, streamed and resumable.

Generic over suites: it only uses the `SuiteEnv` interface and `expert_action()`, so any adapter
with an expert (tabletop, LIBERO) reuses it. Episode i of the dataset is task i mod n (round-robin,
as many per task as the published LIBERO sets by default: 50). Each task's attempts j = 0, 1, ...
start from fresh random inits drawn from (seed, task, j), a seed stream disjoint from the
evaluation inits; only successful ones are kept, and a task runs exactly the attempts it needs
(its first `quota` successes), so the dataset and the expert's per-task success (printed, and
stored in `info.json` under `wam_bench.demos`) depend on the seed alone, not on the worker count,
timing or interruptions. An adapter may name the tasks its expert cannot do (`expert_gaps`, LIBERO
does from the BDDL goals): `demos` refuses those up front with the reasons, or leaves them out
with --skip-unsupported (recorded as `skipped_tasks`).

Streaming: a worker writes each successful episode to a spill file as it finishes; the main
process encodes them, in dataset order, into segments of `SEGMENT` episodes (one data parquet and
one mp4 per camera each) and records every attempt's outcome and every finished segment in
`progress.jsonl`. So memory holds one episode at a time, and after Ctrl-C or kill -9 the same
command continues where it stopped: finished segments and spilled episodes are kept, only the
attempts in flight run again. The folder is `<out>.partial/` until meta/ is written from the
journal (rows and statistics of every segment) and it is renamed to `<out>`.

`--image-size` renders (and stores) the cameras at another size than the suite's; the dataset's
features record it and training resizes from it. `--image-stride K` renders the cameras only at
steps 0, K, 2K, ... of an episode: every row keeps its state and action, and a row between two
rendered ones holds the last rendered frame, so the file is an ordinary LeRobot dataset that any
loader reads. The dataset records K (`info.json` `wam_bench.image_stride`), and the training
windows start only at rendered rows and refuse a variant whose frame stride K does not divide
(harness/data/windows.py). The default is the adapter's `DEMO_IMAGE_STRIDE`: LIBERO renders at the
variants' frame stride 4, because rendering its two cameras is ~85% of a demo's cost and the model
only ever looks at frames 4 steps apart (a policy observes every `action_horizon` = 8 steps, the
DreamZero history every `frame_stride` = 4; `bench demos` measures it); tabletop renders every step.
The default output `data/demos/<suite>-v<version>-seed<S>-n<N>[-px<size>][-stride<K>]/` is a cache: a complete dataset made with
the same settings is reused.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from harness.config import Registry, SuiteSpec, spec_hash, to_dict
from harness.env import apply, forwarded
from harness.errors import UserError

DEFAULT_NOISE = 0.1      # Gaussian std on the expert's action: diverse, still ~98% successful
DEFAULT_PER_TASK = 50    # demonstrations per task when --episodes is not given (the published LIBERO sets)
MAX_ATTEMPTS = 8         # per kept episode: worse than 1 in 8 is a bug, not bad luck (libero_10's stove-and-moka-pot task: ~20%)
SEGMENT = 10             # episodes per data/video file: what a kill -9 can cost at most, re-encoded
JOURNAL, SPILL = "progress.jsonl", "spill"


def add_arguments(p):
    p.add_argument("--suite", default="tabletop", help="suite name (suites/*.yaml or --include-path)")
    p.add_argument("--episodes", type=int, default=None,
                   help=f"successful episodes to keep, round-robin over tasks (default {DEFAULT_PER_TASK} per task)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=None,
                   help="camera size to render and store (default: the suite's image_size)")
    p.add_argument("--image-stride", type=int, default=None,
                   help="render the cameras every K steps; rows between hold the last frame (default: the "
                        "adapter's, LIBERO 4 = the variants' frame stride, tabletop 1)")
    p.add_argument("--out", default=None,
                   help="dataset folder (default data/demos/<suite>-v<version>-seed<S>-n<N>[-px<size>][-stride<K>])")
    p.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    p.add_argument("--noise", type=float, default=None,
                   help=f"expert action noise std (default {DEFAULT_NOISE} where the adapter supports it)")
    p.add_argument("--no-video", action="store_true", help="store frames as PNG in parquet instead of MP4")
    p.add_argument("--force", action="store_true", help="start over even if a complete or partial dataset exists")
    p.add_argument("--skip-unsupported", action="store_true",
                   help="leave out the tasks the scripted expert cannot do (named, and recorded in the dataset)")


def main(args) -> int:
    spec = Registry(args.include_path).suite(args.suite)
    make_demos(spec, args.episodes, args.seed, out=args.out, workers=args.workers, noise=args.noise,
               image_size=args.image_size, image_stride=args.image_stride, video=not args.no_video,
               force=args.force, skip_unsupported=args.skip_unsupported)
    return 0


def expert_gaps(spec: SuiteSpec) -> dict[str, str]:
    """{task: why the adapter's scripted expert cannot do it}, when the adapter can tell up front."""
    from harness.suites.base import adapter_class
    gaps = getattr(adapter_class(spec), "expert_gaps", None)
    return gaps(spec) if gaps else {}


def default_image_stride(spec: SuiteSpec) -> int:
    """Steps between rendered frames in the adapter's demos when --image-stride is not given."""
    from harness.suites.base import adapter_class
    return int(getattr(adapter_class(spec), "DEMO_IMAGE_STRIDE", 1))


def default_episodes(spec: SuiteSpec) -> int:
    return DEFAULT_PER_TASK * len(spec.tasks)


def default_out(spec: SuiteSpec, episodes: int, seed: int, noise: float | None = None,
                image_size: int | None = None, image_stride: int | None = None) -> Path:
    tag = "" if noise is None or noise == DEFAULT_NOISE else f"-noise{noise:g}"
    if image_size is not None and image_size != spec.image_size:
        tag += f"-px{image_size}"
    if image_stride is not None and image_stride != default_image_stride(spec):
        tag += f"-stride{image_stride}"
    return Path("data") / "demos" / f"{spec.name}-v{spec.version}-seed{seed}-n{episodes}{tag}"


def spill_name(task: int, attempt: int) -> str:
    """The file a successful attempt waits in until its segment is written."""
    return f"t{task:04d}-a{attempt:06d}.npz"


def attempt_seed(seed: int, task: int, attempt: int) -> int:
    """The init seed of one attempt: distinct for every (seed, task, attempt)."""
    return int(np.random.SeedSequence([seed, task, attempt]).generate_state(1)[0])


def make_demos(spec: SuiteSpec, episodes: int | None = None, seed: int = 0, out=None, workers: int = 2,
               noise: float | None = None, *, image_size: int | None = None, image_stride: int | None = None,
               video: bool = True, force: bool = False, quiet: bool = False, segment: int = SEGMENT,
               skip_unsupported: bool = False) -> Path:
    """Write (or reuse, or finish) `episodes` successful expert demos of `spec`; return the folder."""
    from harness.data.lerobot import open_dataset

    gaps = expert_gaps(spec)
    if gaps and not skip_unsupported:
        raise UserError(f"demos: the scripted expert cannot do {len(gaps)} of {len(spec.tasks)} tasks of {spec.name}: "
                        + "; ".join(f"{t} ({why})" for t, why in gaps.items())
                        + ". Pass --skip-unsupported to make demos of the others")
    if gaps:
        spec = dataclasses.replace(spec, tasks=[t for t in spec.tasks if t.name not in gaps])
        if not spec.tasks:
            raise UserError(f"demos: the scripted expert can do none of the tasks of {spec.name}")
    episodes = default_episodes(spec) if episodes is None else episodes
    if episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {episodes}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if noise is not None and not noise >= 0:
        raise UserError(f"--noise must be a non-negative number, got {noise}")
    if image_size is not None and image_size < 8:
        raise UserError(f"--image-size must be at least 8 pixels, got {image_size}")
    if image_stride is not None and image_stride < 1:
        raise UserError(f"--image-stride must be at least 1 (render every step), got {image_stride}")
    if not spec.tasks:
        raise UserError(f"suite '{spec.name}' has no tasks")
    from harness.suites.base import require_runnable
    require_runnable(spec)
    stride = default_image_stride(spec) if image_stride is None else image_stride
    out = Path(out) if out is not None else default_out(spec, episodes, seed, noise, image_size, stride)
    if image_size is not None:
        spec = dataclasses.replace(spec, image_size=image_size)
    settings = {"suite": spec.name, "version": spec.version, "seed": seed, "episodes": episodes,
                "noise": noise, "spec_hash": spec_hash(spec), "video": video, "segment": segment,
                "image_size": spec.image_size}
    if stride != 1:  # absent means 1: datasets made before the stride stay cache hits
        settings["image_stride"] = stride
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))  # noqa: E731
    work = out.with_name(out.name + ".partial")
    if force:
        shutil.rmtree(work, ignore_errors=True)
    elif out.exists():
        cached = _cached(out, settings, open_dataset)
        if cached is not None:
            say(f"demos: reusing {out} ({episodes} episodes, expert success {cached:.1%}); --force rewrites it")
            return out
        say(f"demos: {out} exists but is incomplete or made with other settings; rewriting it")

    run = _Run(spec, episodes, seed, noise, work, settings, segment, say)
    run.collect(workers, quiet)
    rate = run.successes / run.attempts
    per_task = run.per_task()
    info = {"demos": {**settings, "expert_success_rate": rate, "attempts": run.attempts, "per_task": per_task,
                      "skipped_tasks": gaps, "cameras": list(spec.cameras), "suite_spec": to_dict(spec)}}
    run.writer.finish(info_extra={**info, "image_stride": stride})
    from harness.data.lerobot import replace_dir
    replace_dir(work, out)
    shutil.rmtree(out / SPILL, ignore_errors=True)
    (out / JOURNAL).unlink(missing_ok=True)
    every = "" if stride == 1 else f", rendered every {stride} steps"
    say(f"demos: wrote {episodes} episodes ({spec.image_size}px {'+'.join(spec.cameras)}{every}) to {out}; "
        f"expert success {rate:.1%} ({run.successes}/{run.attempts} attempts)")
    width = max(len(t) for t in per_task)
    for name, t in per_task.items():
        say(f"  {name:<{width}}  {t['successes']:>4}/{t['attempts']:<4} {t['rate']:6.1%}")
    return out


def _cached(out: Path, settings: dict, open_dataset) -> float | None:
    """The stored success rate when `out` is a complete dataset with these settings, else None."""
    try:
        ds = open_dataset(out)
    except Exception:  # noqa: BLE001  (a broken folder is simply not a cache hit)
        return None
    d = ds.info_extra.get("demos") or {}
    if ds.num_episodes != settings["episodes"] or any(d.get(k) != v for k, v in settings.items()):
        return None
    return float(d.get("expert_success_rate", float("nan")))


class _Run:
    """One dataset being made in `work`: the attempts' outcomes, the segments written, the writer.

    Task t's attempts are numbered j = 0, 1, ...; episode i is the (i // n)-th success of task
    i % n in attempt order. An attempt is launched only while the task's known successes plus its
    attempts in flight fall short of what the episodes up to a horizon need, so each task runs
    exactly the attempts up to its quota-th success whatever finishes first."""

    def __init__(self, spec, episodes, seed, noise, work: Path, settings: dict, segment: int, say):
        from harness.data.lerobot import DatasetWriter
        self.spec, self.episodes, self.seed, self.noise = spec, episodes, seed, noise
        self.stride = settings.get("image_stride", 1)
        self.work, self.segment, self.say = work, segment, say
        self.n = len(spec.tasks)
        self.quotas = [episodes // self.n + (1 if t < episodes % self.n else 0) for t in range(self.n)]
        self.outcome: list[dict[int, bool]] = [{} for _ in range(self.n)]   # per task: attempt -> success
        self.running: list[set[int]] = [set() for _ in range(self.n)]
        self.sources: list[tuple[int, int]] = []  # (task, attempt) of every committed episode
        state = self._resume(settings)
        self.writer = DatasetWriter(work, spec.control_hz, video=settings["video"], state=state)

    # ------------------------------------------------------------------ journal
    def _resume(self, settings: dict) -> dict | None:
        """Read `progress.jsonl` of an interrupted run with the same settings; else start afresh."""
        path = self.work / JOURNAL
        lines = []
        if path.is_file():
            for raw in path.read_text().splitlines():
                try:
                    lines.append(json.loads(raw))
                except json.JSONDecodeError:  # the line a kill cut short: that attempt runs again
                    break
        if not lines or lines[0].get("settings") != settings:
            if self.work.exists():
                self.say(f"demos: {self.work} was made with other settings; starting over")
                shutil.rmtree(self.work)
            (self.work / SPILL).mkdir(parents=True)
            self._log({"settings": settings})
            return None
        state = None
        rows: list = []
        for line in lines[1:]:
            if "attempt" in line:
                t, j, ok = line["attempt"]
                self.outcome[t][j] = ok
            elif "segment" in line:
                self.sources += [tuple(s) for s in line["sources"]]
                rows += line["rows"]
                state = {**line["writer"], "rows": list(rows)}
        committed = set(self.sources)
        for t, res in enumerate(self.outcome):  # a success whose spill is gone and is not written runs again
            for j in [j for j, ok in res.items() if ok and (t, j) not in committed
                      and not self._spill(t, j).is_file()]:
                del res[j]
        self.say(f"demos: resuming {self.work}: {len(self.sources)} episodes written, "
                 f"{self.successes} successes in {self.attempts} attempts so far")
        return state

    def _log(self, line: dict) -> None:
        with open(self.work / JOURNAL, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _spill(self, t: int, j: int) -> Path:
        return self.work / SPILL / spill_name(t, j)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def attempts(self) -> int:
        return sum(len(r) for r in self.outcome)

    @property
    def successes(self) -> int:
        return sum(sum(r.values()) for r in self.outcome)

    def kept(self) -> int:
        return sum(min(sum(r.values()), q) for r, q in zip(self.outcome, self.quotas))

    def per_task(self) -> dict:
        out = {}
        for t, res in enumerate(self.outcome):
            wins = sum(res.values())
            out[self.spec.tasks[t].name] = {"attempts": len(res), "successes": wins, "rate": wins / max(len(res), 1)}
        return out

    def source(self, i: int) -> tuple[int, int] | None:
        """(task, attempt) of episode i once the task's outcomes decide it, else None."""
        t, k = i % self.n, i // self.n
        res, seen, j = self.outcome[t], 0, 0
        while j in res:
            if res[j]:
                if seen == k:
                    return t, j
                seen += 1
            j += 1
        return None

    def to_launch(self, slots: int, workers: int) -> list[tuple[int, int]]:
        """Attempts to start now, earliest episodes first, at most `slots`; no further ahead of the
        written episodes than the open segment and two rounds of workers (bounded spill)."""
        out: list[tuple[int, int]] = []
        horizon = min(self.episodes, len(self.sources) + self.segment + 2 * workers)
        need = [0] * self.n
        for i in range(horizon):
            t = i % self.n
            need[t] += 1
            if i < len(self.sources):
                continue
            res, run = self.outcome[t], self.running[t]
            pending = [a for a in out if a[0] == t]
            if sum(res.values()) + len(run) + len(pending) >= need[t] or len(out) >= slots:
                continue
            j = 0
            while j in res or j in run or (t, j) in pending:
                j += 1
            if j >= MAX_ATTEMPTS * self.quotas[t]:
                if not run:
                    raise UserError(f"demos: the expert of task {self.spec.tasks[t].name} succeeded in under 1 of "
                                    f"{MAX_ATTEMPTS} attempts; check the task, or lower --noise")
                continue
            out.append((t, j))
        return out

    def record(self, t: int, j: int, ok: bool) -> None:
        self.running[t].discard(j)
        self.outcome[t][j] = ok
        self._log({"attempt": [t, j, ok]})

    def commit_ready(self) -> None:
        """Encode every complete next segment from its spills, in dataset order."""
        from harness.data.lerobot import Episode
        while len(self.sources) < self.episodes:
            first = len(self.sources)
            ids = range(first, min(first + self.segment, self.episodes))
            srcs = [self.source(i) for i in ids]
            if any(s is None for s in srcs):
                return
            before = len(self.writer)
            for t, j in srcs:
                with np.load(self._spill(t, j)) as z:
                    meta = json.loads(str(z["meta"]))
                    T = len(z["action"])
                    ep = Episode(task=meta["task"], state=z["state"], action=z["action"], extra=meta["extra"],
                                 images={c: held(z[f"image.{c}"], T, self.stride) for c in meta["cameras"]})
                self.writer.append(ep)
                del ep
            self.writer.roll()
            state = self.writer.state()
            rows = state.pop("rows")[before:]
            self._log({"segment": first // self.segment, "sources": srcs, "rows": rows, "writer": state})
            self.sources += srcs
            for t, j in srcs:
                self._spill(t, j).unlink(missing_ok=True)

    # ------------------------------------------------------------------ the loop
    def collect(self, workers: int, quiet: bool) -> None:
        from tqdm import tqdm

        self.commit_ready()
        bar = tqdm(total=self.episodes, initial=self.kept(), unit="ep", desc=f"demos {self.spec.name}",
                   disable=quiet, dynamic_ncols=True)
        # Task t always runs in process t % workers: a process then holds only its own tasks'
        # simulators (a LIBERO environment is ~0.9 GB; ten tasks in every process took 9 GB each).
        pools = []
        if workers > 1:
            pools = [ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_init_worker,
                                         initargs=(forwarded(),)) for _ in range(workers)]
        pending: dict = {}  # future -> (task, attempt)
        try:
            while len(self.sources) < self.episodes:
                busy = {t % workers for t, _ in pending.values()}
                for t, j in self.to_launch(2 * workers, workers):
                    if t % workers in busy:
                        continue
                    busy.add(t % workers)
                    self.running[t].add(j)
                    args = (self.spec, t, j, attempt_seed(self.seed, t, j), self.noise, self._spill(t, j), self.stride)
                    pending[pools[t % workers].submit(_attempt, *args) if pools else _Done(_attempt(*args))] = (t, j)
                if not pending:
                    self.commit_ready()
                    if len(self.sources) < self.episodes:
                        raise RuntimeError("demos: nothing to run and episodes missing (a scheduling bug)")
                    break
                done = wait(list(pending), return_when=FIRST_COMPLETED)[0] if pools else list(pending)
                for fut in done:
                    t, j = pending.pop(fut)
                    kept_before = self.kept()
                    self.record(t, j, fut.result())
                    bar.update(self.kept() - kept_before)
                bar.set_postfix(success=f"{self.successes / max(self.attempts, 1):.0%}", refresh=False)
                self.commit_ready()
        finally:
            bar.close()
            for pool in pools:
                pool.shutdown(cancel_futures=True)
            if not pools:
                _close_envs()
            self.writer.close()


class _Done:
    """A finished 'future' for the in-process path (workers=1)."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def _init_worker(env_vars: dict) -> None:
    apply(env_vars)
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass


_ENVS: dict = {}  # per process: (suite hash, task) -> env, reused across attempts, least recently used first

def max_envs() -> int:
    """Simulators a demos process keeps (LIBERO: ~0.9 GB each); $WAM_BENCH_DEMO_ENVS, default 6."""
    return max(int(os.environ.get("WAM_BENCH_DEMO_ENVS", "6")), 1)


def _close_envs() -> None:
    while _ENVS:
        _ENVS.popitem()[1].close()


def _attempt(spec: SuiteSpec, task: int, attempt: int, init_seed: int, noise: float | None, spill: Path,
             stride: int = 1) -> bool:
    """One expert rollout from a fresh random init (`record_expert`). A success is written to
    `spill` (atomically, the rendered frames only) before this returns True."""
    from harness.suites.base import make_env

    key = (spec_hash(spec), task)
    env = _ENVS.pop(key, None)
    if env is None:
        while len(_ENVS) >= max_envs():
            _ENVS.pop(next(iter(_ENVS))).close()
        env = make_env(spec, task)
    _ENVS[key] = env
    if noise is None:
        noise = DEFAULT_NOISE if hasattr(env, "expert_noise") else None
    elif not hasattr(env, "expert_noise"):
        raise UserError(f"suite adapter '{spec.adapter}' has no expert noise; leave --noise out")
    if noise is not None:
        env.expert_noise = noise
    env.reset(None, init_seed)
    rec = record_expert(env, stride)
    if rec is None:
        return False
    states, actions, images = rec
    extra = {"task_name": env.task.name, "init_seed": init_seed, "attempt": attempt, "steps": len(actions)}
    if getattr(env, "start", None) is not None:
        extra["start"] = env.start  # the start state, for replay through the evaluator's reset
    meta = {"task": env.task.instruction, "cameras": list(spec.cameras), "extra": extra}
    tmp = spill.with_name(spill.name + f".tmp{os.getpid()}.npz")
    np.savez(tmp, state=states, action=actions, meta=np.array(json.dumps(meta)),
             **{f"image.{c}": v for c, v in images.items()})
    os.replace(tmp, spill)
    return True


def record_expert(env, stride: int = 1) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """The scripted expert from the env's current state (just reset) until success or the suite's
    max steps. A success gives (states (T, S), actions (T, A), {camera: the frames of steps 0,
    stride, 2*stride, ... (ceil(T / stride), H, W, 3)}): the cameras are rendered only at those
    steps, at the spec's image size, through the evaluator's own `observe`. A failure gives None."""
    images = {c: [] for c in env.spec.cameras}
    states, actions = [], []
    for k in range(env.spec.max_steps):
        obs = env.observe(render=k % stride == 0)
        try:
            action = np.asarray(env.expert_action(), dtype=np.float32)
        except NotImplementedError as e:  # this task has no scripted expert: say which and why
            raise UserError(f"demos: {e}") from None
        for c in obs.images:
            images[c].append(obs.images[c])
        states.append(obs.state)
        actions.append(action)
        env.step(action)
        if env.success():
            return (np.asarray(states, np.float32), np.asarray(actions, np.float32),
                    {c: np.asarray(v, np.uint8) for c, v in images.items()})
    return None


def held(frames: np.ndarray, steps: int, stride: int) -> np.ndarray:
    """Frames rendered every `stride` steps -> one per step, each row holding the last rendered."""
    return frames[np.arange(steps) // stride]
