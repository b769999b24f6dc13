"""`wam-bench bench NAME --quick` writes the documented JSON (figures are checked for shape and
sanity, never against timing thresholds: this machine is shared and noisy)."""
import json

import pytest

from harness.cli import main as cli


@pytest.mark.parametrize("name,figures", [("train", {"samples_per_s", "mfu"}),
                                          ("sim", {"sim_steps_per_s", "sim_steps_per_s_policy_cadence"}),
                                          ("eval", {"eval_over_sim", "batched_speedup", "eval_over_sim_policy"}),
                                          ("serve", {"serve_overhead"})])
def test_bench_writes_json(name, figures, tmp_path, capsys):
    out = tmp_path / f"{name}.json"
    assert cli(["bench", name, "--quick", "--threads", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["bench"] == name and figures <= set(doc["figures"]) and doc["rows"]
    assert all(doc["figures"][f] > 0 for f in figures)
    assert doc["machine"]["cores"] >= 1 and "commit" in doc
    assert "|" in capsys.readouterr().out  # the Markdown table
    if name == "train":
        assert 0 < doc["figures"]["mfu"] < 1.5
