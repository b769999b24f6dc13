"""`wam-bench bench NAME --quick` writes the documented JSON (figures are checked for shape and
sanity, never against timing thresholds: this machine is shared and noisy)."""
import json

import pytest

from harness.cli import main as cli


@pytest.mark.parametrize("name,figures", [("train", {"samples_per_s", "mfu"}),
                                          ("sim", {"sim_steps_per_s", "sim_steps_per_s_policy_cadence"}),
                                          ("eval", {"eval_over_sim", "batched_speedup", "eval_over_sim_policy"}),
                                          ("serve", {"serve_overhead", "serve_overhead_openpi", "serve_overhead_xpolicylab",
                                                     "serve_overhead_vla_eval"})])
def test_bench_writes_json(name, figures, tmp_path, capsys):
    out = tmp_path / f"{name}.json"
    assert cli(["bench", name, "--quick", "--threads", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["bench"] == name and figures <= set(doc["figures"]) and doc["rows"]
    assert all(doc["figures"][f] > 0 for f in figures)
    assert doc["machine"]["cores"] >= 1 and "commit" in doc
    assert "|" in capsys.readouterr().out  # the Markdown table
    if name == "train":
        # MFU is achieved FLOP/s over the measured matmul peak: below 1 unless the FLOPs are overcounted
        # or the peak is not one; and the figure is the row's own arithmetic
        row = doc["rows"][0]
        assert 0 < doc["figures"]["mfu"] == row["mfu"] < 1
        assert row["mfu"] == pytest.approx(row["achieved_gflop_s"] / row["matmul_peak_gflop_s"], rel=1e-9)
        assert row["samples_per_s"] == pytest.approx(row["batch"] * 1000 / row["ms_per_step"], rel=1e-9)
        assert sum(v for k, v in row.items() if k.startswith("time_")) == pytest.approx(1.0)


def test_make_bench_targets_match_the_messages():
    """`make bench` runs the CPU quick figures; `make bench-gpu` is the GPU bench the `bench gpu` note names."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    targets = dict(re.findall(r"^([a-z-]+):[^\n=]*\n((?:\t[^\n]*\n?)+)", text, re.M))
    cpu = re.search(r"^CPU_BENCHES\s*:=\s*(.+)$", text, re.M).group(1).split()
    assert "gpu" not in cpu and {"train", "sim", "latency"} <= set(cpu)
    assert "bench $$b --quick" in targets["bench"] and "bench gpu" not in targets["bench"]
    assert "wam-bench bench gpu" in targets["bench-gpu"]
    gpu_note = (Path(__file__).resolve().parents[1] / "harness" / "bench" / "gpu.py").read_text()
    assert "`make bench-gpu`" in gpu_note and "`make bench`" not in gpu_note


@pytest.mark.slow  # real LIBERO: simulator start-up alone is seconds per environment
def test_bench_eval_libero_reports_episodes_per_hour_and_their_split(tmp_path):
    out = tmp_path / "eval.json"
    assert cli(["bench", "eval", "--suite", "libero_object", "--quick", "--threads", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    f = doc["figures"]
    assert f["libero_batched_speedup"] == pytest.approx(f["libero_episodes_per_hour"] / f["libero_episodes_per_hour_unbatched"])
    batch = {r["mode"].rsplit(" ", 1)[-1]: r["mean_batch"] for r in doc["rows"] if "max batch" in r["mode"]}
    assert batch["1"] == 1.0 and float(batch[max(batch, key=int)]) > 1.0, batch  # the batched run batches
    parts = ("physics", "renders", "inference_batch1", "inference_batched")
    assert all(f[f"libero_episode_s_{p}"] > 0 for p in parts)
    sim = f["libero_episode_s_physics"] + f["libero_episode_s_renders"]
    assert f["libero_batched_speedup_cpu_bound"] == pytest.approx(
        (sim + f["libero_episode_s_inference_batch1"]) / (sim + f["libero_episode_s_inference_batched"]))


@pytest.mark.slow  # real LIBERO episodes: ~1 min on a quiet 2-core machine, 3 min at load 10
def test_bench_demos_writes_json(tmp_path):
    """`bench demos --quick`: the protocol-reset 256 px path against the reused sim at 256 px rendered
    every 4th step (what `demos` does), one expert episode each, in core-seconds; the figures are
    each mode's own rows."""
    out = tmp_path / "demos.json"
    assert cli(["bench", "demos", "--suite", "libero_object", "--quick", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    f = doc["figures"]
    assert {r["mode"] for r in doc["rows"]} == {"before", "256px-stride4"}
    for mode in ("before", "256px-stride4"):
        (row,) = [r for r in doc["rows"] if r["mode"] == mode]
        assert row["success"] and f[f"demo_core_s_per_episode_{mode}"] == row["core_s"] > 0
        assert f[f"suite_500_minutes_2_workers_{mode}"] == pytest.approx(500 * row["core_s"] / 2 / 60)
    assert f["demo_speedup_256px-stride4"] == pytest.approx(
        f["demo_core_s_per_episode_before"] / f["demo_core_s_per_episode_256px-stride4"])
