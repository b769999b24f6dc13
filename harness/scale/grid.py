"""`wam-bench run` (= `make run`): the grid, as Ray tasks (harness/grid.py).

demos (cached) -> train every variant × seed -> evaluate each at its levels on every suite, plus the
scripted-expert and random reference rows -> time each eval cell's policy alone (the report's
latency, like for like; `harness/eval/cell.py` `time_alone`) -> report. Train and eval cells are Ray tasks with
declared CPUs/GPUs and retries (a local Ray by default, `--address` for a cluster); every cell
lives in the results store, so a re-run (even after the driver was killed) skips what is finished
and resumes what is not. A failed cell is recorded with its traceback and the command exits 1.

Several suites (`--suites A,B`) train ONE model per variant and seed on all their demonstrations,
as the papers train one model on the four LIBERO suites, and evaluate it on each suite: one
train cell (suite `A+B`, `harness.results.store.joint_suite`), one eval cell per suite. The
suites must share cameras, composition and sizes; `--train-per-suite` trains one model per suite.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.config import Registry, ResolvedVariant, override, resolve_variant
from harness.errors import UserError


def all_variants(include_path=()) -> tuple:
    """The default grid: every variant the registry knows (built-in, plus --include-path folders)."""
    return tuple(Registry(list(include_path)).names("variant"))


@dataclass
class GridOptions:
    experiment: str = "default"
    variants: tuple = field(default_factory=all_variants)
    suites: tuple = ("tabletop",)
    seeds: tuple = (0,)
    levels: tuple = ("O1-kvcache",)
    demos: int = 500
    steps: int | None = None
    episodes: int | None = None
    workers: int = 1                  # environment processes per eval cell (and demo processes)
    envs_per_worker: int = 1          # environments in each of them
    max_batch: int = 1                # observations inferred in one call (1: in-run latency stays batch-1)
    root: str = "results"
    reports: str = "reports"
    references: bool = True
    include_path: tuple = ()
    datasets: dict = field(default_factory=dict)  # suite -> dataset folder (default: cached demos)
    demo_image_size: int | None = None  # cached demos' camera size (default: the suite's image_size)
    skip_unsupported: bool = False    # demos of only the tasks the scripted expert can do
    progress: bool = False            # per-cell progress bars (off: the grid prints a summary)
    device: str = "cpu"               # of the eval cells' policies (`cell_device`)
    train_workers: int = 1            # processes per train cell: > 1 is a Ray Train worker group
    train_cpus: float = 1.0           # per train worker (the grid's --cpus-per-cell)
    train_gpus: float = 0.0           # per train worker (the grid's --gpus-per-cell)
    time_alone: bool = True           # after the cells: each eval cell's policy timed alone (`time_alone`)
    train_per_suite: bool = False     # one model per suite instead of one for all of `suites`


def train_groups(o: GridOptions) -> list[tuple[str, ...]]:
    """The suites each trained model is for, sorted: all of `o.suites` together (one model, as the
    papers train), or each alone (`train_per_suite`); a single suite is its own group either way."""
    if o.train_per_suite:
        return [(s,) for s in o.suites]
    return [tuple(sorted(set(o.suites)))]


def check_joint(specs: list) -> None:
    """Refuse, before any work, suites that cannot train one model (one line naming both)."""
    first = specs[0]
    for s in specs[1:]:
        for what in ("cameras", "compose", "state_dim", "action_dim"):
            if getattr(s, what) != getattr(first, what) and not (what == "compose" and len(s.cameras) == 1):
                raise UserError(f"suites {first.name} and {s.name} cannot train one model: {what} {getattr(first, what)} "
                                f"vs {getattr(s, what)}; run them apart, or pass --train-per-suite")


def train_key(o: GridOptions, variant: str, suite: str, seed: int):
    from harness.results.store import CellKey
    return CellKey(o.experiment, variant, suite, seed, "train")


def resolved(o: GridOptions, variant: str, seed: int) -> ResolvedVariant:
    rv = resolve_variant(variant, Registry(list(o.include_path)))
    sets = {"train.seed": seed}
    if o.steps:
        sets["train.steps"] = o.steps
    return ResolvedVariant(override(rv.variant, sets), rv.backbone)


def train_cell(o: GridOptions, variant: str, suite: str, seed: int, datasets: str | list, position: int = 0) -> str:
    """One train cell (`suite`: one suite, or a `joint_suite` name) on its dataset(s), one per suite:
    returns the checkpoint path (resumes a partial training, skips a finished one)."""
    from harness.data.lerobot import dataset_identity
    from harness.results.store import Store
    from harness.train import train
    cell = Store(o.root).cell(train_key(o, variant, suite, seed))
    ckpt = trained_checkpoint(o, variant, suite, seed, dataset_identity(datasets))
    if ckpt:
        return ckpt
    rv = resolved(o, variant, seed)
    if o.train_workers > 1:  # this task only coordinates; the worker group holds the CPUs/GPUs
        from harness.train.launch import RayTrainOptions, train_on_ray
        ro = RayTrainOptions(workers=o.train_workers, cpus_per_worker=o.train_cpus, gpus_per_worker=o.train_gpus)
        res = train_on_ray(rv, datasets, cell.path, ro, desc=f"train {variant:<18}", progress=o.progress)
    else:
        res = train(rv, datasets, cell.path, desc=f"train {variant:<18}", progress=o.progress)
    return str(res.checkpoint)


def trained_checkpoint(o: GridOptions, variant: str, suite: str, seed: int, datasets: list[dict]) -> str | None:
    """The checkpoint of a finished train cell with this exact config and data, else None."""
    from harness.results.store import Store
    cell = Store(o.root).cell(train_key(o, variant, suite, seed))
    return finished_training(cell, resolved(o, variant, seed), datasets)


def finished_training(cell, rv: ResolvedVariant, datasets: list[dict]) -> str | None:
    """The checkpoint of `cell` when it finished training `rv` on `datasets` (`dataset_identity`),
    else None. One finished on other demonstrations is refused: evaluating it beside cells trained
    on these would compare models of different data as if paired."""
    from harness.data.lerobot import same_data
    info = cell.train_info()
    ckpt = cell.path / cell.CHECKPOINT
    if not (info and info.get("step") == rv.variant.train.steps and info.get("config_hash") == rv.hash
            and ckpt.exists() and "datasets" in info):
        return None
    if not same_data(info["datasets"], datasets):
        was, now = (", ".join(f"{d['path']} ({d['sha256'][:12]})" for d in x) for x in (info["datasets"], datasets))
        raise UserError(f"{cell.path} was trained on {was}, this run's demonstrations are {now}: use another "
                        "--experiment (or --root), or delete that train cell to train it again")
    return str(ckpt)


def eval_cell(checkpoint: str, o: GridOptions, variant: str, suite: str, seed: int, level_name: str) -> dict:
    """One eval cell: the checkpoint at one optimization level, into the store (`build_policy`,
    as `wam-bench eval` does, so either command reuses the cell the other made)."""
    from harness.eval.cell import evaluate_cell
    from harness.policy.policy import build_policy
    from harness.results.store import CellKey, Store
    reg = Registry(list(o.include_path))
    spec = reg.suite(suite)
    policy = build_policy(checkpoint, level_name, registry=reg, device=o.device, suite=spec)
    res = evaluate_cell(Store(o.root).cell(CellKey(o.experiment, variant, suite, seed, level_name)), spec,
                        policy, checkpoint_path=checkpoint, episodes_per_task=o.episodes, workers=o.workers,
                        progress=o.progress, max_batch=o.max_batch, envs_per_worker=o.envs_per_worker)
    return res["metrics"]


def reference_cell(o: GridOptions, ref: str, suite: str, seed: int) -> dict:
    """The scripted-expert or random reference row of one suite."""
    from harness.eval.cell import evaluate_cell
    from harness.results.store import CellKey, Store
    spec = Registry(list(o.include_path)).suite(suite)
    res = evaluate_cell(Store(o.root).cell(CellKey(o.experiment, ref, suite, seed, "reference")), spec, ref,
                        episodes_per_task=o.episodes, workers=o.workers, progress=o.progress,
                        envs_per_worker=o.envs_per_worker)
    return res["metrics"]


def absolute(o: GridOptions) -> GridOptions:
    """Paths as absolute ones: Ray workers may run in another folder (or on another node)."""
    return replace(o, root=str(Path(o.root).resolve()), include_path=tuple(str(Path(p).resolve()) for p in o.include_path))


def train_cost(o: GridOptions, variant: str, seed: int) -> float:
    """A training's relative cost (frames per sample, plus its actions at a frame per 8): the
    trainings are queued longest first, so the last to start on a small machine is a short one."""
    from harness.model.layouts import layout
    v = resolved(o, variant, seed).variant
    return layout(v.layout).cost(v)


def plan_grid(o: GridOptions, datasets: dict) -> tuple[list, dict, list]:
    """-> (cells to run, {key: value} of cells already complete, every expected key)."""
    from harness.data.lerobot import dataset_identity
    from harness.eval.cell import cell_source, reusable
    from harness.scale.ray_cells import GridCell
    from harness.policy.checkpoint import file_sha256
    from harness.policy.levels import not_applicable
    from harness.results.store import CellKey, Result, Store, joint_suite
    reg = Registry(list(o.include_path))
    suites = {s: reg.suite(s) for s in o.suites}
    store = Store(o.root)
    cells, done, expected = [], {}, []
    identity = {tuple(g): dataset_identity([datasets[s] for s in g]) for g in train_groups(o)}  # hashed once
    for v in o.variants:
        for group in train_groups(o):
            ts = joint_suite(group)
            for seed in o.seeds:
                tk = train_key(o, v, ts, seed)
                expected.append(tk)
                ckpt = trained_checkpoint(o, v, ts, seed, identity[tuple(group)])
                if ckpt:
                    done[tk] = ckpt
                else:
                    res = {"cpus": 0, "gpus": 0} if o.train_workers > 1 else {}
                    cells.append(GridCell(tk, train_cell, (o, v, ts, seed, [datasets[s] for s in group]),
                                          label=f"train {v}/{ts}/seed{seed}", **res))
                spec = resolved(o, v, seed).variant
                sha = file_sha256(ckpt) if ckpt else None  # hashes the checkpoint once
                for s, lvl in ((s, lvl) for s in group for lvl in o.levels):
                    source = cell_source(suites[s], ckpt, checkpoint_sha256=sha, device=o.device) if ckpt else None
                    key = CellKey(o.experiment, v, s, seed, lvl)
                    expected.append(key)
                    cell = store.cell(key)
                    why = not_applicable(reg.opt_level(lvl), spec)
                    if why:  # recorded by the driver: no work, no worker
                        if not cell.is_complete():
                            cell.write_result(Result(o.experiment, v, s, seed, lvl, status="complete", extra={"n/a": why}))
                        done[key] = None
                    elif source and reusable(cell, suites[s], source, o.episodes):
                        done[key] = cell.result()["metrics"]
                    else:
                        cells.append(GridCell(key, eval_cell, (o, v, s, seed, lvl), deps=(tk,),
                                              label=f"eval {v}/{s}/seed{seed}/{lvl}"))
    if o.references:
        for ref in ("expert", "random"):
            for s in o.suites:
                for seed in o.seeds:
                    key = CellKey(o.experiment, ref, s, seed, "reference")
                    expected.append(key)
                    cell = store.cell(key)
                    if reusable(cell, suites[s], cell_source(suites[s], policy=ref), o.episodes):
                        done[key] = cell.result()["metrics"]
                    else:
                        cells.append(GridCell(key, reference_cell, (o, ref, s, seed), label=f"eval {ref}/{s}/seed{seed}"))
    return cells, done, expected


def run_grid(o: GridOptions, ro=None) -> dict:
    """Run the whole grid on Ray; returns {"failed": [(what, error)], "summary", "index", "wall_s"}."""
    from harness.data.demos import make_demos
    from harness.scale.ray_cells import RayOptions, run_cells
    from harness.results.report import write_report

    ro = ro or RayOptions()
    o = absolute(o)
    reg = Registry(list(o.include_path))
    suites = {s: reg.suite(s) for s in o.suites}
    for v in o.variants:
        reg.variant(v)  # unknown names fail before any work starts
    for name in o.levels:
        reg.opt_level(name)
    for group in train_groups(o):
        check_joint([suites[s] for s in group])
    t0 = time.perf_counter()

    # 1. demonstrations (cached by suite version, seed, count), made by the driver
    datasets = dict(o.datasets)
    for name, spec in suites.items():
        if name not in datasets:
            print(f"[demos] {name}: {o.demos} expert episodes", flush=True)
            # nothing else runs yet, so every core makes demos (the dataset does not depend on it)
            workers = max(o.workers, ro.num_cpus or os.cpu_count() or 1)
            datasets[name] = str(make_demos(spec, o.demos, seed=0, workers=workers, image_size=o.demo_image_size,
                                            skip_unsupported=o.skip_unsupported).resolve())

    # 2. train cells, then the eval cells that depend on them, and the reference rows, on Ray
    cells, done, expected = plan_grid(o, datasets)
    cells.sort(key=lambda c: -train_cost(o, c.key.variant, c.key.seed) if c.fn is train_cell else 0.0)
    summary = run_cells(cells, o.root, ro, done)
    print(f"[grid] {summary.line()}", flush=True)
    failed = [(label, err) for label, err in summary.failed]
    failed += [(label, f"not run: {err}") for label, err in summary.blocked]

    # 3. each eval cell's policy timed alone: latency like for like between variants and levels
    if o.time_alone:
        from harness.eval.cell import time_alone
        from harness.results.store import REFERENCE_LEVEL
        t1 = time.perf_counter()
        n = time_alone(o.root, [k for k in expected if not k.is_train and k.opt_level != REFERENCE_LEVEL], reg,
                       device=o.device)
        print(f"[latency] {n} cells timed alone ({time.perf_counter() - t1:.0f} s)", flush=True)

    # 4. report
    index = write_report(o.root, o.experiment, o.reports, expected=expected, registry=Registry(list(o.include_path)))
    print(f"[report] {index}")
    print(f"[done] {time.perf_counter() - t0:.0f} s, {len(summary.failed)} failed, {len(summary.blocked)} not run")
    return {"failed": failed, "index": index, "wall_s": time.perf_counter() - t0, "summary": summary}


def add_arguments(p):
    p.add_argument("--experiment", default="default")
    p.add_argument("--variants", default=None, help="comma-separated (default: every variant the registry knows)")
    p.add_argument("--suites", default="tabletop",
                   help="comma-separated; several train one model per variant and seed on all their demos "
                        "(one train cell A+B) and evaluate it on each")
    p.add_argument("--train-per-suite", action="store_true", help="with several --suites: one model per suite instead")
    p.add_argument("--seeds", default="0")
    p.add_argument("--levels", default="O1-kvcache", help="comma-separated optimization levels to evaluate")
    p.add_argument("--demos", type=int, default=500, help="expert episodes per suite")
    p.add_argument("--steps", type=int, default=None, help="override every variant's train.steps")
    p.add_argument("--episodes", type=int, default=None, help="evaluation episodes per task (default: the suite's)")
    add_eval_arguments(p)
    add_demo_arguments(p)
    p.add_argument("--root", default="results")
    p.add_argument("--reports", default="reports")
    p.add_argument("--no-references", action="store_true", help="skip the expert and random rows")
    p.add_argument("--no-solo-latency", action="store_true", help="skip timing each policy alone after the episodes")
    p.add_argument("--workers-per-cell", type=int, default=1,
                   help="training processes per train cell: a Ray Train worker group (DDP, or FSDP2 for wan22-*), "
                        "each with --cpus-per-cell CPUs and --gpus-per-cell GPUs")
    add_ray_arguments(p)


def add_eval_arguments(p):
    p.add_argument("--workers", type=int, default=1, help="environment processes per eval cell (and demo processes)")
    p.add_argument("--envs-per-worker", type=int, default=1, help="environments in each of them")
    p.add_argument("--max-batch", type=int, default=1,
                   help="an eval cell's observations inferred in one call, up to this many (its environments: "
                        "--workers x --envs-per-worker); each episode gets batch 1's actions, and the report's latency "
                        "is each policy timed alone at batch 1 after the run")


def add_demo_arguments(p):
    p.add_argument("--demo-image-size", type=int, default=None,
                   help="camera size of the expert demos made for training (default: the suite's image_size; "
                        "a CPU preset trains as well on 128 px LIBERO demos, and the evaluation still renders "
                        "the suite's size)")
    p.add_argument("--skip-unsupported", action="store_true",
                   help="make demos of only the tasks the scripted expert can do (named; the others are "
                        "still evaluated, with no demonstrations)")


def add_ray_arguments(p):
    g = p.add_argument_group("Ray")
    g.add_argument("--address", default=None, help="existing Ray cluster (e.g. ray://host:10001 or auto); "
                   "default: start a local Ray. The results root must be on storage every node sees")
    g.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all cores)")
    g.add_argument("--cpus-per-cell", type=float, default=1.0, help="CPUs per cell (= its torch threads)")
    g.add_argument("--gpus-per-cell", type=float, default=0.0,
                   help="GPUs per cell (per train worker; > 0: eval cells run on cuda)")
    g.add_argument("--device", default=None, help="torch device of the eval cells' policies (default: cuda with "
                   "--gpus-per-cell > 0, else cpu)")
    g.add_argument("--max-retries", type=int, default=3, help="retries of a cell whose worker process died")


def ray_options_from_args(args):
    from harness.scale.ray_cells import RayOptions
    if args.cpus_per_cell <= 0 or args.gpus_per_cell < 0 or args.max_retries < 0:
        raise UserError("--cpus-per-cell must be > 0, --gpus-per-cell and --max-retries >= 0")
    return RayOptions(address=args.address, num_cpus=args.num_cpus, cpus_per_cell=args.cpus_per_cell,
                      gpus_per_cell=args.gpus_per_cell, max_retries=args.max_retries)


def cell_device(args) -> str:
    """A cell sees a GPU only when it reserves one: Ray leaves the GPUs visible to cells that do
    not, so cuda without --gpus-per-cell would share them behind the scheduler's back."""
    device = args.device or ("cuda" if args.gpus_per_cell > 0 else "cpu")
    if device.startswith("cuda") and args.gpus_per_cell <= 0:
        raise UserError(f"--device {device} needs --gpus-per-cell > 0 (GPUs each cell reserves)")
    return device


def options_from_args(args) -> GridOptions:
    split = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())  # noqa: E731
    variants = split(args.variants) if args.variants else all_variants(args.include_path)
    return GridOptions(experiment=args.experiment, variants=variants, suites=split(args.suites),
                       seeds=tuple(int(x) for x in split(args.seeds)), levels=split(args.levels), demos=args.demos,
                       steps=args.steps, episodes=args.episodes, workers=args.workers,
                       envs_per_worker=args.envs_per_worker, max_batch=args.max_batch, root=args.root,
                       reports=args.reports, references=not args.no_references, include_path=tuple(args.include_path),
                       device=cell_device(args), train_workers=args.workers_per_cell, train_cpus=args.cpus_per_cell,
                       train_gpus=args.gpus_per_cell, time_alone=not args.no_solo_latency,
                       train_per_suite=args.train_per_suite, demo_image_size=args.demo_image_size,
                       skip_unsupported=args.skip_unsupported)


def check_eval_arguments(args) -> None:
    for name in ("workers", "envs_per_worker", "max_batch"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


def main(args) -> int:
    check_eval_arguments(args)
    if args.workers_per_cell < 1:
        raise UserError(f"--workers-per-cell must be at least 1, got {args.workers_per_cell}")
    out = run_grid(options_from_args(args), ray_options_from_args(args))
    for what, err in out["failed"]:
        print(f"FAILED {what}: {err}")
    return 1 if out["failed"] else 0
