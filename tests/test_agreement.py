"""Two harnesses agree on LIBERO: one checkpoint, the same LIBERO episodes through our evaluator
and through vla-eval's own LIBERO benchmark and orchestrator (in-process) against our vla-eval
server, under the settings `libero_config` derives from the suite (`wam-bench bench agreement`).

The episodes are short (2 settle steps, 20 policy steps: three calls of an 8-action chunk): vla-eval's
LIBERO renders both cameras at 256 px every step, about 0.7 s a step on this machine. The
checkpoint holds random weights (named so: `random_libero_checkpoint`) and observes the suite's
frame, agentview | wrist side by side: the check is that both harnesses feed the policy
bit-identical observations and run its chunks alike, which no training changes;
docs/harness_agreement.md has a run with a trained checkpoint and full-length episodes."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.cli import main as cli
from harness.config import Registry
from harness.errors import UserError
from harness.eval.protocols.vla_eval import libero_config

SUITES = Path(__file__).resolve().parents[1] / "suites"
# libero_object's first task, shortened, with every setting vla-eval's LIBERO benchmark cannot take
# set its way; both cameras, composed into one frame as the suite says
ALIGNED = {"include": str(SUITES / "libero_object.yaml"), "description": "libero_object, aligned with vla-eval",
           "episodes_per_task": 2, "max_steps": 20, "settle_steps": 2,
           "options": {"binarize_gripper": True, "robosuite_camera_obs": True, "env_seed": 7},
           "tasks": [{"name": "pick_up_the_alphabet_soup_and_place_it_in_the_basket",
                      "instruction": "pick up the alphabet soup and place it in the basket", "options": {"task_id": 0}}]}


def random_libero_checkpoint(path: Path, spec) -> Path:
    """A tiny fastwam with random weights that observes suite `spec`'s frame (its cameras, composed)."""
    import torch

    from harness.config import resolve_variant
    from harness.model.frame import Frame
    from harness.model.wam import WorldActionModel
    from harness.policy import checkpoint
    rv = resolve_variant("fastwam")
    torch.manual_seed(0)
    frame = Frame.of_suite(spec, rv.backbone.codec.image_size)
    model = WorldActionModel(rv, spec.action_dim, spec.state_dim, frame_size=frame.shape)
    meta = {"config": rv.to_dict(), "config_hash": rv.hash, "stats": {}, "action_size": spec.action_dim,
            "state_size": spec.state_dim, **frame.to_meta()}
    return checkpoint.save(path, model, meta)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    root = tmp_path_factory.mktemp("agreement")
    (root / "suites").mkdir()
    (root / "suites" / "libero_object_aligned.yaml").write_text(yaml.safe_dump(ALIGNED))
    spec = Registry([root]).suite("libero_object_aligned")
    assert list(spec.cameras) == ["agentview", "wrist"] and spec.compose == "horizontal"
    return root, random_libero_checkpoint(root / "fastwam.safetensors", spec)


def test_libero_config_maps_our_protocol_and_names_what_it_cannot(aligned):
    root, _ = aligned
    spec = Registry([root]).suite("libero_object_aligned")
    config, unaligned = libero_config(spec)
    assert unaligned == []
    (entry,) = config["benchmarks"]
    assert entry["benchmark"] == "vla_eval.benchmarks.libero.benchmark:LIBEROBenchmark"
    assert (entry["episodes_per_task"], entry["max_steps"], entry["tasks"]) == (2, 20, [ALIGNED["tasks"][0]["instruction"]])
    assert entry["params"] == {"suite": "libero_object", "seed": 7, "num_steps_wait": 2, "quat_no_antipodal": True}
    _, unaligned = libero_config(Registry().suite("libero_object"), 60)   # the shipped suite, as it is
    assert [u.split(":")[0] for u in unaligned] == ["gripper", "images", "env seed", "episodes"]
    with pytest.raises(UserError, match="LIBERO's own suites"):
        libero_config(Registry().suite("tabletop"))


def test_our_evaluator_and_vla_evals_libero_agree_call_by_call(aligned, tmp_path, capsys):
    """Two episodes (init states 0 and 1) through both harnesses: the same success and steps, and at
    every call the same pixels, state, instruction and noise seed in, the same chunk out."""
    root, ckpt = aligned
    out = tmp_path / "agreement.json"
    assert cli(["--include-path", str(root), "bench", "agreement", "--checkpoint", str(ckpt),
                "--suite", "libero_object_aligned", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert [(r["task_id"], r["init"]) for r in rows] == [(0, 0), (0, 1)]
    for r in rows:
        assert r["error"] is None and r["error_vla_eval"] is None, r
        assert r["calls"] == r["calls_vla_eval"] == 3 and r["steps"] == r["steps_vla_eval"] == 20, r
        assert r["first_difference"] is None and r["agree"], r
    assert doc["figures"]["agreement"] == doc["figures"]["identical_calls"] == 1.0
    assert doc["figures"]["unaligned_settings"] == 0
    assert "cameras compared: agentview, wrist" in doc["notes"]   # the frame's two tiles, each checked


def test_env_seed_resets_as_vla_evals_libero():
    """With `env_seed` our environment's reset leaves the simulator exactly as vla-eval's LIBERO
    benchmark leaves its own (state and the solver's warm start, which `set_init_state` keeps and
    the reset's random placement sets), whatever the episode seed; without it the warm start
    differs in the last bits, and long episodes part (docs/harness_agreement.md)."""
    import dataclasses

    from vla_eval.benchmarks.libero.benchmark import LIBEROBenchmark
    from vla_eval.recording import NullEpisodeRecorder

    from harness.suites.base import make_env
    spec = Registry().suite("libero_object")
    spec = dataclasses.replace(spec, cameras=["agentview"], settle_steps=3,
                               options={**spec.options, "env_seed": 7, "robosuite_camera_obs": True})
    ours = make_env(spec, 0)                      # seeded when made, as vla-eval's env
    theirs = LIBEROBenchmark(suite="libero_object", seed=7, num_steps_wait=3)
    theirs._recorder = NullEpisodeRecorder()      # what start_episode sets before its reset
    try:
        ours.reset(0, seed=12345)
        sim = ours.inner.sim                      # a reset makes a new one (robosuite's hard reset)
        mine = (sim.get_state().flatten(), sim.data.qacc_warmstart.copy())
        theirs.reset({**theirs.get_tasks()[0], "episode_idx": 0})   # makes its env, seeds it, resets
        other = theirs._env.env.sim
        assert np.array_equal(mine[0], other.get_state().flatten())
        assert np.array_equal(mine[1], other.data.qacc_warmstart)
        ours.env_seed = None                      # the default: seeded per episode
        ours.reset(0, seed=12345)
        sim = ours.inner.sim                      # the same init state, another warm start
        assert not np.array_equal(sim.data.qacc_warmstart, mine[1])
    finally:
        ours.close()
        theirs.cleanup()


@pytest.mark.slow
def test_expert_replay_succeeds_alike_in_both_harnesses(aligned, tmp_path):
    """`--policy expert` (about 3 minutes here): the scripted expert's actions for task 0 from init
    state 0, recorded in our environment, replayed through both harnesses over the full step limit:
    both succeed at the same step, every call bit-identical."""
    root, _ = aligned
    out = tmp_path / "expert.json"
    suite = {**ALIGNED, "episodes_per_task": 1, "max_steps": 280, "settle_steps": 10}
    (root / "suites" / "libero_object_expert.yaml").write_text(yaml.safe_dump(suite))
    assert cli(["--include-path", str(root), "bench", "agreement", "--policy", "expert",
                "--suite", "libero_object_expert", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["success"] is True and row["success_vla_eval"] is True, row
    assert row["steps"] == row["steps_vla_eval"] < 280 and row["first_difference"] is None, row
