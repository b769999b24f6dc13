"""Paired contrasts: a known gap is recovered, and the 95% interval covers the truth ~95% of the time."""
import numpy as np
import pytest

from harness.results.contrasts import (COTRAIN, COTRAIN_VS_MASKING, MASKING, contrast_estimate, estimate,
                                       hierarchical_boot, outcomes_from_episodes, paired_values, variant_estimate)


def synthetic(rng, delta, seeds=3, episodes=40, seed_spread=0.15, base=0.5):
    """Paired synthetic outcomes {variant: {seed: {episode_id: success}}}: each training seed moves
    each variant's success rate by up to ±seed_spread; the true gap a − b is `delta` exactly."""
    out = {"a": {}, "b": {}}
    for s in range(seeds):
        pa = base + delta / 2 + rng.uniform(-seed_spread, seed_spread)
        pb = base - delta / 2 + rng.uniform(-seed_spread, seed_spread)
        out["a"][s] = {f"e{i}": float(x) for i, x in enumerate(rng.random(episodes) < pa)}
        out["b"][s] = {f"e{i}": float(x) for i, x in enumerate(rng.random(episodes) < pb)}
    return out


def paired_differences(rng, delta, sims, seeds, episodes, seed_spread):
    """The same design as `synthetic`, drawn for `sims` repetitions at once: (sims, seeds, episodes)
    per-episode differences a − b."""
    shift = rng.uniform(-seed_spread, seed_spread, (2, sims, seeds, 1))
    a = rng.random((sims, seeds, episodes)) < 0.5 + delta / 2 + shift[0]
    b = rng.random((sims, seeds, episodes)) < 0.5 - delta / 2 + shift[1]
    return a.astype(float) - b.astype(float)


AB = COTRAIN.__class__("a − b", (("a", 1.0), ("b", -1.0)))


def test_recovers_a_known_gap_and_resolves_it():
    rng = np.random.default_rng(0)
    est = contrast_estimate(synthetic(rng, 0.3, seeds=6, episodes=200, seed_spread=0.05), AB)
    assert abs(est.estimate - 0.3) < 0.05
    assert est.ci95[0] < 0.3 < est.ci95[1] and est.resolved and est.p_value < 1e-3
    assert est.seeds_measured and len(est.per_seed) == 6 and est.n_episodes == 6 * 200
    null = contrast_estimate(synthetic(rng, 0.0, seeds=3, episodes=20), AB)
    assert null.ci95[0] < 0 < null.ci95[1] or not null.resolved


@pytest.mark.parametrize("seeds,episodes,spread", [(3, 20, 0.15), (3, 40, 0.0), (5, 40, 0.25)])
def test_interval_covers_the_truth_about_95_percent_of_the_time(seeds, episodes, spread):
    rng = np.random.default_rng(seeds * 1000 + episodes)
    delta, sims = 0.1, 600
    d = paired_differences(rng, delta, sims, seeds, episodes, spread)
    d0 = paired_differences(rng, 0.0, sims, seeds, episodes, spread)
    hits = sum(e.ci95[0] <= delta <= e.ci95[1] for e in (estimate("x", dict(enumerate(x))) for x in d))
    resolved_when_null = sum(estimate("x", dict(enumerate(x))).resolved for x in d0)
    assert 0.925 <= hits / sims <= 0.975, hits / sims           # binomial sd at 95%, 600 runs: 0.9%
    assert resolved_when_null / sims <= 0.075                    # the paired test's false-positive rate


def test_single_seed_interval_is_over_episodes_and_says_so():
    rng = np.random.default_rng(1)
    runs = [estimate("x", {0: x[0]}, n_boot=500) for x in paired_differences(rng, 0.1, 300, 1, 60, 0.0)]
    hits = sum(e.ci95[0] <= 0.1 <= e.ci95[1] for e in runs)
    e = runs[0]
    assert not e.seeds_measured
    assert 0.90 <= hits / 300 <= 0.985


def test_smallest_resolvable_gap_is_resolved_about_80_percent_of_the_time():
    rng = np.random.default_rng(2)
    mde = np.mean([estimate("x", dict(enumerate(x))).mde for x in paired_differences(rng, 0.0, 200, 3, 40, 0.1)])
    power = np.mean([estimate("x", dict(enumerate(x))).resolved for x in paired_differences(rng, mde, 400, 3, 40, 0.1)])
    assert 0.6 <= power <= 0.95, (mde, power)  # t-based: ~80% at the design's typical SE


def test_pairing_keeps_only_shared_seeds_and_episodes():
    outcomes = {"fastwam": {0: {"x": 1.0, "y": 1.0, "z": 0.0}, 1: {"x": 1.0}},
                "fastwam-no-cotrain": {0: {"x": 0.0, "y": 1.0}, 2: {"x": 0.0}}}
    vals = paired_values(outcomes, COTRAIN)
    assert list(vals) == [0] and sorted(vals[0].tolist()) == [0.0, 1.0]   # episode z and seeds 1, 2 unpaired
    assert contrast_estimate({"fastwam": {0: {"x": 1.0}}}, COTRAIN) is None


def test_contrast_of_contrasts_weights():
    w = dict(COTRAIN_VS_MASKING.weights)
    assert w == {"fastwam": 2.0, "fastwam-no-cotrain": -1.0, "fastwam-joint": -1.0}
    assert set(MASKING.variants) == {"fastwam-joint", "fastwam"}


def test_hierarchical_boot_and_variant_estimate():
    boot = hierarchical_boot([np.array([0.0, 1.0]), np.array([1.0, 1.0, 1.0])], n_boot=4000)
    assert boot.shape == (4000,) and boot.min() >= 0 and boot.max() <= 1
    assert abs(boot.mean() - 0.75) < 0.02                     # mean of the two seed means
    eps = {("fastwam", 0): [{"episode_id": "a", "success": True, "progress": 1.0},
                            {"episode_id": "b", "success": False, "progress": 0.5, "error": "SimulatorError"}],
           ("fastwam", 1): [{"episode_id": "a", "success": False, "progress": 0.2}]}
    out = outcomes_from_episodes(eps)
    assert out == {"fastwam": {0: {"a": 1.0}, 1: {"a": 0.0}}}   # the error is not a failure
    v = variant_estimate(out, "fastwam")
    assert v.estimate == 0.5 and v.seeds == [0, 1] and v.ci95 == (0.0, 1.0)  # clipped to a rate's range
    same = estimate("flat", {0: np.ones(5), 1: np.ones(5)})
    assert same.ci95 == (1.0, 1.0) and same.resolved
