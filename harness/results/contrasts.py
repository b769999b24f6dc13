"""Paired contrasts between variants, with the variance between training seeds in the interval.

The ablation trains every variant with the same K training seeds on the same demonstrations
and evaluates each checkpoint on the same episodes (task, init state, episode seed, noise seeds),
so a contrast such as fastwam − fastwam-no-cotrain is taken episode by episode within a seed,
and then averaged over seeds. Its uncertainty has two sources: the episodes (a few tens per cell)
and the training seeds (usually the larger one in small-data imitation learning).

The interval is hierarchical, training seeds over episodes. With K >= 2 seeds the variance of a
seed's mean already holds its episode noise, so the seeds are the units: SE = sd(seed means) / sqrt(K), with a Student-t
quantile on K - 1 degrees of freedom. (The two-stage bootstrap that also resamples episodes
counts that episode noise twice: in a simulation with 3 seeds x 40 episodes its 95% interval
covered the truth 98.5-100% of the time, and a percentile interval over 3 seeds has only 10
distinct resamples.) With a single training seed the episodes are resampled (bootstrap SE,
normal quantile) and `seeds_measured` is False: seed-to-seed variance is then not in the
interval. The paired test is the same t statistic, so "resolved at 95%" and "the interval
excludes 0" never disagree. The smallest resolvable gap is the one this design would detect at
95% with 80% power, from the measured SE. Basic per-cell intervals stay in stats.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

N_BOOT = 2000
EPISODE_DF = 1_000_000  # one training seed: episodes are the units, a normal quantile


@dataclass(frozen=True)
class Contrast:
    """A named linear combination of variant means, e.g. {"fastwam": 1, "fastwam-no-cotrain": -1}."""
    name: str
    weights: tuple[tuple[str, float], ...]
    question: str = ""

    @property
    def variants(self) -> list[str]:
        return [v for v, _ in self.weights]

    def minus(self, other: "Contrast", name: str, question: str = "") -> "Contrast":
        """self − other, as one contrast (a contrast of contrasts)."""
        w: dict[str, float] = {}
        for v, x in self.weights:
            w[v] = w.get(v, 0.0) + x
        for v, x in other.weights:
            w[v] = w.get(v, 0.0) - x
        return Contrast(name, tuple((v, x) for v, x in w.items() if x != 0), question)


def gap(a: str, b: str, name: str, question: str = "") -> Contrast:
    return Contrast(name, ((a, 1.0), (b, -1.0)), question)


COTRAIN = gap("fastwam", "fastwam-no-cotrain", "co-training gap", "does video co-training help? (fastwam − fastwam-no-cotrain)")
MASKING = gap("fastwam-joint", "fastwam", "imagination gap (joint)",
              "does imagining the future at test time help? (fastwam-joint − fastwam)")
IDM = gap("fastwam-idm", "fastwam", "imagination gap (idm)", "video first, then inverse dynamics (fastwam-idm − fastwam)")
DREAMZERO = gap("dreamzero", "fastwam", "dreamzero − fastwam", "autoregressive joint WAM against Fast-WAM")
COTRAIN_VS_MASKING = COTRAIN.minus(MASKING, "co-training gap − masking gap",
                                   "is the co-training gap larger than the masking gap?")
CONTRASTS = [COTRAIN, MASKING, IDM, DREAMZERO, COTRAIN_VS_MASKING]


@dataclass
class Estimate:
    """A mean (or contrast) over training seeds and episodes, with its 95% interval."""
    name: str
    estimate: float
    ci95: tuple[float, float]
    se: float
    p_value: float                 # two-sided, H0: the true value is 0
    mde: float                     # smallest |value| resolvable at 95% with 80% power
    seeds: list[int]
    n_episodes: int                # paired episodes per variant, summed over seeds
    seeds_measured: bool           # False with one training seed: seed variance not in the interval
    per_seed: dict = field(default_factory=dict)  # {seed: that seed's mean}

    @property
    def resolved(self) -> bool:
        return self.p_value < 0.05

    def to_dict(self) -> dict:
        return {"name": self.name, "estimate": self.estimate, "ci95": list(self.ci95), "se": self.se,
                "p_value": self.p_value, "resolved": self.resolved, "mde": self.mde, "seeds": self.seeds,
                "n_episodes": self.n_episodes, "seeds_measured": self.seeds_measured, "per_seed": self.per_seed}


def hierarchical_boot(groups: list[np.ndarray], n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of the mean of per-group means: draw groups (training seeds) with
    replacement, then values (episodes) with replacement within each draw. Vectorised over resamples;
    groups may differ in size. With one group, only the values are resampled."""
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError("hierarchical_boot: every group needs at least one value")
    rng = np.random.default_rng(seed)
    k = len(groups)
    sizes = np.array([len(g) for g in groups])
    pad = np.full((k, sizes.max()), np.nan)
    for i, g in enumerate(groups):
        pad[i, :len(g)] = g
    top = rng.integers(0, k, size=(n_boot, k)) if k > 1 else np.zeros((n_boot, 1), dtype=int)
    n = sizes[top]                                                     # (B, K)
    idx = np.floor(rng.random((n_boot, k, sizes.max())) * n[..., None]).astype(int)
    vals = pad[top[..., None], idx]                                    # (B, K, Emax)
    valid = np.arange(sizes.max()) < n[..., None]
    means = np.where(valid, vals, 0.0).sum(-1) / n
    return means.mean(axis=1)


def _t(q: float, df: float) -> float:
    from scipy.stats import t
    return float(t.ppf(q, df))


def estimate(name: str, per_seed: dict[int, np.ndarray], n_boot: int = N_BOOT, seed: int = 0,
             bounds: tuple[float, float] | None = None) -> Estimate:
    """Mean over seeds of the per-seed mean of `per_seed[s]` (episode values, or paired differences);
    `bounds` clips the interval to the quantity's range (a rate's [0, 1])."""
    from scipy.stats import t
    seeds = sorted(per_seed)
    groups = [np.asarray(per_seed[s], dtype=float) for s in seeds]
    means = [float(g.mean()) for g in groups]
    est = float(np.mean(means))
    if len(seeds) > 1:
        se, df = float(np.std(means, ddof=1) / np.sqrt(len(seeds))), len(seeds) - 1
    else:
        se, df = float(hierarchical_boot(groups, n_boot, seed).std(ddof=1)), EPISODE_DF
    if se == 0.0:  # every value identical: no uncertainty measurable
        p = 1.0 if est == 0.0 else 0.0
        return Estimate(name, est, (est, est), 0.0, p, 0.0, seeds, sum(map(len, groups)), len(seeds) > 1,
                        dict(zip(seeds, means)))
    q = _t(0.975, df)
    p = float(2 * t.sf(abs(est) / se, df))
    lo, hi = est - q * se, est + q * se
    if bounds:
        lo, hi = max(bounds[0], lo), min(bounds[1], hi)
    return Estimate(name, est, (lo, hi), se, p, (q + _t(0.80, df)) * se, seeds,
                    sum(map(len, groups)), len(seeds) > 1, dict(zip(seeds, means)))


def paired_values(outcomes: dict[str, dict[int, dict[str, float]]], contrast: Contrast) -> dict[int, np.ndarray]:
    """{seed: per-episode contrast values} from {variant: {seed: {episode_id: value}}}.

    Only seeds every variant of the contrast has, and within a seed only the episodes every one of
    them ran (the same episode ids mean the same task, init state, episode seed and noise seeds)."""
    out = {}
    have = [outcomes.get(v, {}) for v in contrast.variants]
    for s in sorted(set.intersection(*(set(h) for h in have)) if have else ()):
        ids = sorted(set.intersection(*(set(h[s]) for h in have)))
        if ids:
            out[s] = sum(w * np.array([outcomes[v][s][i] for i in ids], dtype=float) for v, w in contrast.weights)
    return out


def contrast_estimate(outcomes: dict[str, dict[int, dict[str, float]]], contrast: Contrast,
                      n_boot: int = N_BOOT) -> Estimate | None:
    """The contrast's paired estimate, or None when some variant has no seed in common with the others."""
    vals = paired_values(outcomes, contrast)
    return estimate(contrast.name, vals, n_boot) if vals else None


def variant_estimate(outcomes: dict[str, dict[int, dict[str, float]]], variant: str,
                     n_boot: int = N_BOOT) -> Estimate | None:
    """One variant's success (or progress) over its seeds and episodes, its interval within [0, 1]."""
    per = {s: np.array(list(eps.values()), dtype=float) for s, eps in outcomes.get(variant, {}).items() if eps}
    return estimate(variant, per, n_boot, bounds=(0.0, 1.0)) if per else None


def outcomes_from_episodes(cells: dict[tuple[str, int], list[dict]], metric: str = "success") -> dict:
    """{variant: {seed: {episode_id: value}}} from {(variant, seed): episode records}; errors left out."""
    from harness.results.stats import is_error
    out: dict = {}
    for (variant, seed), eps in cells.items():
        vals = {e["episode_id"]: float(e[metric]) for e in eps if not is_error(e) and e.get(metric) is not None}
        out.setdefault(variant, {})[seed] = vals
    return out
