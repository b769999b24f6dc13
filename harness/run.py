"""`wam-bench run` (= `make run`): the grid on one machine.

demos (cached) -> train every variant × suite × seed -> evaluate each at its levels, plus the
scripted-expert and random reference rows -> report. Every cell lives in the results store, so a
re-run skips what is finished and resumes what is not.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

from harness.config import Registry, ResolvedVariant, override, resolve_variant
from harness.errors import UserError

DEFAULT_VARIANTS = ["fastwam", "fastwam-joint", "fastwam-idm", "fastwam-no-cotrain", "dreamzero", "dreamzero-flash"]


@dataclass
class GridOptions:
    experiment: str = "default"
    variants: tuple = tuple(DEFAULT_VARIANTS)
    suites: tuple = ("tabletop",)
    seeds: tuple = (0,)
    levels: tuple = ("O1-kvcache",)
    demos: int = 200
    steps: int | None = None
    episodes: int | None = None
    workers: int = 2
    root: str = "results"
    reports: str = "reports"
    references: bool = True
    include_path: tuple = ()


def train_key(o: GridOptions, variant: str, suite: str, seed: int):
    from harness.store import CellKey
    return CellKey(o.experiment, variant, suite, seed, "train")


def resolved(o: GridOptions, variant: str, seed: int) -> ResolvedVariant:
    rv = resolve_variant(variant, Registry(list(o.include_path)))
    sets = {"train.seed": seed}
    if o.steps:
        sets["train.steps"] = o.steps
    return ResolvedVariant(override(rv.variant, sets), rv.backbone)


def train_cell(o: GridOptions, variant: str, suite: str, seed: int, dataset: str, position: int = 0) -> str:
    """One train cell (runs in a worker process with one torch thread)."""
    import torch
    torch.set_num_threads(1)
    from harness.store import Store
    from harness.train import train
    cell = Store(o.root).cell(train_key(o, variant, suite, seed))
    rv = resolved(o, variant, seed)
    info = cell.train_info()
    ckpt = cell.path / "last.safetensors"
    if info and info.get("step") == rv.variant.train.steps and info.get("config_hash") == rv.hash and ckpt.exists():
        return str(ckpt)
    res = train(rv, dataset, cell.path, desc=f"train {variant:<18}", progress=True)
    return str(res.checkpoint)


def _pool(n: int):
    return cf.ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"))


def run_grid(o: GridOptions) -> dict:
    """Run the whole grid; returns {"failed": [...], "cells": [...keys]}."""
    import torch
    torch.set_num_threads(1)
    from harness.demos import make_demos
    from harness.evaluate import evaluate_cell
    from harness.levels import infer_options, not_applicable
    from harness.policy import load_policy
    from harness.levels import apply_transforms
    from harness.report import write_report
    from harness.store import CellKey, Store

    reg = Registry(list(o.include_path))
    store = Store(o.root)
    suites = {s: reg.suite(s) for s in o.suites}
    for v in o.variants:
        reg.variant(v)  # unknown names fail before any work starts
    levels = {name: reg.opt_level(name) for name in o.levels}
    t0 = time.perf_counter()
    failed, expected = [], []

    # 1. demonstrations (cached by suite version, seed, count)
    datasets = {}
    for name, spec in suites.items():
        print(f"[demos] {name}: {o.demos} expert episodes")
        datasets[name] = str(make_demos(spec, o.demos, seed=0, workers=o.workers))

    # 2. train cells, `workers` at a time
    jobs = [(v, s, seed) for v in o.variants for s in suites for seed in o.seeds]
    print(f"[train] {len(jobs)} cells on {o.workers} processes")
    ckpts = {}
    with _pool(o.workers) as pool:
        futs = {pool.submit(train_cell, o, v, s, seed, datasets[s], i % o.workers): (v, s, seed)
                for i, (v, s, seed) in enumerate(jobs)}
        for n, fut in enumerate(cf.as_completed(futs), 1):
            job = futs[fut]
            expected.append(train_key(o, *job))
            try:
                ckpts[job] = fut.result()
                print(f"[train {n}/{len(jobs)}] done {job[0]} on {job[1]} seed {job[2]}")
            except Exception as e:  # the rest of the grid goes on; the command fails at the end
                failed.append((f"train {job}", f"{type(e).__name__}: {e}"))
                print(f"[train {n}/{len(jobs)}] FAILED {job[0]} on {job[1]}: {e}")

    # 3. eval cells: every trained variant at every requested level, plus reference rows
    evals = [(job, lvl) for job in ckpts for lvl in levels]
    refs = [(ref, s, seed) for ref in ("expert", "random") for s in suites for seed in o.seeds] if o.references else []
    total = len(evals) + len(refs)
    for n, ((v, s, seed), lvl) in enumerate(evals, 1):
        key = CellKey(o.experiment, v, s, seed, lvl)
        expected.append(key)
        cell = store.cell(key)
        level = levels[lvl]
        policy = load_policy(ckpts[(v, s, seed)], infer_options(level), lvl)
        why = not_applicable(level, policy.model.v)
        print(f"[eval {n}/{total}] {v} on {s} at {lvl}" + (f": n/a ({why})" if why else ""))
        if why:
            from harness.store import Result
            cell.write_result(Result(o.experiment, v, s, seed, lvl, status="complete", extra={"n/a": why}))
            continue
        try:
            info = apply_transforms(policy.model, level)
            evaluate_cell(cell, suites[s], policy, config={"level_info": info}, checkpoint_path=ckpts[(v, s, seed)],
                          episodes_per_task=o.episodes, workers=o.workers)
        except Exception as e:
            failed.append((f"eval {key}", f"{type(e).__name__}: {e}"))
            print(f"[eval {n}/{total}] FAILED: {e}")
    for n, (ref, s, seed) in enumerate(refs, len(evals) + 1):
        key = CellKey(o.experiment, ref, s, seed, "reference")
        expected.append(key)
        print(f"[eval {n}/{total}] {ref} reference on {s}")
        evaluate_cell(store.cell(key), suites[s], ref, config={"policy": ref}, episodes_per_task=o.episodes,
                      workers=o.workers)

    # 4. report
    index = write_report(o.root, o.experiment, o.reports, expected=expected)
    print(f"[report] {index}")
    print(f"[done] {time.perf_counter() - t0:.0f} s, {len(failed)} failed")
    return {"failed": failed, "index": index, "wall_s": time.perf_counter() - t0}


def add_arguments(p):
    p.add_argument("--experiment", default="default")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    p.add_argument("--suites", default="tabletop")
    p.add_argument("--seeds", default="0")
    p.add_argument("--levels", default="O1-kvcache", help="comma-separated optimization levels to evaluate")
    p.add_argument("--demos", type=int, default=200, help="expert episodes per suite")
    p.add_argument("--steps", type=int, default=None, help="override every variant's train.steps")
    p.add_argument("--episodes", type=int, default=None, help="evaluation episodes per task (default: the suite's)")
    p.add_argument("--workers", type=int, default=2, help="parallel processes")
    p.add_argument("--root", default="results")
    p.add_argument("--reports", default="reports")
    p.add_argument("--no-references", action="store_true", help="skip the expert and random rows")


def options_from_args(args) -> GridOptions:
    split = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())  # noqa: E731
    return GridOptions(experiment=args.experiment, variants=split(args.variants), suites=split(args.suites),
                       seeds=tuple(int(x) for x in split(args.seeds)), levels=split(args.levels), demos=args.demos,
                       steps=args.steps, episodes=args.episodes, workers=args.workers, root=args.root,
                       reports=args.reports, references=not args.no_references, include_path=tuple(args.include_path))


def main(args) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    out = run_grid(options_from_args(args))
    for what, err in out["failed"]:
        print(f"FAILED {what}: {err}")
    return 1 if out["failed"] else 0
