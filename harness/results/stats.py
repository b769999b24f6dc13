"""Metrics with honest intervals: success with Wilson 95%, progress with a seeded bootstrap,
latency percentiles with warm-up excluded, and the one-sided test the nightly gate uses.

Simulated evaluations here are small (tens of episodes per cell), so every rate carries an
interval and every comparison a p-value; a table without them invites reading noise as signal.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

import numpy as np


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; (0, 1) when n == 0 (no information)."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_ci(values: Iterable[float], n_boot: int = 2000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; seeded, so a report is the same on every run."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_ci: no values")
    if x.size == 1 or np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def latency_summary(ms: Iterable[float], warmup: int = 1) -> dict:
    """p50/p95/mean of per-call latency, dropping the first `warmup` calls of the list.

    The list is one cell's calls in the order they ran (episodes in file order), so the
    warm-up dropped is the cell's first call: lazy initialisation, torch.compile, CUDA context.
    Each episode's first call is a real call a robot would wait for and is kept. Several cells
    pooled go through `summarize_cells`, which drops each cell's own first call. A resumed
    cell's first call after reloading is not dropped: `Policy` makes untimed warm-up calls
    when it is built (harness/policy/levels.py `prepare`).
    """
    x = np.asarray(list(ms), dtype=float)[max(0, warmup):]
    if x.size == 0:
        return {"p50": None, "p95": None, "mean": None, "n": 0}
    return {"p50": float(np.percentile(x, 50)), "p95": float(np.percentile(x, 95)),
            "mean": float(x.mean()), "n": int(x.size)}


def is_error(ep: dict) -> bool:
    """An episode that raised (or has no success verdict) is an error, never a task failure."""
    return ep.get("error") is not None or ep.get("success") is None


def summarize(episodes: list[dict], warmup: int = 1) -> dict:
    """Cell metrics from one cell's episode records. Errors are left out of success and progress
    and counted apart."""
    return summarize_cells([episodes], warmup)


def summarize_cells(cells: list[list[dict]], warmup: int = 1) -> dict:
    """Metrics of several cells' episodes pooled (the seeds of one variant, suite and level);
    the first `warmup` calls of each cell are dropped, not only of the first one."""
    episodes = [e for eps in cells for e in eps]
    ok = [e for e in episodes if not is_error(e)]
    n, k = len(ok), sum(1 for e in ok if e["success"])
    prog = [float(e["progress"]) for e in ok if e.get("progress") is not None]
    maxp = [float(e["max_progress"]) for e in ok if e.get("max_progress") is not None]
    lat = [v for eps in cells for v in [float(v) for e in eps for v in (e.get("latency_ms") or [])][max(0, warmup):]]
    eff = [float(v) for e in episodes for v in (e.get("effective_steps") or [])]
    steps = sum(int(e.get("steps") or 0) for e in episodes)
    wall = sum(float(e.get("wall_s") or 0.0) for e in episodes)
    lat_s = latency_summary(lat, 0)
    return {
        "n_episodes": len(episodes),
        "n_errors": len(episodes) - n,
        "n_valid": n,
        "n_success": k,
        "success_rate": k / n if n else None,
        "success_ci95": list(wilson(k, n)) if n else None,
        "progress_mean": float(np.mean(prog)) if prog else None,
        "progress_ci95": list(bootstrap_ci(prog)) if prog else None,
        "max_progress_mean": float(np.mean(maxp)) if maxp else None,
        "latency_ms": {"p50": lat_s["p50"], "p95": lat_s["p95"], "mean": lat_s["mean"]},
        "n_calls": lat_s["n"],
        "effective_steps_mean": float(np.mean(eff)) if eff else None,
        "env_steps_per_s": steps / wall if wall > 0 else None,
    }


def per_task(episodes: list[dict]) -> dict:
    """{task: {n, success_rate, progress_mean}} over non-error episodes, tasks sorted by name."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for e in episodes:
        if not is_error(e):
            groups[str(e.get("task", e.get("task_index")))].append(e)
    out = {}
    for task in sorted(groups):
        eps = groups[task]
        prog = [float(e["progress"]) for e in eps if e.get("progress") is not None]
        out[task] = {"n": len(eps), "success_rate": sum(1 for e in eps if e["success"]) / len(eps),
                     "progress_mean": float(np.mean(prog)) if prog else None}
    return out


def two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided p-value that rate 2 (current) is below rate 1 (baseline).

    Fisher's exact test, not the normal approximation: the nightly preset has tens of episodes
    per cell, where the z-test's p-values are too small. Returns 1.0 when either n is 0.
    """
    for k, n in ((k1, n1), (k2, n2)):
        if n < 0 or k < 0 or k > n:
            raise ValueError(f"two_proportion_test: need 0 <= k <= n, got k={k}, n={n}")
    if n1 == 0 or n2 == 0:
        return 1.0
    from scipy.stats import fisher_exact
    _, p = fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="greater")
    return float(min(1.0, p))


def fisher_critical(k1: int, n1: int, n2: int, alpha: float) -> int:
    """The most successes out of n2 that `two_proportion_test` still flags against a baseline of
    k1/n1 at `alpha` (-1: no outcome is flagged). The p-value grows with k2, so the flagged
    outcomes are exactly 0..critical."""
    crit = -1
    for k2 in range(n2 + 1):
        if two_proportion_test(k1, n1, k2, n2) >= alpha:
            break
        crit = k2
    return crit


def detectable_drop(k1: int, n1: int, n2: int, alpha: float, power: float = 0.8) -> float | None:
    """The gate's power as one number: the smallest fall of the true success rate below the
    baseline's k1/n1 that a run of n2 episodes flags with probability >= `power`.

    Exact, conditional on the blessed baseline (it is fixed once written): the run is flagged
    when its successes are <= `fisher_critical`, which happens with probability
    Binomial(n2, p).cdf(critical) at true rate p. None when no outcome can be flagged."""
    from scipy.stats import binom
    crit = fisher_critical(k1, n1, n2, alpha)
    if crit < 0 or n1 == 0:
        return None
    p0 = k1 / n1
    lo, hi = 0.0, p0       # binom.cdf(crit, n2, p) falls as p rises: bisect for where it crosses `power`
    if binom.cdf(crit, n2, hi) >= power:
        return 0.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if binom.cdf(crit, n2, mid) >= power:
            lo = mid
        else:
            hi = mid
    return p0 - lo
