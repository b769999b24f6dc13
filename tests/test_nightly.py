"""The nightly gate: passes against its own fresh baseline, fails on a planted regression and on
a real drop in success, states its tests and its power."""
import json

import pytest

from harness.cli import main
from harness.scale.nightly import PRESETS, compare, power


@pytest.fixture(scope="module")
def nightly_env(tmp_path_factory):
    from harness.config import Registry
    from harness.data.demos import make_demos
    base = tmp_path_factory.mktemp("nightly")
    ds = make_demos(Registry().suite("tabletop"), 4, seed=0, out=base / "demos", workers=1, video=False, quiet=True)
    return base, str(ds)


def nightly(env, *extra) -> int:
    base, ds = env
    return main(["nightly", "--preset", "smoke", "--dataset", ds, "--baselines", str(base / "baselines"),
                 "--root", str(base / "runs"), "--reports", str(base / "reports"), *extra])


def test_fresh_baseline_passes_and_a_worse_checkpoint_fails(nightly_env, capsys):
    base, _ = nightly_env
    assert nightly(nightly_env, "--bless") == 0
    blessed = json.loads((base / "baselines" / "smoke.json").read_text())
    assert blessed["success"]["n"] == 4 and blessed["latency_norm"] > 0

    # the same code again: same episodes, latency within the ratio. Not the default x1.25: on a loaded
    # machine (a fresh-clone CI beside LIBERO demos) this re-run failed once; its episodes are seeded, so
    # the latency row is the one that moves (four re-runs under that load: x0.80-0.97). The planted
    # regression below still uses the default
    assert nightly(nightly_env, "--latency-ratio", "1.6") == 0, capsys.readouterr().out[-1500:]
    out = capsys.readouterr().out
    assert "one-sided Fisher exact" in out and "Welch" in out and "PASS" in out
    assert "Power: against the baseline's" in out   # 4 episodes: the success gate cannot fire, and says so
    cmp = json.loads((base / "reports" / "smoke" / "comparison.json").read_text())
    assert cmp["current"]["episodes"] == blessed["episodes"]  # seeded: the re-run cannot flake

    # plant a regression: the same weights plus noise, and 4x the denoising steps in its config
    import torch
    from harness.policy import checkpoint
    sd, meta, _ = checkpoint.load(cmp["current"]["checkpoint"])
    meta["config"]["variant"]["inference"]["steps"] *= 4
    g = torch.Generator().manual_seed(0)
    sd = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in sd.items()}
    worse = base / "worse.safetensors"
    checkpoint.save(worse, checkpoint.build_model(meta, sd), meta)
    assert nightly(nightly_env, "--checkpoint", str(worse)) == 1
    cmp = json.loads((base / "reports" / "smoke" / "comparison.json").read_text())
    assert "latency p50 / matmul calibration" in cmp["regressions"]
    assert "REGRESSION" in capsys.readouterr().out


def _run(k, n, progress, latency_norm=1.0):
    eps = [{"episode_id": f"e{i}", "success": i < k, "progress": progress[i]} for i in range(n)]
    return {"success": {"k": k, "n": n}, "episodes": eps, "latency_norm": latency_norm, "latency_p50_ms": 10.0}


def test_gate_tells_a_real_drop_from_noise():
    base = _run(14, 20, [1.0] * 14 + [0.5] * 6)
    same = compare(base, base)
    assert not any(r["regression"] for r in same)
    noise = compare(base, _run(11, 20, [1.0] * 11 + [0.5] * 9))  # 14/20 -> 11/20: p ~ 0.25
    assert not any(r["regression"] for r in noise)
    drop = compare(base, _run(3, 20, [1.0] * 3 + [0.25] * 17))
    assert [r["regression"] for r in drop] == [True, True, False]
    slow = compare(base, _run(14, 20, [1.0] * 14 + [0.5] * 6, latency_norm=1.3))
    assert [r["regression"] for r in slow] == [False, False, True]
    assert not compare(base, _run(14, 20, [1.0] * 14 + [0.5] * 6, latency_norm=1.2))[2]["regression"]


def test_power_of_the_gate_and_the_preset_size():
    """The issue's numbers: a 10/20 baseline at alpha 0.01 fires only at <= 2/20, i.e. catches only a
    ~42-point drop; the nightly preset's n catches a 20-point drop whatever the baseline's rate."""
    from harness.config import Registry
    from harness.results.stats import detectable_drop, fisher_critical, two_proportion_test
    assert fisher_critical(10, 20, 20, 0.01) == 2
    assert two_proportion_test(10, 20, 2, 20) < 0.01 <= two_proportion_test(10, 20, 3, 20)
    assert 0.40 < detectable_drop(10, 20, 20, 0.01) < 0.45
    pw = power(10, 20, 20, 0.01)
    assert "fails at <= 2/20 successes" in pw["text"] and "drop of 42 points" in pw["text"]
    preset = PRESETS["tabletop-fastwam"]
    n = preset.episodes * len(Registry().suite(preset.suite).tasks)
    for rate in [i / 20 for i in range(4, 20)]:          # baselines from 20% to 95% success
        k = round(rate * n)
        assert detectable_drop(k, n, n, 0.01) <= 0.20, (k, n)
    # and the old preset (5 per task) could not: the check above can fail
    assert detectable_drop(round(0.6 * 20), 20, 20, 0.01) > 0.20
    assert power(0, 4, 4, 0.01)["critical"] == -1 and "cannot fire" in power(0, 4, 4, 0.01)["text"]


def test_gate_fails_on_a_real_drop_in_success(tmp_path):
    """Real closed-loop episodes in a real store: a cell of the scripted expert as the baseline and
    one of the random policy as the current run. The success and progress tests fire; the expert
    against its own re-run (seeded: the same episodes) passes."""
    from harness.config import Registry
    from harness.eval.cell import evaluate_cell
    from harness.results.store import CellKey, Store
    from harness.scale.nightly import cell_summary
    spec, store = Registry().suite("tabletop"), Store(tmp_path)
    runs = {}
    for name, policy in (("good", "expert"), ("again", "expert"), ("bad", "random")):
        cell = store.cell(CellKey(name, policy, "tabletop", 0, "reference"))
        evaluate_cell(cell, spec, policy, episodes_per_task=2, workers=2, progress=False)
        runs[name] = {**cell_summary(cell), "latency_norm": None}
    assert runs["good"]["success"]["k"] >= 7 and runs["bad"]["success"]["k"] <= 1
    rows = {r["metric"]: r for r in compare(runs["good"], runs["bad"])}
    assert rows["success"]["regression"] and rows["task progress"]["regression"]
    assert not any(r["regression"] for r in compare(runs["good"], runs["again"]))


@pytest.mark.slow
def test_gate_fails_on_an_under_trained_checkpoint(tmp_path, monkeypatch, capsys):
    """A policy trained to real success, blessed; then the same checkpoint with its weights noised
    (same shapes and config, so latency is alike): the success test fires."""
    import torch
    from harness.config import Registry
    from harness.data.demos import make_demos
    from harness.policy import checkpoint
    from harness.scale.nightly import Preset
    monkeypatch.setitem(PRESETS, "drop", Preset(steps=1500, demos=200, episodes=10))
    ds = make_demos(Registry().suite("tabletop"), 200, seed=0, out=tmp_path / "demos", workers=2, quiet=True)
    args = ["nightly", "--preset", "drop", "--dataset", str(ds), "--baselines", str(tmp_path / "baselines"),
            "--root", str(tmp_path / "runs"), "--reports", str(tmp_path / "reports"), "--workers", "2"]
    assert main([*args, "--bless"]) == 0
    blessed = json.loads((tmp_path / "baselines" / "drop.json").read_text())
    assert blessed["success"]["k"] >= 16, blessed["success"]   # a real policy, not a coin
    sd, meta, _ = checkpoint.load(blessed["checkpoint"])
    g = torch.Generator().manual_seed(0)
    sd = {k: v + 0.5 * v.std() * torch.randn(v.shape, generator=g) if v.is_floating_point() and v.numel() > 1
          else v for k, v in sd.items()}
    worse = tmp_path / "noised.safetensors"
    checkpoint.save(worse, checkpoint.build_model(meta, sd), meta)
    assert main([*args, "--checkpoint", str(worse)]) == 1
    cmp = json.loads((tmp_path / "reports" / "drop" / "comparison.json").read_text())
    assert "success" in cmp["regressions"], cmp["rows"]
