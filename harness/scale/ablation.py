"""`wam-bench ablation`: the paired multi-seed design behind the report's Findings (issue 17).

Every variant is trained with the same K training seeds on the same demonstrations, and each
checkpoint is evaluated on the same episodes: the episode plan (task, init state, episode seed)
is a function of the suite and the training seed only, and the sampling noise of call c is
noise_seed + c, so a contrast is taken episode by episode (harness/results/contrasts.py).
The checkpoints trained on the train suite are also evaluated on a generalization split
(`tabletop-shuffled` by default). Several train suites (`--suites A,B`, or `--train-suite A,B`)
train one model per variant and seed on all their demonstrations (one train cell `A+B`, as
`wam-bench run`), evaluated on each eval suite. `--demo-counts` adds the data-efficiency axis: the same
design trained on fewer demonstrations, each count in its own experiment `<experiment>-demos<N>`.

Cells run on Ray through the grid's own cell functions, so the run resumes like `wam-bench run`.
Every eval cell records the load it ran under (`extra.load`, as every eval cell does). After
the episodes, each eval cell's policy is timed alone on the machine (`latency_solo` in its
result), because latencies measured while other cells share the cores are not like for like.
The design (variants, seeds, datasets and their hashes) is written to `<experiment>/ablation.json`.
Every train cell records the demonstrations it saw (`dataset_identity`): a checkpoint is reused
only for the same data, and `pairing_problems` compares them across the experiment's trainings.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.config import Registry
from harness.errors import UserError
from harness.results.findings import DESIGN_FILE
from harness.scale.grid import GridOptions, all_variants


@dataclass
class AblationOptions:
    experiment: str = "ablation"
    variants: tuple = field(default_factory=all_variants)
    seeds: tuple = (0, 1, 2)
    train_suites: tuple = ("tabletop",)   # several: one model trained on all of them
    eval_suites: tuple = ("tabletop", "tabletop-shuffled")
    level: str = "O1-kvcache"
    demos: int = 500
    demo_counts: tuple = ()          # data efficiency: extra experiments at these demo counts
    steps: int | None = None
    episodes: int | None = None
    workers: int = 1
    envs_per_worker: int = 1
    max_batch: int = 1
    device: str = "cpu"              # of the eval cells' policies (the grid's `cell_device`)
    root: str = "results"
    reports: str = "reports"
    include_path: tuple = ()
    datasets: dict = field(default_factory=dict)   # demo count -> dataset folders, one per train suite (default: cached demos)
    demo_image_size: int | None = None  # cached demos' camera size (default: the suite's image_size)
    skip_unsupported: bool = False      # demos of only the tasks the scripted expert can do
    time_alone: bool = True
    progress: bool = False


def demos_experiment(experiment: str, n: int) -> str:
    return f"{experiment}-demos{n}"


def grid_options(o: AblationOptions, experiment: str, demos: int) -> GridOptions:
    return GridOptions(experiment=experiment, variants=o.variants, suites=tuple(o.train_suites), seeds=o.seeds,
                       levels=(o.level,), demos=demos, steps=o.steps, episodes=o.episodes, workers=o.workers,
                       envs_per_worker=o.envs_per_worker, max_batch=o.max_batch, root=o.root, reports=o.reports,
                       include_path=o.include_path, progress=o.progress, device=o.device)


def plan(o: AblationOptions, datasets: dict[int, str]) -> tuple[list, dict, list, dict]:
    """-> (cells to run, {key: value} complete, every expected key, {experiment: GridOptions})."""
    from harness.data.lerobot import dataset_identity
    from harness.eval.cell import cell_source, reusable
    from harness.results.store import CellKey, Store, joint_suite
    from harness.scale.grid import eval_cell, reference_cell, train_cell, train_key, trained_checkpoint
    from harness.scale.ray_cells import GridCell
    reg = Registry(list(o.include_path))
    store = Store(o.root)
    cells, done, expected, grids = [], {}, [], {}
    train_suite = joint_suite(o.train_suites)
    runs = [(o.experiment, o.demos, o.eval_suites)] + [(demos_experiment(o.experiment, n), n, tuple(o.train_suites))
                                                       for n in o.demo_counts if n != o.demos]
    for exp, n, eval_suites in runs:
        g = grids[exp] = grid_options(o, exp, n)
        identity = dataset_identity(datasets[n])
        for v in o.variants:
            for seed in o.seeds:
                tk = train_key(g, v, train_suite, seed)
                expected.append(tk)
                ckpt = trained_checkpoint(g, v, train_suite, seed, identity)
                if ckpt:
                    done[tk] = ckpt
                else:
                    cells.append(GridCell(tk, train_cell, (g, v, train_suite, seed, datasets[n]),
                                          label=f"train {v}/{exp}/seed{seed}"))
                for s in eval_suites:
                    key = CellKey(exp, v, s, seed, o.level)
                    expected.append(key)
                    spec = reg.suite(s)
                    if ckpt and reusable(store.cell(key), spec, cell_source(spec, ckpt, device=o.device), o.episodes):
                        done[key] = store.cell(key).result()["metrics"]
                    else:
                        cells.append(GridCell(key, eval_cell, (g, v, s, seed, o.level), deps=(tk,),
                                              label=f"eval {v}/{exp}/{s}/seed{seed}"))
        if exp != o.experiment:
            continue
        for ref in ("expert", "random"):
            for s in eval_suites:
                key = CellKey(exp, ref, s, 0, "reference")
                expected.append(key)
                cell = store.cell(key)
                if reusable(cell, reg.suite(s), cell_source(reg.suite(s), policy=ref), o.episodes):
                    done[key] = cell.result()["metrics"]
                else:
                    cells.append(GridCell(key, reference_cell, (g, ref, s, 0), label=f"eval {ref}/{s}"))
    return cells, done, expected, grids


def pairing_problems(store_root, experiment: str) -> list[str]:
    """What breaks the pairing in an experiment: variants of one (suite, seed, level) that ran
    different episodes (task, init state, episode seed) or different noise seeds, and trainings
    on other demonstrations than the rest (or with none recorded). Empty when every comparison
    is paired."""
    from harness.data.lerobot import same_data
    from harness.results.store import REFERENCE_VARIANTS, Store
    store = Store(store_root)
    episodes, trained, problems = {}, {}, []
    for c in store.cells(experiment):
        k = c.key
        if k.is_train:
            info = c.train_info() or {}
            if "step" in info:  # a finished training
                trained.setdefault(k.suite, {})[(k.variant, k.seed)] = info.get("datasets")
            continue
        if k.variant in REFERENCE_VARIANTS or not c.episodes_path.exists():
            continue
        src = c.source() or {}
        plan_ = sorted((e["task_index"], e["init_index"], e["seed"]) for e in c.episodes())
        episodes.setdefault((k.suite, k.seed, k.opt_level), {})[k.variant] = (plan_, src.get("noise_seed"),
                                                                              src.get("suite_hash"))
    for (suite, seed, level), by_v in sorted(episodes.items()):
        ref_v = sorted(by_v)[0]
        for v, got in sorted(by_v.items()):
            for i, what in enumerate(("episodes (task, init state, episode seed)", "noise seed", "suite version")):
                if got[i] != by_v[ref_v][i]:
                    problems.append(f"{suite}/seed{seed}/{level}: {v} and {ref_v} ran different {what}")
    for suite, by_run in sorted(trained.items()):
        (ref_v, ref_seed), ref = min(by_run.items(), key=lambda kv: kv[0])
        for (v, seed), data in sorted(by_run.items()):
            if data is None:
                problems.append(f"{suite}: the training of {v}/seed{seed} recorded no demonstrations; train it again")
            elif ref is not None and not same_data(data, ref):
                paths = [", ".join(d["path"] for d in x) for x in (data, ref)]
                problems.append(f"{suite}: {v}/seed{seed} was trained on other demonstrations than "
                                f"{ref_v}/seed{ref_seed} ({paths[0]} vs {paths[1]})")
    return problems


def run_ablation(o: AblationOptions, ro=None) -> dict:
    """Run the design on Ray, time each policy alone, write the report; returns {"failed", "index", "wall_s"}."""
    from harness.data.demos import make_demos
    from harness.data.lerobot import dataset_identity
    from harness.results.report import write_report
    from harness.results.store import atomic_write_json, joint_suite
    from harness.scale.ray_cells import RayOptions, run_cells
    from harness.eval.cell import time_alone
    from harness.scale.grid import check_joint, train_cost

    ro = ro or RayOptions()
    o = replace(o, root=str(Path(o.root).resolve()), include_path=tuple(str(Path(p).resolve()) for p in o.include_path))
    reg = Registry(list(o.include_path))
    for v in o.variants:
        reg.variant(v)
    for s in (*o.train_suites, *o.eval_suites):
        reg.suite(s)
    reg.opt_level(o.level)
    check_joint([reg.suite(s) for s in sorted(o.train_suites)])
    if not o.seeds:
        raise UserError("--seeds: give at least one training seed (three or more measure seed-to-seed variance)")
    t0 = time.perf_counter()
    datasets = {int(k): [str(p) for p in ([v] if isinstance(v, (str, Path)) else v)] for k, v in o.datasets.items()}
    for n in sorted({o.demos, *o.demo_counts}):
        if n not in datasets:  # one dataset per train suite, in joint_suite's (sorted) order
            datasets[n] = []
            for s in sorted(o.train_suites):
                print(f"[demos] {s}: {n} expert episodes", flush=True)
                workers = max(o.workers, ro.num_cpus or os.cpu_count() or 1)
                datasets[n].append(str(make_demos(reg.suite(s), n, seed=0, workers=workers, image_size=o.demo_image_size,
                                                  skip_unsupported=o.skip_unsupported).resolve()))
    cells, done, expected, grids = plan(o, datasets)
    for exp, g in grids.items():
        n = g.demos
        atomic_write_json(Path(o.root) / exp / DESIGN_FILE, {
            "variants": list(o.variants), "seeds": list(o.seeds), "train_suite": joint_suite(o.train_suites),
            "eval_suites": list(o.eval_suites) if exp == o.experiment else sorted(o.train_suites), "level": o.level,
            "demos": n, "steps": o.steps, "episodes_per_task": o.episodes, "noise_seed": 0,
            "datasets": {str(n): dataset_identity(datasets[n])},
            "demo_counts": {str(k): demos_experiment(o.experiment, k) for k in o.demo_counts if k != o.demos}})
    from harness.scale.grid import train_cell
    cells.sort(key=lambda c: -train_cost(grids[c.key.experiment], c.key.variant, c.key.seed) if c.fn is train_cell else 0.0)
    summary = run_cells(cells, o.root, ro, done)
    print(f"[ablation] {summary.line()}", flush=True)
    failed = [(label, err) for label, err in summary.failed] + [(label, f"not run: {err}") for label, err in summary.blocked]
    if o.time_alone:
        eval_keys = [k for k in expected if not k.is_train and k.opt_level != "reference"]
        t1 = time.perf_counter()
        n = time_alone(o.root, eval_keys, reg, device=o.device)
        print(f"[latency] {n} cells timed alone ({time.perf_counter() - t1:.0f} s)", flush=True)
    for exp in grids:
        if exp != o.experiment:
            write_report(o.root, exp, o.reports, expected=[k for k in expected if k.experiment == exp])
    index = write_report(o.root, o.experiment, o.reports, expected=[k for k in expected if k.experiment == o.experiment])
    problems = pairing_problems(o.root, o.experiment)
    for p in problems:
        print(f"[pairing] {p}")
    wall = time.perf_counter() - t0
    print(f"[report] {index}\n[done] {wall:.0f} s, {len(summary.failed)} failed, {len(summary.blocked)} not run")
    return {"failed": failed, "index": index, "wall_s": wall, "summary": summary, "pairing": problems}


def add_arguments(p):
    from harness.scale.grid import add_demo_arguments, add_eval_arguments, add_ray_arguments
    p.add_argument("--experiment", default="ablation")
    p.add_argument("--variants", default=None, help="comma-separated (default: every variant the registry knows)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds, the same for every variant")
    p.add_argument("--train-suite", default="tabletop",
                   help="suite(s) to train on, comma-separated: several train one model on all their demos")
    p.add_argument("--eval-suites", default="tabletop,tabletop-shuffled",
                   help="suites the checkpoints are evaluated on (the train suite and a generalization split)")
    p.add_argument("--suites", default=None,
                   help="train one model on all of these suites and evaluate it on each (sets --train-suite and "
                        "--eval-suites), e.g. libero_spatial,libero_object,libero_goal,libero_10")
    p.add_argument("--level", default="O1-kvcache", help="the optimization level every variant is evaluated at")
    p.add_argument("--demos", type=int, default=500, help="expert episodes to train on")
    p.add_argument("--demo-counts", default="", help="data efficiency: also train and evaluate at these demo "
                   "counts (comma-separated, e.g. 50,100,200), each as experiment <experiment>-demos<N>")
    p.add_argument("--steps", type=int, default=None, help="override every variant's train.steps")
    p.add_argument("--episodes", type=int, default=None, help="evaluation episodes per task (default: the suite's)")
    add_eval_arguments(p)
    add_demo_arguments(p)
    p.add_argument("--no-solo-latency", action="store_true", help="skip timing each policy alone after the episodes")
    p.add_argument("--root", default="results")
    p.add_argument("--reports", default="reports")
    add_ray_arguments(p)


def options_from_args(args) -> AblationOptions:
    from harness.scale.grid import cell_device, check_eval_arguments
    split = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())  # noqa: E731
    try:
        seeds = tuple(int(x) for x in split(args.seeds))
        counts = tuple(int(x) for x in split(args.demo_counts))
    except ValueError:
        raise UserError("--seeds and --demo-counts take comma-separated integers, e.g. 0,1,2") from None
    check_eval_arguments(args)
    if args.demos < 1 or any(n < 1 for n in counts):
        raise UserError("--demos and every --demo-counts value must be at least 1")
    train, evals = (split(args.suites),) * 2 if args.suites else (split(args.train_suite), split(args.eval_suites))
    if not train or not evals:
        raise UserError("--suites / --train-suite / --eval-suites: name at least one suite")
    return AblationOptions(experiment=args.experiment, variants=split(args.variants) if args.variants else all_variants(args.include_path), seeds=seeds,
                           train_suites=train, eval_suites=evals, level=args.level,
                           demos=args.demos, demo_counts=counts, steps=args.steps, episodes=args.episodes,
                           workers=args.workers, envs_per_worker=args.envs_per_worker, max_batch=args.max_batch,
                           device=cell_device(args), root=args.root, reports=args.reports,
                           include_path=tuple(args.include_path), time_alone=not args.no_solo_latency,
                           demo_image_size=args.demo_image_size, skip_unsupported=args.skip_unsupported)


def main(args) -> int:
    from harness.scale.grid import ray_options_from_args
    out = run_ablation(options_from_args(args), ray_options_from_args(args))
    for what, err in out["failed"]:
        print(f"FAILED {what}: {err}")
    return 1 if out["failed"] or out["pairing"] else 0
