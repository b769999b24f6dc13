"""`wam-bench bench scaling`: the evaluation grid on a local Ray with 2 workers against 1.

The same eval cells (one checkpoint, one seed per cell, 1 CPU and 1 torch thread per cell) run
on a local Ray of 1 CPU, then of 2 CPUs, each into a fresh store; the figure is the wall-time
ratio, `speedup_2_workers` (goal >= 1.8 on a 2-core machine). Ray start-up is outside the timed
window, worker start-up inside it. The full run alternates 1, 2, 1, 2 and takes the medians.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path


def add_arguments(p):  # the bench dispatcher's --quick / --checkpoint / --suite are enough
    pass


def _checkpoint(suite: str, tmp: Path) -> str:
    from harness.config import Registry
    from harness.data.demos import make_demos
    from harness.scale.grid import GridOptions, resolved
    from harness.train import train
    ds = make_demos(Registry().suite(suite), 8, seed=0, out=tmp / "demos", workers=1, video=False, quiet=True)
    rv = resolved(GridOptions(steps=30), "fastwam", 0)
    return str(train(rv, ds, tmp / "train", progress=False).checkpoint)


def _grid(ckpt: str, suite: str, cells: int, episodes: int, workers: int, root: Path) -> float:
    import ray
    from harness.scale.ray_cells import GridCell, RayOptions, run_cells
    from harness.scale.grid import GridOptions, eval_cell
    from harness.results.store import CellKey
    if ray.is_initialized():
        ray.shutdown()
    ro = RayOptions(num_cpus=workers, cpus_per_cell=1, max_retries=0)
    from harness.scale.ray_cells import connect
    connect(ro)
    o = GridOptions(experiment="scaling", root=str(root), episodes=episodes, workers=1)
    grid = [GridCell(CellKey("scaling", "fastwam", suite, seed, "O1-kvcache"), eval_cell,
                     (ckpt, o, "fastwam", suite, seed, "O1-kvcache")) for seed in range(cells)]
    t0 = time.perf_counter()
    out = run_cells(grid, root, ro, quiet=True)
    wall = time.perf_counter() - t0
    ray.shutdown()
    if not out.ok:
        raise RuntimeError(f"scaling grid failed: {out.failed}")
    return wall


def measure(args) -> dict:
    suite = args.suite or "tabletop"
    cells, episodes, reps = (4, 1, 1) if args.quick else (6, 2, 2)
    with tempfile.TemporaryDirectory(prefix="wam-scaling-") as d:
        tmp = Path(d)
        ckpt = args.checkpoint or _checkpoint(suite, tmp)
        walls = {1: [], 2: []}
        for r in range(reps):
            for w in (1, 2):
                walls[w].append(_grid(ckpt, suite, cells, episodes, w, tmp / f"store-{w}-{r}"))
                print(f"[scaling] {w} worker(s): {walls[w][-1]:.1f} s for {cells} cells", flush=True)
    t1, t2 = statistics.median(walls[1]), statistics.median(walls[2])
    from harness.config import Registry
    tasks = len(Registry(getattr(args, "include_path", None) or []).suite(suite).tasks)
    rows = [{"ray_workers": w, "cells": cells, "episodes_per_cell": episodes * tasks, "wall_s": statistics.median(walls[w]),
             "cells_per_min": 60 * cells / statistics.median(walls[w]), "runs": len(walls[w])} for w in (1, 2)]
    notes = [f"{os.cpu_count()} cores, shared with other jobs: the ratio is what this machine gave now",
             "each eval cell: 1 CPU, 1 torch thread, 1 environment process; Ray start-up excluded"]
    return {"figures": {"speedup_2_workers": t1 / t2, "wall_1_worker_s": t1, "wall_2_workers_s": t2},
            "rows": rows, "notes": notes}
