"""The Ray grid on a real local Ray: completes, resumes, survives a killed worker, records failures."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import ray  # noqa: F401  (the `scale` extra: a failed install fails here, not a silent skip)

from harness.scale.ray_cells import ERROR_FILE, WORKER_FILE, RayOptions  # noqa: E402
from harness.scale.grid import GridOptions, run_grid  # noqa: E402
from harness.results.store import CellKey, Store, read_jsonl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def grid_env(tmp_path_factory, ray_session):
    """A tiny demo set, a store, and a folder with a variant that diverges on purpose."""
    from harness.config import Registry
    from harness.data.demos import make_demos
    base = tmp_path_factory.mktemp("grid")
    ds = make_demos(Registry().suite("tabletop"), 4, seed=0, out=base / "demos", workers=1, video=False, quiet=True)
    inc = base / "include"
    (inc / "variants").mkdir(parents=True)
    (inc / "variants" / "broken.yaml").write_text(
        f"include: {REPO / 'variants' / 'fastwam.yaml'}\ndescription: diverges on purpose\ntrain: {{lr: 1.0e+30}}\n")
    return {"root": base / "results", "reports": base / "reports", "dataset": str(ds), "include": str(inc)}


def options(env, **kw) -> GridOptions:
    o = dict(experiment="g", variants=("fastwam",), levels=("O1-kvcache",), steps=8, episodes=1, workers=1,
             root=str(env["root"]), reports=str(env["reports"]), references=False,
             datasets={"tabletop": env["dataset"]}, include_path=(env["include"],))
    o.update(kw)
    return GridOptions(**o)


RO = RayOptions(cpus_per_cell=1, max_retries=3)


def test_grid_completes_and_rerun_does_no_work(grid_env):
    o = options(grid_env, levels=("O0-eager", "O1-kvcache", "O6-flash"), references=True)
    out = run_grid(o, RO)
    assert out["failed"] == []
    store = Store(grid_env["root"])
    keys = [CellKey("g", "fastwam", "tabletop", 0, lvl) for lvl in ("train", "O0-eager", "O1-kvcache", "O6-flash")]
    keys += [CellKey("g", ref, "tabletop", 0, "reference") for ref in ("expert", "random")]
    for k in keys:
        assert store.cell(k).status() == "complete", k
    for k in keys[1:3] + keys[4:]:
        eps = store.cell(k).episodes()
        assert len(eps) == 4 and len({e["episode_id"] for e in eps}) == 4  # 4 tasks x 1 episode
        w = json.loads((store.cell(k).path / WORKER_FILE).read_text())
        assert w["state"] == "done" and w["torch_threads"] == 1 and w["nice"] == 0
    assert store.cell(keys[3]).result()["extra"]["n/a"]  # O6-flash does not apply to fastwam: no worker
    for k in keys[1:3]:  # each model cell's policy timed alone after the run (the report prefers it)
        solo = store.cell(k).result()["extra"]["latency_solo"]
        assert solo["n"] == 20 and solo["p50"] > 0 and solo["torch_threads"] == 1
    assert "latency_solo" not in store.cell(keys[4]).result()["extra"]   # references make no inference calls
    assert len(out["summary"].done) == 5

    before = {k: store.cell(k).episodes_path.stat().st_mtime_ns for k in keys[1:3]}
    again = run_grid(o, RO)
    assert again["failed"] == [] and again["summary"].done == []
    assert len(again["summary"].skipped) == len(keys)
    assert {k: store.cell(k).episodes_path.stat().st_mtime_ns for k in keys[1:3]} == before


def test_failing_cell_is_recorded_and_the_rest_goes_on(grid_env, capsys, monkeypatch):
    o = options(grid_env, experiment="fail", variants=("broken", "fastwam"), levels=("O1-kvcache",))
    out = run_grid(o, RO)
    labels = [what for what, _ in out["failed"]]
    assert "train broken/tabletop/seed0" in labels
    assert "eval broken/tabletop/seed0/O1-kvcache" in labels  # not run: its checkpoint failed
    store = Store(grid_env["root"])
    broken = store.cell(CellKey("fail", "broken", "tabletop", 0, "train"))
    assert "diverged" in (broken.path / ERROR_FILE).read_text() and "Traceback" in (broken.path / ERROR_FILE).read_text()
    assert broken.status() == "failed"
    assert store.cell(CellKey("fail", "fastwam", "tabletop", 0, "O1-kvcache")).status() == "complete"

    from harness.cli import main
    monkeypatch.chdir(grid_env["root"].parent)  # the command's demo cache lands in the temp folder
    # (broken only: fastwam's checkpoint was trained on the fixture's demos, not on those `run` makes)
    code = main(["--include-path", grid_env["include"], "run", "--experiment", "fail", "--variants", "broken",
                 "--steps", "8", "--episodes", "1", "--root", str(grid_env["root"]), "--reports",
                 str(grid_env["reports"]), "--no-references", "--demos", "4"])
    assert code == 1
    assert "FAILED train broken/tabletop/seed0" in capsys.readouterr().out


def test_killed_worker_is_retried_without_duplicates(grid_env):
    o = options(grid_env, experiment="kill", levels=("O0-eager",), episodes=3)
    key = CellKey("kill", "fastwam", "tabletop", 0, "O0-eager")
    cell = Store(grid_env["root"]).cell(key)
    result = {}
    t = threading.Thread(target=lambda: result.update(run_grid(o, RO)), daemon=True)
    t.start()
    killed = None
    deadline = time.time() + 240
    while time.time() < deadline and killed is None:
        try:
            w = json.loads((cell.path / WORKER_FILE).read_text())
        except (OSError, ValueError):
            w = {}
        if w.get("state") == "running" and len(read_jsonl(cell.episodes_path)) >= 1:
            os.kill(w["pid"], signal.SIGKILL)
            killed = w["pid"]
            # what the killed worker had recorded (its retry takes seconds to load the model)
            before = [x for x in cell.episodes_path.read_text().splitlines(keepends=True) if x.endswith("\n")]
        time.sleep(0.2)
    assert killed, "the eval cell never got going"
    t.join(timeout=300)
    assert not t.is_alive() and result["failed"] == []
    w = json.loads((cell.path / WORKER_FILE).read_text())
    assert w["attempt"] >= 2 and w["pid"] != killed
    raw = [r["episode_id"] for r in read_jsonl(cell.episodes_path)]
    assert len(raw) == 12 and len(set(raw)) == 12  # every episode exactly once, none lost
    assert 1 <= len(before) < 12
    assert cell.episodes_path.read_text().splitlines(keepends=True)[:len(before)] == before  # kept, not re-run
    res = cell.result()
    assert res["status"] == "complete" and res["metrics"]["n_episodes"] == 12
    assert res["extra"]["episodes_run"] == 12 - len(before)  # the retry ran exactly the missing ones


def test_eval_and_run_record_the_same_cell(grid_env, monkeypatch):
    """`wam-bench eval` and `wam-bench run` build the policy one way: the same cell gets the same
    config_hash from either command, and each reuses the cell the other made (no episode re-run)."""
    from harness.cli import main
    root = grid_env["root"]
    run_grid(options(grid_env, experiment="same"), RO)
    store = Store(root)
    ckpt = store.cell(CellKey("same", "fastwam", "tabletop", 0, "train")).path / "last.safetensors"
    ran = store.cell(CellKey("same", "fastwam", "tabletop", 0, "O1-kvcache"))
    made_by_run = ran.episodes_path.read_bytes()

    def evaluate(experiment, level):
        assert main(["eval", "--checkpoint", str(ckpt), "--experiment", experiment, "--level", level,
                     "--episodes", "1", "--workers", "1", "--root", str(root), "--device", "cpu"]) == 0
        return store.cell(CellKey(experiment, "fastwam", "tabletop", 0, level))

    assert evaluate("same", "O1-kvcache").episodes_path.read_bytes() == made_by_run   # eval reuses run's cell
    assert evaluate("other", "O1-kvcache").result()["config_hash"] == ran.result()["config_hash"]
    by_eval = evaluate("same", "O0-eager")
    made_by_eval, hash_by_eval = by_eval.episodes_path.read_bytes(), by_eval.result()["config_hash"]
    again = run_grid(options(grid_env, experiment="same", levels=("O0-eager", "O1-kvcache")), RO)
    assert again["failed"] == [] and again["summary"].done == []                       # run reuses eval's cell
    assert by_eval.episodes_path.read_bytes() == made_by_eval and by_eval.result()["config_hash"] == hash_by_eval
    # smoothing changes the episodes: the cell is evaluated again, never mixed with unsmoothed ones
    hash_o1 = ran.result()["config_hash"]
    assert main(["eval", "--checkpoint", str(ckpt), "--experiment", "same", "--level", "O1-kvcache", "--smooth",
                 "--episodes", "1", "--workers", "1", "--root", str(root), "--device", "cpu"]) == 0
    assert ran.source()["smoothing"] is True and ran.result()["config"]["smoothing"] is True
    assert len(ran.episodes()) == 4 and ran.result()["config_hash"] != hash_o1
    assert "smoothing" not in by_eval.source()   # default behaviour: the source cells had before


def test_more_episodes_extend_a_complete_cell(grid_env):
    """The grid does not skip a complete cell with fewer episodes than asked: it runs only the
    missing ones; asking for fewer than a cell holds is refused at plan time."""
    from harness.errors import UserError
    run_grid(options(grid_env, experiment="more"), RO)
    cell = Store(grid_env["root"]).cell(CellKey("more", "fastwam", "tabletop", 0, "O1-kvcache"))
    before = cell.episodes_path.read_bytes()
    out = run_grid(options(grid_env, experiment="more", episodes=2), RO)
    assert out["failed"] == [] and out["summary"].done == ["eval fastwam/tabletop/seed0/O1-kvcache"]
    after = cell.episodes_path.read_bytes()
    assert after.startswith(before) and len(after.splitlines()) == 8
    assert cell.result()["metrics"]["n_episodes"] == 8 and cell.result()["extra"]["episodes_run"] == 4
    with pytest.raises(UserError, match="outside the 4 asked for"):
        run_grid(options(grid_env, experiment="more", episodes=1), RO)


def test_ablation_extends_cells_and_refuses_other_demonstrations_or_devices(grid_env, tmp_path):
    """`wam-bench ablation` into an existing experiment follows `run`'s rules: more --episodes
    extends a complete cell (only the missing episodes run), fewer is refused; a checkpoint trained
    on other demonstrations is refused, not reused as if paired; so is a cell made on another device."""
    from harness.config import Registry
    from harness.data.demos import make_demos
    from harness.errors import UserError
    from harness.scale.ablation import AblationOptions, plan
    from harness.scale.ray_cells import run_cells
    run_grid(options(grid_env, experiment="abl", time_alone=False), RO)   # a train cell, a complete 1-per-task cell
    key, train = CellKey("abl", "fastwam", "tabletop", 0, "O1-kvcache"), CellKey("abl", "fastwam", "tabletop", 0, "train")
    cell = Store(grid_env["root"]).cell(key)
    before = cell.episodes_path.read_bytes()

    def ablation(episodes, dataset=grid_env["dataset"]):
        o = AblationOptions(experiment="abl", variants=("fastwam",), seeds=(0,), eval_suites=("tabletop",), steps=8,
                            episodes=episodes, root=str(grid_env["root"]), include_path=(grid_env["include"],))
        cells, done, _, _ = plan(o, {o.demos: dataset})
        return [c for c in cells if c.key == key], done

    todo, done = ablation(1)
    assert todo == [] and key in done and train in done           # nothing to do: reused
    todo, done = ablation(2)
    assert len(todo) == 1 and key not in done and train in done   # complete, but asked for more: extended
    assert run_cells(todo, grid_env["root"], RO, done, quiet=True).ok
    after = cell.episodes_path.read_bytes()
    assert after.startswith(before) and len(after.splitlines()) == 8 and cell.result()["extra"]["episodes_run"] == 4
    with pytest.raises(UserError, match="outside the 4 asked for"):
        ablation(1)

    other = make_demos(Registry().suite("tabletop"), 3, seed=0, out=tmp_path / "other", workers=1, video=False,
                       quiet=True)
    with pytest.raises(UserError, match="was trained on .*, this run's demonstrations are .*other"):
        ablation(2, str(other))
    with pytest.raises(UserError, match="was trained on"):
        run_grid(options(grid_env, experiment="abl", episodes=2, datasets={"tabletop": str(other)}), RO)

    src = cell.source()   # as if the cell had been made on a GPU
    (cell.path / "source.json").write_text(json.dumps({**src, "device": "cuda"}))
    with pytest.raises(UserError, match="holds episodes run on cuda, this run is on cpu"):
        ablation(2)
    with pytest.raises(UserError, match="holds episodes run on cuda, this run is on cpu"):
        run_grid(options(grid_env, experiment="abl", episodes=2), RO)
    assert cell.episodes_path.read_bytes() == after
