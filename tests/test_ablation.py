"""`wam-bench ablation`: the store proves the pairing, Findings read it, the report opens with them."""
import json

import numpy as np
import pytest

from harness.results import findings as fnd
from harness.results.store import CellKey, Result, Store
from harness.scale.ablation import pairing_problems


def fake_cell(store, exp, variant, seed, successes, suite="tabletop", noise_seed=0, shift=0):
    """A store cell written by hand (a fake for testing the readers, not an evaluation): one episode
    per entry of `successes`, with the episode plan the evaluator uses for this training seed."""
    cell = store.cell(CellKey(exp, variant, suite, seed, "O1-kvcache"))
    cell.claim({"suite_hash": "h", "checkpoint_sha256": f"{variant}{seed}", "policy": None, "execution": "sync",
                "noise_seed": noise_seed})
    for i, ok in enumerate(successes):
        ep_seed = seed * 100_003 + i + shift
        cell.append_episode({"episode_id": cell.episode_id(0, i, ep_seed), "task": "t", "task_index": 0,
                             "init_index": i, "seed": ep_seed, "success": bool(ok), "progress": float(ok),
                             "latency_ms": [1.0], "error": None})
    cell.write_result(Result(exp, variant, suite, seed, "O1-kvcache", status="complete"))
    return cell


def test_pairing_problems_flag_other_episodes_or_noise(tmp_path):
    store = Store(tmp_path)
    for v in ("fastwam", "fastwam-no-cotrain"):
        for s in (0, 1):
            fake_cell(store, "ok", v, s, [1, 0, 1])
    assert pairing_problems(tmp_path, "ok") == []
    fake_cell(store, "bad", "fastwam", 0, [1, 0, 1])
    fake_cell(store, "bad", "fastwam-no-cotrain", 0, [1, 0, 1], noise_seed=7)
    fake_cell(store, "bad", "fastwam", 1, [1, 0, 1])
    fake_cell(store, "bad", "fastwam-no-cotrain", 1, [1, 0, 1], shift=1)
    problems = pairing_problems(tmp_path, "bad")
    assert any("seed0" in p and "noise seed" in p for p in problems)
    assert any("seed1" in p and "episodes" in p for p in problems) and len(problems) == 2


def test_pairing_problems_flag_trainings_on_other_demonstrations(tmp_path):
    """Two real demonstration sets: the same files elsewhere are the same data (content hash, not
    path); a variant trained on the other set, or on unrecorded data, breaks the pairing."""
    import shutil

    from harness.config import Registry
    from harness.data.demos import make_demos
    from harness.data.lerobot import dataset_identity, same_data
    spec = Registry().suite("tabletop")
    a = make_demos(spec, 2, seed=0, out=tmp_path / "a", workers=1, video=False, quiet=True)
    b = make_demos(spec, 3, seed=0, out=tmp_path / "b", workers=1, video=False, quiet=True)
    moved = shutil.copytree(a, tmp_path / "moved")
    ids = {name: dataset_identity(p) for name, p in (("a", a), ("b", b), ("moved", moved))}
    assert ids["a"][0]["path"] == str(a.resolve()) and ids["moved"][0]["path"] == str(moved.resolve())
    assert same_data(ids["a"], ids["moved"]) and not same_data(ids["a"], ids["b"])
    assert dataset_identity([a, b]) == ids["a"] + ids["b"]   # several datasets: one entry each, in order

    def trained(exp, variant, seed, datasets):  # train.json as the training loop writes it
        cell = Store(tmp_path / "results").cell(CellKey(exp, variant, "tabletop", seed, "train"))
        cell.path.mkdir(parents=True)
        info = {"step": 2, "config_hash": "x", **({"datasets": datasets} if datasets is not None else {})}
        (cell.path / "train.json").write_text(json.dumps(info))

    for v in ("fastwam", "fastwam-no-cotrain"):
        trained("ok", v, 0, ids["a"])
        trained("ok", v, 1, ids["moved"])
    assert pairing_problems(tmp_path / "results", "ok") == []
    trained("bad", "fastwam", 0, ids["a"])
    trained("bad", "fastwam-no-cotrain", 0, ids["b"])
    trained("bad", "fastwam-joint", 0, None)
    problems = pairing_problems(tmp_path / "results", "bad")
    assert len(problems) == 2
    assert "fastwam-no-cotrain/seed0 was trained on other demonstrations than fastwam/seed0" in problems[1]
    assert "fastwam-joint/seed0 recorded no demonstrations" in problems[0]


def test_findings_state_a_known_gap_and_the_report_opens_with_them(tmp_path):
    from harness.results.report import write_report
    store = Store(tmp_path / "results")
    rng = np.random.default_rng(0)
    for s in (0, 1, 2):
        fake_cell(store, "abl", "fastwam", s, rng.random(40) < 0.8)
        fake_cell(store, "abl", "fastwam-no-cotrain", s, rng.random(40) < 0.2)
        fake_cell(store, "abl", "fastwam-joint", s, rng.random(40) < 0.8)
    rows, per_variant = fnd.findings(store.root, "abl")
    by_name = {r.contrast.name: r for r in rows}
    cot = by_name["co-training gap"].success
    assert cot.resolved and 0.45 < cot.estimate < 0.75 and cot.seeds == [0, 1, 2]
    assert not by_name["imagination gap (joint)"].success.resolved
    assert "co-training gap − masking gap" in by_name and "dreamzero − fastwam" not in by_name
    assert by_name["co-training gap"].paper.startswith("LIBERO +4.1")  # papers.yaml: 97.6 − 93.45
    md = fnd.markdown(rows, per_variant)
    assert md.startswith("## Findings") and "co-training gap on tabletop" in md and "3 seeds × 40" in md

    index = write_report(store.root, "abl", tmp_path / "reports")
    page = index.read_text()
    assert page.index("<h2>Findings</h2>") < page.index("<h2>Missing")
    assert (index.parent / "findings.md").read_text() == md


def test_data_efficiency_curve_from_demo_siblings(tmp_path):
    store = Store(tmp_path)
    rng = np.random.default_rng(1)
    for exp, n, p in (("abl", 200, 0.8), ("abl-demos50", 50, 0.3), ("abl-demos100", 100, 0.5)):
        (tmp_path / exp).mkdir(parents=True)
        (tmp_path / exp / fnd.DESIGN_FILE).write_text(json.dumps({"demos": n, "level": "O1-kvcache",
                                                                 "train_suite": "tabletop"}))
        for s in (0, 1):
            fake_cell(store, exp, "fastwam", s, rng.random(30) < p)
    curves = fnd.data_efficiency(tmp_path, "abl")
    assert [n for n, _ in curves["fastwam / tabletop"]] == [50, 100, 200]
    assert curves["fastwam / tabletop"][0][1].estimate < curves["fastwam / tabletop"][-1][1].estimate
    assert fnd.plot_data_efficiency(curves, tmp_path) == "data_efficiency.png"
    assert (tmp_path / "data_efficiency.png").stat().st_size > 1000


@pytest.mark.slow
def test_real_ablation_is_paired_across_variants(tmp_path, ray_session):
    """A real (tiny) ablation on a local Ray: same episodes and noise across variants of a seed."""
    from harness.config import Registry
    from harness.data.demos import make_demos
    from harness.scale.ablation import AblationOptions, run_ablation
    from harness.scale.ray_cells import RayOptions
    ds = make_demos(Registry().suite("tabletop"), 2, seed=0, out=tmp_path / "demos", workers=1, video=False, quiet=True)
    o = AblationOptions(experiment="a", variants=("fastwam", "fastwam-no-cotrain"), seeds=(0, 1),
                        eval_suites=("tabletop",), demos=2, steps=2, episodes=1, root=str(tmp_path / "results"),
                        reports=str(tmp_path / "reports"), datasets={2: str(ds)})
    out = run_ablation(o, RayOptions(cpus_per_cell=1, max_retries=1))
    assert out["failed"] == [] and out["pairing"] == []
    store = Store(tmp_path / "results")
    for seed in (0, 1):
        plans = [sorted((e["task_index"], e["init_index"], e["seed"]) for e in
                        store.cell(CellKey("a", v, "tabletop", seed, "O1-kvcache")).episodes())
                 for v in ("fastwam", "fastwam-no-cotrain")]
        assert plans[0] == plans[1] and len(plans[0]) == 4
        res = store.cell(CellKey("a", "fastwam", "tabletop", seed, "O1-kvcache")).result()
        assert res["extra"]["latency_solo"]["n"] == 20 and "loadavg_1m" in res["extra"]["load"]["start"]
    design = json.loads((tmp_path / "results" / "a" / fnd.DESIGN_FILE).read_text())
    assert design["seeds"] == [0, 1] and design["datasets"]["2"][0]["sha256"] and design["train_suite"] == "tabletop"
    assert "<h2>Findings</h2>" in out["index"].read_text()


def test_ablation_makes_its_demos_at_the_asked_size(monkeypatch, tmp_path):
    """`make libero` trains on 128 px demos of the tasks the expert can do: the command line's
    --demo-image-size and --skip-unsupported reach make_demos (its cache key), for ablation and grid."""
    import harness.data.demos as demos
    from harness import cli
    asked = []

    class Stop(Exception):
        pass

    def fake_make_demos(spec, n, **kw):  # a fake for testing the plumbing: stops before any work
        asked.append((spec.name, n, kw.get("image_size"), kw.get("skip_unsupported")))
        raise Stop
    monkeypatch.setattr(demos, "make_demos", fake_make_demos)
    for cmd in (["ablation", "--train-suite", "libero_object", "--eval-suites", "libero_object", "--variants", "fastwam",
                 "--seeds", "0"], ["run", "--suites", "libero_object", "--variants", "fastwam"]):
        with pytest.raises(Stop):
            cli.main(cmd + ["--demos", "7", "--demo-image-size", "128", "--skip-unsupported", "--root",
                            str(tmp_path / "r"), "--reports", str(tmp_path / "p")])
    assert asked == [("libero_object", 7, 128, True)] * 2
