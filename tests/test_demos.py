"""`wam-bench demos`: expert episodes from the tabletop suite into a LeRobot dataset, cached."""
import numpy as np

from harness import cli
from harness.config import Registry
from harness.data.lerobot import open_dataset
from harness.data.demos import default_out, make_demos


def test_demos_write_read_back_and_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = Registry().suite("tabletop")
    n = 6
    assert cli.main(["demos", "--suite", "tabletop", "--episodes", str(n), "--seed", "3", "--workers", "2"]) == 0
    out = default_out(spec, n, 3)
    assert out.as_posix() == f"data/demos/tabletop-v{spec.version}-seed3-n{n}" and (tmp_path / out).is_dir()
    ds = open_dataset(out)
    assert ds.num_episodes == n and ds.fps == spec.control_hz
    meta = ds.info_extra["demos"]
    assert 0.9 <= meta["expert_success_rate"] <= 1.0
    assert meta["attempts"] >= n and sum(t["successes"] for t in meta["per_task"].values()) == n
    err = capsys.readouterr().err
    assert f"expert success {meta['expert_success_rate']:.1%}" in err
    for i in range(n):  # round-robin over tasks, every step recorded
        ep = ds.episode(i)
        assert ep.task == spec.tasks[i % len(spec.tasks)].instruction
        T = len(ep)
        assert 10 < T <= spec.max_steps
        assert ep.state.shape == (T, 4) and ep.action.shape == (T, 4)
        assert ep.images["front"].shape == (T, spec.image_size, spec.image_size, 3)
        assert np.abs(ep.action).max() <= 1.0
        # the recorded state moves the way the recorded actions push it (within the 2.5 cm step)
        dz = np.diff(ep.state[:, 2])
        assert np.corrcoef(dz, ep.action[:-1, 2])[0, 1] > 0.8

    stamp = (out / "meta" / "info.json").stat().st_mtime_ns
    again = make_demos(spec, n, seed=3, workers=2)
    assert again == out and (out / "meta" / "info.json").stat().st_mtime_ns == stamp
    assert "reusing" in capsys.readouterr().err


def test_demos_do_not_depend_on_worker_count(tmp_path):
    spec = Registry().suite("tabletop")
    a = open_dataset(make_demos(spec, 4, seed=1, out=tmp_path / "a", workers=1, video=False, quiet=True))
    b = open_dataset(make_demos(spec, 4, seed=1, out=tmp_path / "b", workers=2, video=False, quiet=True))
    for i in range(4):
        ea, eb = a.episode(i), b.episode(i)
        assert ea.task == eb.task and np.array_equal(ea.action, eb.action)
        assert np.array_equal(ea.images["front"], eb.images["front"])
