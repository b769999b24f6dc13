"""The LIBERO path proved as data (issue 21 item 4): real LIBERO, both cameras, small.

(a) Stored demonstrations replayed through the evaluator (its reset to their init states, its
settle steps, its worker executing action chunks of the policy's horizon) succeed again in the
same number of steps, every state and every frame the evaluator shows a policy (at each call and
in the DreamZero history between calls) bit-identical to the dataset's rendered rows; and again
when their actions go through the trained model's normalization and the un-normalization its
inference applies (float32 rounding moves the states by ~1e-7, so there within a tolerance).
(b) A fastwam policy overfit on those demonstrations succeeds in closed loop from their init
states: dataset -> windows -> normalization -> model -> chunking -> adapter, all the real ones.

The demonstrations are the scripted expert's (`record_expert`, what `wam-bench demos` records),
rendered every 4th step as `demos` stores LIBERO, but started from the suite's own init states in
the evaluator's episode plan, so the replay and the closed loop run the evaluator unmodified.
Each demonstration is ~140 steps; the module takes ~2.5 minutes on a quiet 2-core machine.
Planted by hand, each fails here: the policy skipping un-normalization or flipping the gripper's
sign ((b): both episodes fail), a dataset's frames read back rotated ((a): step 0 differs),
un-normalization dropping the center ((a), normalized: the round trip is checked to 1e-5; the
episodes alone still succeeded, LIBERO's action means being small).
"""
import dataclasses

import numpy as np
import pytest
import torch

from harness.config import Registry, ResolvedVariant, override, resolve_variant, to_dict
from harness.data.demos import DEFAULT_NOISE, held, record_expert
from harness.data.lerobot import Episode, open_dataset, write_dataset
from harness.eval.rollout import episode_plan, run_episodes
from harness.suites.base import make_env

DEMOS = 2           # demonstrations (init states 0 and 1 of the task)
STRIDE = 4          # LiberoEnv.DEMO_IMAGE_STRIDE: the rows between hold the last rendered frame
# 600 steps on training seed 0 memorized both demonstrations; the recipe is at the edge of what the
# tiny preset memorizes: training seeds 1 and 2 failed both (0/2 each), 1500 steps on seed 1 got
# 1/2, and 300 steps or lr 3e-3 failed on seed 0. One torch thread and fixed seeds make it
# deterministic on a given CPU, so it guards the chain (the planted defects above fail it), but a
# training change that moves the weights can flip it: then look at the chain before the recipe.
RECIPE = {"train.steps": 600, "train.lr": 1e-3, "train.batch_size": 16, "train.checkpoint_every": 10_000}


@pytest.fixture(scope="module")
def spec():
    s = Registry().suite("libero_object")
    # one task; 64 px cameras (the renderer costs the same at any size; PNG keeps them exact)
    return dataclasses.replace(s, tasks=s.tasks[:1], image_size=64)


@pytest.fixture(scope="module")
def demos(spec, tmp_path_factory):
    """DEMOS expert demonstrations from the evaluator's first episodes (task 0, init i, seed i)."""
    env = make_env(spec, 0)
    eps = []
    try:
        for task, init, seed in episode_plan(spec, 0, DEMOS):
            env.expert_noise = DEFAULT_NOISE
            env.reset(init, seed)
            rec = record_expert(env, STRIDE)
            assert rec is not None, f"the expert failed from init state {init}"
            states, actions, frames = rec
            eps.append(Episode(spec.tasks[task].instruction, states, actions,
                               {c: held(f, len(actions), STRIDE) for c, f in frames.items()},
                               {"init_index": init, "seed": seed, "start": env.start}))
    finally:
        env.close()
    root = write_dataset(tmp_path_factory.mktemp("libero") / "demos", eps, fps=spec.control_hz, video=False,
                         info_extra={"image_stride": STRIDE, "demos": {"suite": spec.name, "suite_spec": to_dict(spec)}})
    return open_dataset(root)


@pytest.fixture(scope="module")
def overfit(demos, tmp_path_factory):
    from harness.train import train
    rv = resolve_variant("fastwam")
    rv = ResolvedVariant(override(rv.variant, RECIPE), rv.backbone)
    return train(rv, demos.root, tmp_path_factory.mktemp("train"), progress=False).checkpoint


class Replay:
    """A policy that plays the stored demonstrations back through the evaluator, their actions
    normalized as training sees them and un-normalized as inference returns them (`model`'s own
    functions). It observes like DreamZero (the frame-stride history between calls) and checks
    that every frame the evaluator shows it is the dataset's rendered row at that step."""
    needs_history = True
    frame_stride = STRIDE
    action_horizon = 8
    last_latency_ms = 0.0

    def __init__(self, data, model=None):
        self.eps, self.model, self.calls = list(data.episodes()), model, []
        self.exact = model is None  # raw actions: every state and frame bit-identical to the dataset's

    def reset(self):
        self.ep, self.t = None, 0

    def infer(self, obs, noise_seed=None):
        if self.ep is None:  # the episode whose first state this is
            self.ep = next(e for e in self.eps if np.array_equal(e.state[0], obs.state))
        ep, t, H = self.ep, self.t, self.action_horizon
        if self.exact:
            np.testing.assert_array_equal(obs.state, ep.state[t], err_msg=f"state at step {t}")
        else:  # float32 normalization rounds an action by ~1e-7, and contacts grow it a little
            np.testing.assert_allclose(obs.state, ep.state[t], atol=2e-3, err_msg=f"state at step {t}")
        shown = [(t, obs.images)] + [(t - H + STRIDE * (j + 1), h) for j, h in enumerate(obs.history)]
        assert t == 0 or len(obs.history) == H // STRIDE
        for step, images in shown:
            assert step % STRIDE == 0, f"the evaluator showed step {step}, a row between rendered ones"
            for cam, img in images.items():
                if self.exact or step == 0:
                    np.testing.assert_array_equal(img, ep.images[cam][step], err_msg=f"{cam} at step {step}")
                else:
                    diff = np.abs(img.astype(float) - ep.images[cam][step]).mean()
                    assert diff < 2.0, f"{cam} at step {step}: mean difference {diff:.2f} levels"
        self.calls.append(t)
        self.t += H
        actions = ep.action[t:t + H]
        if self.exact:
            return actions
        with torch.no_grad():
            back = self.model.denorm_action(self.model.norm_action(torch.from_numpy(actions))).numpy()
        np.testing.assert_allclose(back, actions, atol=1e-5, err_msg="un-normalization does not invert normalization")
        return back


def test_replayed_demonstrations_succeed_through_the_evaluator(spec, demos):
    """Raw actions: the evaluator's reset, settle steps, observation and chunking reproduce the
    recording bit for bit, success at the same step."""
    replay = Replay(demos)
    records = []
    run_episodes(spec, episode_plan(spec, 0, DEMOS), replay, records.append, workers=1, progress=False)
    lengths = {e.extra["init_index"]: len(e) for e in demos.episodes()}
    got = {r["init_index"]: (r["success"], r["steps"], r["error"]) for r in records}
    assert got == {i: (True, T, None) for i, T in lengths.items()}
    assert len(replay.calls) == sum(-(-T // 8) for T in lengths.values())


def test_normalized_demonstrations_succeed_through_the_evaluator(spec, demos, overfit):
    """The same actions through the trained model's normalization and the un-normalization its
    inference applies (min/max or mean/std from the dataset): the episodes still succeed."""
    from harness.policy.policy import build_policy
    replay = Replay(demos, build_policy(overfit, "O1-kvcache", device="cpu").model)
    records = []
    run_episodes(spec, episode_plan(spec, 0, DEMOS), replay, records.append, workers=1, progress=False)
    lengths = {e.extra["init_index"]: len(e) for e in demos.episodes()}
    for r in records:
        assert r["success"] and r["error"] is None and abs(r["steps"] - lengths[r["init_index"]]) <= 8, r


def test_a_policy_overfit_on_the_demonstrations_succeeds_from_their_init_states(spec, demos, overfit, tmp_path):
    from harness.eval.cell import evaluate_cell
    from harness.policy.policy import build_policy
    from harness.results.store import CellKey, Store
    cell = Store(tmp_path).cell(CellKey("path", "fastwam", spec.name, 0, "O1-kvcache"))
    res = evaluate_cell(cell, spec, build_policy(overfit, "O1-kvcache", device="cpu", suite=spec),
                        checkpoint_path=overfit, episodes_per_task=DEMOS, workers=1, progress=False)
    eps = {e["init_index"]: e for e in cell.episodes()}
    assert sorted(eps) == list(range(DEMOS)) and all(e["error"] is None for e in eps.values())
    assert all(e["success"] for e in eps.values()), {i: (e["success"], e["steps"], e["max_progress"]) for i, e in eps.items()}
    assert res["metrics"]["success_rate"] == 1.0
