"""The report's robustness section: clean vs LIBERO-PRO perturbed cells of the same variant and
level, success drop per family with Newcombe intervals, a plot, and nothing when no cell is
perturbed. The store holds synthetic episodes: the statistics and the report are under test here."""
import csv

import pytest

from harness.config import Registry, to_dict
from harness.results import robustness
from harness.results.report import write_report
from harness.results.stats import summarize, wilson
from harness.results.store import CellKey, Result, Store
from test_store import fake_episodes

EXP = "rob"
# (variant, suite, n, success_p)
GRID = [("fastwam", "libero_spatial", 40, 0.9), ("fastwam", "libero_pro_spatial_lan", 40, 0.6),
        ("fastwam", "libero_pro_spatial_swap", 40, 0.3), ("fastwam", "libero_pro_spatial_task", 40, 0.0),
        ("fastwam-no-cotrain", "libero_spatial", 30, 0.8), ("fastwam-no-cotrain", "libero_pro_spatial_lan", 30, 0.8),
        ("fastwam", "libero_pro_object_lan", 30, 0.5)]  # no clean libero_object cell: no row


def _store(root):
    store, reg = Store(root), Registry()
    for i, (v, s, n, p) in enumerate(GRID):
        key = CellKey(EXP, v, s, 0, "O1-kvcache")
        c = store.cell(key)
        eps = fake_episodes(n, p, 50.0, seed=i)
        for e in eps:
            c.append_episode(e)
        c.write_result(Result(EXP, v, s, 0, "O1-kvcache", "complete", metrics=summarize(eps),
                              config={"suite": to_dict(reg.suite(s))}))
    return store


def test_newcombe_interval_matches_the_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 vs 48/80 -> 0.2000 (0.0524, 0.3339)
    d, lo, hi = robustness.drop_interval(56, 70, 48, 80)
    assert (round(d, 4), round(lo, 4), round(hi, 4)) == (0.2, 0.0524, 0.3339)
    d, lo, hi = robustness.drop_interval(10, 10, 0, 10)  # the extremes stay inside [-1, 1]
    assert d == 1.0 and 0.5 < lo < 1.0 and hi == pytest.approx(1.0)


def test_report_groups_clean_and_perturbed_side_by_side(tmp_path):
    store = _store(tmp_path / "results")
    index = write_report(store.root, EXP, tmp_path / "reports")
    out = index.parent
    with open(out / "robustness.csv") as f:
        rows = list(csv.DictReader(f))
    got = [(r["variant"], r["clean_suite"], r["perturbation"]) for r in rows]
    assert got == [("fastwam", "libero_spatial", "language"), ("fastwam", "libero_spatial", "position"),
                   ("fastwam", "libero_spatial", "task"), ("fastwam-no-cotrain", "libero_spatial", "language")]
    by = {(v, s): store.cell(CellKey(EXP, v, s, 0, "O1-kvcache")).episodes() for v, s, _, _ in GRID}
    for r in rows:
        clean = summarize(by[r["variant"], r["clean_suite"]])
        pert = summarize(by[r["variant"], r["suite"]])
        assert int(r["clean_n"]) == clean["n_valid"] and int(r["perturbed_n"]) == pert["n_valid"]
        drop = 100 * (clean["success_rate"] - pert["success_rate"])
        assert float(r["drop_pts"]) == pytest.approx(drop, abs=1e-3)
        assert float(r["drop_lo_pts"]) <= drop <= float(r["drop_hi_pts"])
        # the interval is wider than either Wilson half-width alone
        lo, hi = wilson(pert["n_success"], pert["n_valid"])
        assert float(r["drop_hi_pts"]) - float(r["drop_lo_pts"]) > 100 * (hi - lo)
    task = rows[2]
    assert float(task["perturbed_success_pct"]) == 0.0 and float(task["p_value"]) < 1e-6  # a real drop
    same = rows[3]
    assert float(same["p_value"]) > 0.05  # 0.8 vs 0.8: nothing to see
    assert (out / "robustness.png").stat().st_size > 5000 and (out / "robustness.svg").is_file()
    page = index.read_text()
    assert "Robustness (clean vs perturbed)" in page and "success drop per perturbation family" in page
    md = (out / "robustness.md").read_text()
    assert md.count("\n| fastwam") == 4 and "libero_spatial | task" in md


def test_no_perturbed_cells_no_section(tmp_path):
    store = Store(tmp_path / "results")
    eps = fake_episodes(20, 0.5, 50.0)
    c = store.cell(CellKey(EXP, "fastwam", "tabletop", 0, "O1-kvcache"))
    for e in eps:
        c.append_episode(e)
    c.write_result(Result(EXP, "fastwam", "tabletop", 0, "O1-kvcache", "complete", metrics=summarize(eps),
                          config={"suite": to_dict(Registry().suite("tabletop"))}))
    index = write_report(store.root, EXP, tmp_path / "reports")
    assert "Robustness" not in index.read_text()
    assert not (index.parent / "robustness.png").exists()
    assert (index.parent / "robustness.csv").read_text().startswith("variant,level,clean_suite,perturbation")
