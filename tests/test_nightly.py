"""The nightly gate: passes against its own fresh baseline, fails on a planted regression, states its tests."""
import json

import pytest

from harness.cli import main
from harness.scale.nightly import compare


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

    assert nightly(nightly_env) == 0  # the same code again: same episodes, latency within the ratio
    out = capsys.readouterr().out
    assert "one-sided Fisher exact" in out and "Welch" in out and "PASS" in out
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
