"""The built-in tabletop suite: real MuJoCo physics, rendering, experts, rubric, errors."""
import dataclasses
import json

import numpy as np
import pytest

from harness.config import ConfigError, Registry, TaskSpec
from harness.errors import UserError
from harness.suites import tabletop
from harness.suites.base import make_env


@pytest.fixture(scope="module")
def spec():
    return Registry().suite("tabletop")


def rollout(env, steps):
    """Run the expert until it succeeds and retreats (or `steps` run out); return progresses."""
    prog = [env.progress()]
    for _ in range(steps):
        env.step(env.expert_action())
        prog.append(env.progress())
        if env.success() and env._phase == "retreat":
            break
    return prog


def test_scene_renders_and_changes_when_an_object_moves(spec):
    with make_env(spec, 0) as env:
        env.reset(0, 0)
        obs = env.observe()
        img = obs.images["front"]
        assert img.shape == (spec.image_size, spec.image_size, 3) and img.dtype == np.uint8
        assert img.std() > 20  # not blank: table, cubes, pads, gripper
        red = np.array([230, 30, 25])
        assert (np.abs(img.astype(int) - red).sum(-1) < 90).sum() > 10  # the red cube is visible
        a = env._cube_qadr["red"]
        env.data.qpos[a:a + 2] += [0.08, 0.05]
        env.step(np.zeros(4))
        moved = env.observe().images["front"]
        assert np.abs(moved.astype(int) - img.astype(int)).sum(-1).astype(bool).sum() > 20
        assert env.observe(render=False).images == {}
        assert obs.state.shape == (4,) and obs.instruction == spec.tasks[0].instruction


@pytest.mark.parametrize("suite,task", [("tabletop", t) for t in range(4)]
                         + [(s, t) for s in ("tabletop-shuffled", "tabletop-free") for t in (1, 2)])
def test_expert_succeeds_on_eval_inits(suite, task):
    spec = Registry().suite(suite)
    with make_env(spec, task) as env:
        wins = 0
        for i in range(spec.init_states):
            env.reset(i, 0)
            assert not env.success() and env.progress() == 0.0
            rollout(env, spec.max_steps)
            wins += env.success()
        assert wins >= 0.9 * spec.init_states, f"{spec.tasks[task].name}: expert {wins}/{spec.init_states}"


@pytest.mark.parametrize("task", range(4))
def test_progress_climbs_through_the_stages_to_one(spec, task):
    with make_env(spec, task) as env:
        env.reset(1, 0)
        prog = rollout(env, spec.max_steps)
        assert prog[0] == 0.0 and prog[-1] == 1.0 and env.success()
        assert {0.25, 0.5, 0.75} <= set(prog)  # every stage of the rubric is visited
        assert all(b >= a for a, b in zip(prog, prog[1:]))  # the expert never loses credit


def test_layouts_fixed_keeps_slots_shuffled_permutes_them():
    fixed = [tabletop.demo_init(s, "fixed") for s in range(40)]
    shuffled = [tabletop.demo_init(s, "shuffled") for s in range(40)]
    slot = lambda xy, slots: int(np.argmin(np.linalg.norm(slots - np.asarray(xy[:2]), axis=1)))  # noqa: E731
    for init in fixed:  # every colour in its own slot, within the jitter
        for i, c in enumerate(tabletop.CUBES):
            assert slot(init["cubes"][c], tabletop.CUBE_SLOTS) == i
            assert np.abs(np.asarray(init["cubes"][c][:2]) - tabletop.CUBE_SLOTS[i]).max() <= tabletop.SLOT_JITTER
        assert [slot(init["pads"][p], tabletop.PAD_SLOTS) for p in tabletop.PADS] == [0, 1]
    arrangements = {tuple(slot(i["cubes"][c], tabletop.CUBE_SLOTS) for c in tabletop.CUBES) for i in shuffled}
    assert len(arrangements) == 6  # all 3! arrangements appear in 40 draws
    free = tabletop.demo_init(0, "free")
    assert free != tabletop.demo_init(0, "fixed")
    with pytest.raises(ConfigError, match="layout"):
        tabletop.sample_init(np.random.default_rng(0), "grid")


def test_same_seed_same_episode_and_demo_inits_differ_from_eval(spec):
    def episode(seed):
        with make_env(spec, 1) as env:
            env.expert_noise = 0.2
            env.reset(None, seed)
            states = []
            for _ in range(30):
                env.step(env.expert_action())
                states.append(env.state())
            return np.array(states)
    a, b, c = episode(3), episode(3), episode(4)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    evals = {json.dumps(tabletop.stored_init(t.name, i)) for t in spec.tasks for i in range(tabletop.STORED_INITS)}
    demos = {json.dumps(tabletop.demo_init(s)) for s in range(500)}
    assert len(demos) == 500 and not evals & demos


def test_stored_inits_match_the_generator(spec):
    stored = json.loads(tabletop.INITS.read_text())
    assert stored == tabletop.generate_inits([t.name for t in spec.tasks])
    assert stored["count"] >= spec.init_states


def test_bad_input_gives_clear_errors(spec):
    with pytest.raises(ConfigError, match="task index 7 is out of range"):
        make_env(spec, 7)
    with make_env(spec, 0) as env:
        with pytest.raises(UserError, match=r"shape \(4,\)"):
            env.step(np.zeros(3))
        with pytest.raises(UserError, match="not finite"):
            env.step(np.array([0, 0, np.nan, 0]))
        with pytest.raises(UserError, match="init_index"):
            env.reset(spec.init_states, 0)
    bad = dataclasses.replace(spec, tasks=[TaskSpec("x", "do it", {"kind": "stack", "object": "red", "target": "red"})])
    with pytest.raises(ConfigError, match="options.target"):
        make_env(bad, 0)
    with pytest.raises(ConfigError, match="unknown tabletop option"):
        make_env(dataclasses.replace(spec, options={"max_stepp": 1}), 0)


def test_bench_sim_measures_three_modes_side_by_side():
    from types import SimpleNamespace

    from harness.bench import sim
    out = sim.measure(SimpleNamespace(quick=True, suite="tabletop", budget_s=1.5, include_path=[]))
    f = out["figures"]
    assert {"sim_steps_per_s", "sim_steps_per_s_policy_cadence"} <= set(f) and f["frame_stride"] == 4
    assert f["sim_steps_per_s"] > f["sim_steps_per_s_render_every_step"] > 0
    assert [r["frames"] for r in out["rows"]] == [0, out["rows"][1]["steps"] // 4, out["rows"][2]["steps"]]
