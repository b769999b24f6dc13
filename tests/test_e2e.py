"""The vertical slice for real: tabletop demos -> short training -> closed-loop evaluation -> store."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import like_a_terminal

from harness.config import Registry, ResolvedVariant, override, resolve_variant
from harness.data.demos import make_demos
from harness.eval.cell import evaluate_cell
from harness.eval.rollout import episode_plan
from harness.policy.policy import load_policy
from harness.results.store import CellKey, Store
from harness.train import train

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def tabletop():
    return Registry().suite("tabletop")


@pytest.fixture(scope="module")
def trained(tabletop, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    ds = make_demos(tabletop, 8, seed=0, out=root / "demos", workers=2, quiet=True)
    rv = resolve_variant("fastwam")
    rv = ResolvedVariant(override(rv.variant, {"train.steps": 20, "train.batch_size": 8}), rv.backbone)
    return train(rv, ds, root / "train", progress=False).checkpoint


def test_short_train_and_eval_writes_a_valid_result(trained, tabletop, tmp_path):
    cell = Store(tmp_path).cell(CellKey("t", "fastwam", "tabletop", 0, "O1-kvcache"))
    res = evaluate_cell(cell, tabletop, load_policy(trained), checkpoint_path=trained, episodes_per_task=1,
                        workers=2, progress=False)
    m = res["metrics"]
    assert res["status"] == "complete" and m["n_episodes"] == len(tabletop.tasks) and m["n_errors"] == 0
    eps = cell.episodes()
    # the result's numbers are the episodes' (recounted here), not merely numbers in range
    assert m["n_success"] == sum(e["success"] for e in eps) and m["success_rate"] == m["n_success"] / len(eps)
    calls = sorted(v for e in eps for v in e["latency_ms"])
    assert calls[0] <= m["latency_ms"]["p50"] <= calls[-1] and m["n_calls"] == len(calls) - 1  # warm-up left out
    assert {e["task"] for e in eps} == {t.name for t in tabletop.tasks}
    assert all(e["steps"] > 0 and len(e["latency_ms"]) >= 1 and 0 <= e["max_progress"] <= 1 for e in eps)
    assert res["checkpoint"]["sha256"] and res["provenance"]["packages"]["mujoco"]
    assert res["config"]["suite"]["name"] == "tabletop"


def test_reference_rows_expert_beats_random(tabletop, tmp_path):
    store = Store(tmp_path)
    rows = {}
    for ref in ("expert", "random"):
        rows[ref] = evaluate_cell(store.cell(CellKey("t", ref, "tabletop", 0, "reference")), tabletop, ref,
                                  episodes_per_task=2, workers=2, progress=False)["metrics"]
    assert rows["expert"]["success_rate"] >= 0.9 and rows["random"]["success_rate"] <= 0.25


def test_simulator_faults_are_errors_not_failures(tabletop, tmp_path, monkeypatch):
    """Task 1 raises SimulatorError, task 2's worker process dies: both are recorded as errors,
    the other episodes run normally, and the pool survives."""
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    spec = dataclasses.replace(tabletop, adapter="faulty_env:FaultyTabletopEnv")
    cell = Store(tmp_path).cell(CellKey("t", "expert", "faulty", 0, "reference"))
    res = evaluate_cell(cell, spec, "expert", episodes_per_task=2, workers=2, progress=False)
    eps = {(e["task_index"], e["init_index"]): e for e in cell.episodes()}
    assert len(eps) == 8
    for (task, _), e in eps.items():
        if task in (1, 2):
            assert e["error"] and e["success"] is None, e
        else:
            assert e["error"] is None and e["success"] is True
    assert "physics exploded" in eps[(1, 0)]["error"] and "died" in eps[(2, 0)]["error"]
    assert res["metrics"]["n_errors"] == 4 and res["metrics"]["success_rate"] == 1.0


def test_a_worker_keeps_at_most_two_simulators(tabletop, tmp_path, monkeypatch):
    """A worker slot keeps at most two simulators (least recently used closed first) however many
    tasks it runs: a LIBERO simulator holds ~0.9 GB, and one per task took 9 GB a worker."""
    log = tmp_path / "envs.log"
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("WAM_TEST_ENV_LOG", str(log))
    spec = dataclasses.replace(tabletop, adapter="faulty_env:CountedTabletopEnv")
    assert len(spec.tasks) >= 4
    cell = Store(tmp_path).cell(CellKey("t", "expert", "counted", 0, "reference"))
    evaluate_cell(cell, spec, "expert", episodes_per_task=1, workers=1, progress=False)
    live = np.cumsum([1 if c == "+" else -1 for c in log.read_text()])
    assert len(list(cell.episodes())) == len(spec.tasks) and live.max() == 2 and live[-1] == 0, log.read_text()


def test_interrupted_eval_resumes_without_duplicates(trained, tmp_path):
    """Ctrl-C during `wam-bench eval`, then the same command: every planned episode once."""
    cmd = [sys.executable, "-m", "harness.cli", "eval", "--checkpoint", str(trained), "--suite", "tabletop",
           "--episodes", "3", "--root", str(tmp_path), "--experiment", "r", "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=like_a_terminal)
    eps_file = tmp_path / "r" / "fastwam" / "tabletop" / "seed0" / "O1-kvcache" / "episodes.jsonl"
    deadline = time.time() + 120
    while (not eps_file.exists() or len(eps_file.read_text().splitlines()) < 2) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    before = [line for line in eps_file.read_text().splitlines(keepends=True) if line.endswith("\n")]
    assert 2 <= len(before) < 12, len(before)   # interrupted part-way (one worker: episodes one by one)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-800:]
    lines = eps_file.read_text().splitlines(keepends=True)
    assert lines[:len(before)] == before  # the episodes recorded before Ctrl-C are kept byte for byte
    ids = [json.loads(line)["episode_id"] for line in lines]
    from harness.results.store import Cell
    planned = {Cell.episode_id(t, i, s) for t, i, s in episode_plan(Registry().suite("tabletop"), 0, 3)}
    assert len(ids) == len(set(ids)) == 12 and set(ids) == planned
    result = json.loads((eps_file.parent / "result.json").read_text())
    assert result["metrics"]["n_episodes"] == 12
    assert result["extra"]["episodes_run"] == 12 - len(before)   # the resume ran exactly the missing ones


def test_more_episodes_extend_a_cell_and_fewer_are_refused(tabletop, tmp_path):
    """--episodes on an existing cell: more runs only the missing episodes (the recorded ones kept
    byte for byte); fewer is refused instead of reporting more than asked."""
    from harness.errors import UserError
    cell = Store(tmp_path).cell(CellKey("t", "expert", "tabletop", 0, "reference"))
    first = evaluate_cell(cell, tabletop, "expert", episodes_per_task=1, workers=2, progress=False)
    assert first["metrics"]["n_episodes"] == 4 and first["extra"]["episodes_run"] == 4
    before = cell.episodes_path.read_bytes()
    more = evaluate_cell(cell, tabletop, "expert", episodes_per_task=2, workers=2, progress=False)
    after = cell.episodes_path.read_bytes()
    assert after.startswith(before) and len(after.splitlines()) == 8
    assert more["metrics"]["n_episodes"] == 8 and more["config"]["episodes_per_task"] == 2
    assert more["extra"]["episodes_run"] == 4        # only the missing ones ran
    with pytest.raises(UserError, match="outside the 4 asked for"):
        evaluate_cell(cell, tabletop, "expert", episodes_per_task=1, workers=2, progress=False)
    assert cell.episodes_path.read_bytes() == after and cell.result()["metrics"]["n_episodes"] == 8


def test_a_cell_is_never_extended_on_another_device(trained, tabletop, tmp_path):
    """The cell's source records the device class: episodes (and latencies) of a cell made on a
    GPU are neither pooled with CPU ones nor thrown away; extending it on the CPU is refused."""
    from harness.errors import UserError
    cell = Store(tmp_path).cell(CellKey("t", "fastwam", "tabletop", 0, "O1-kvcache"))
    evaluate_cell(cell, tabletop, load_policy(trained, device="cpu"), checkpoint_path=trained, episodes_per_task=1,
                  workers=2, progress=False)
    assert cell.source()["device"] == "cpu" and cell.result()["config"]["device"] == "cpu"
    # as if `wam-bench eval` had made the cell on a GPU (its default where one is present)
    (cell.path / "source.json").write_text(json.dumps({**cell.source(), "device": "cuda"}))
    before = cell.episodes_path.read_bytes()
    with pytest.raises(UserError, match="holds episodes run on cuda, this run is on cpu"):
        evaluate_cell(cell, tabletop, load_policy(trained, device="cpu"), checkpoint_path=trained,
                      episodes_per_task=2, workers=2, progress=False)
    assert cell.episodes_path.read_bytes() == before and cell.source()["device"] == "cuda"


def test_a_checkpoint_never_resumes_on_other_demonstrations(trained, tabletop, tmp_path):
    """The train cell records which demonstrations it saw (path and content hash); training into
    it again on another dataset is refused instead of relabelling the checkpoint."""
    from harness.data.lerobot import dataset_identity
    from harness.errors import UserError
    out = trained.parent
    info = json.loads((out / "train.json").read_text())
    ds = info["datasets"][0]["path"]
    assert info["datasets"] == dataset_identity(ds) and len(info["datasets"][0]["sha256"]) == 64
    other = make_demos(tabletop, 3, seed=0, out=tmp_path / "other", workers=1, video=False, quiet=True)
    rv = resolve_variant("fastwam")
    rv = ResolvedVariant(override(rv.variant, {"train.steps": 20, "train.batch_size": 8}), rv.backbone)
    with pytest.raises(UserError, match="trained on other demonstrations"):
        train(rv, other, out, progress=False)
    assert json.loads((out / "train.json").read_text()) == info
