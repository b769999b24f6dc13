"""Intervals and tests against known values and against simulation."""
import numpy as np
import pytest

from harness.results.stats import bootstrap_ci, latency_summary, per_task, summarize, two_proportion_test, wilson
from test_store import fake_episodes


def test_wilson_known_values():
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)   # Wilson (1927) textbook check
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_wilson_coverage():
    rng = np.random.default_rng(1)
    p, n = 0.3, 40
    ks = rng.binomial(n, p, size=2000)
    cover = np.mean([lo <= p <= hi for lo, hi in (wilson(int(k), n) for k in ks)])
    assert 0.93 <= cover <= 0.97


def test_bootstrap_deterministic_and_covers():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 50)
    assert bootstrap_ci(x) == bootstrap_ci(list(x))
    assert bootstrap_ci(x, seed=1) != bootstrap_ci(x, seed=0)
    lo, hi = bootstrap_ci(x)
    assert lo < x.mean() < hi and 0.05 < hi - lo < 0.25   # ~ 2 * 1.96 * 0.29 / sqrt(50) = 0.16
    assert bootstrap_ci([0.4]) == (0.4, 0.4)
    # coverage sanity: the interval holds the true mean most of the time
    hits = 0
    for s in range(200):
        y = np.random.default_rng(100 + s).uniform(0, 1, 30)
        lo, hi = bootstrap_ci(y, n_boot=500, seed=s)
        hits += lo <= 0.5 <= hi
    assert hits / 200 > 0.88
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_latency_excludes_warmup():
    s = latency_summary([900.0, 100.0, 110.0, 120.0, 130.0])
    assert s["n"] == 4 and s["mean"] == pytest.approx(115.0) and s["p50"] == pytest.approx(115.0)
    assert s["p95"] == pytest.approx(np.percentile([100, 110, 120, 130], 95))
    assert latency_summary([900.0], warmup=1) == {"p50": None, "p95": None, "mean": None, "n": 0}
    assert latency_summary([900.0, 100.0], warmup=0)["mean"] == pytest.approx(500.0)


def test_summarize_counts_errors_apart():
    eps = fake_episodes(12, n_errors=2)
    m = summarize(eps)
    ok = [e for e in eps if e["error"] is None]
    k = sum(e["success"] for e in ok)
    assert m["n_episodes"] == 12 and m["n_errors"] == 2 and m["n_valid"] == 10
    assert m["success_rate"] == pytest.approx(k / 10)
    assert m["success_ci95"] == pytest.approx(list(wilson(k, 10)))
    assert m["progress_mean"] == pytest.approx(np.mean([e["progress"] for e in ok]))
    lo, hi = m["progress_ci95"]
    assert lo <= m["progress_mean"] <= hi
    calls = [v for e in eps for v in e["latency_ms"]]
    assert m["n_calls"] == len(calls) - 1
    assert m["latency_ms"]["mean"] == pytest.approx(np.mean(calls[1:]))
    assert m["effective_steps_mean"] == 10
    assert m["env_steps_per_s"] == pytest.approx(sum(e["steps"] for e in eps) / sum(e["wall_s"] for e in eps))
    empty = summarize([])
    assert empty["n_episodes"] == 0 and empty["success_rate"] is None and empty["latency_ms"]["p50"] is None
    pt = per_task(eps)
    assert sorted(pt) == sorted({e["task"] for e in eps}) and sum(v["n"] for v in pt.values()) == 10


def test_two_proportion_test_one_sided():
    assert two_proportion_test(45, 50, 20, 50) < 1e-4          # a real drop
    assert two_proportion_test(20, 50, 45, 50) > 0.99          # an improvement is not a drop
    assert 0.3 < two_proportion_test(8, 10, 7, 10) <= 1.0      # noise at n = 10
    assert two_proportion_test(5, 10, 0, 0) == 1.0
    # the false-alarm rate at alpha = 0.05 stays at or under 5% when nothing changed (exact test)
    rng = np.random.default_rng(0)
    ps = [two_proportion_test(int(rng.binomial(30, .7)), 30, int(rng.binomial(30, .7)), 30) for _ in range(400)]
    assert np.mean(np.array(ps) < 0.05) <= 0.05


def test_pooled_seeds_drop_each_cells_warmup():
    """Seeds pooled into one row: every cell's first call is a warm-up, not only the first cell's."""
    from harness.results.stats import summarize_cells
    seed0 = [{"success": True, "progress": 1.0, "latency_ms": [900.0, 100.0, 100.0]}]
    seed1 = [{"success": False, "progress": 0.5, "latency_ms": [800.0, 120.0]}, {"success": True, "progress": 1.0,
                                                                               "latency_ms": [120.0]}]
    m = summarize_cells([seed0, seed1])
    assert m["n_calls"] == 4 and m["latency_ms"]["mean"] == pytest.approx(110.0)
    assert m["n_episodes"] == 3 and m["n_success"] == 2
    assert summarize(seed0 + seed1)["n_calls"] == 5  # one cell's records: only its first call dropped
