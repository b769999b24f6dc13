"""The built-in `tabletop` suite: a small MuJoCo scene made to train and evaluate on a 2-core CPU.

One scene (tabletop.xml) for every task: a position-controlled parallel gripper, red/green/blue cubes and
yellow/purple pads. Object and pad positions are random, so the instruction is the only thing
that tells a policy which task it is. A task is data (`options` in suites/tabletop.yaml):

    kind: pick_place | push | stack,  object: red|green|blue,  target: yellow|purple (a pad) or a cube colour (stack)

Action (4-d, in [-1, 1]): xyz displacement of the gripper × `max_step` metres per control step,
then the gripper (< 0 open, > 0 close). State (4-d): gripper (TCP) xyz + finger opening (metres).

Progress rubric (staged; stages below 1 are latched for the episode, 1.0 only while `success()`):
    pick_place / stack: reached 0.25, grasped 0.5, lifted 0.75, placed (success) 1.0
    push:               reached 0.25, a quarter of the way 0.5, halfway 0.75, on the pad 1.0

Evaluation init states are stored in tabletop_inits.json (so they never drift with code);
`python -m harness.suites.tabletop --check` verifies that file against `eval_init()`, `--write`
regenerates it. Demo inits come from a different seed stream and never coincide with them.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

import mujoco  # the GL backend is chosen at import: `wam-bench` sets it first (harness.env.gl_defaults)

from harness.config import ConfigError, SuiteSpec  # noqa: E402
from harness.errors import UserError  # noqa: E402
from harness.suites.base import Observation, SimulatorError, SuiteEnv  # noqa: E402

HERE = Path(__file__).resolve().parent
XML = HERE / "tabletop.xml"
INITS = HERE / "tabletop_inits.json"

CUBES = ("red", "green", "blue")
PADS = ("yellow", "purple")
KINDS = ("pick_place", "push", "stack")
HALF = 0.025                      # cube half size (m); a resting cube's centre is at z = HALF
PAD_TOL = 0.035                   # cube centre within this (xy, per axis) of a pad centre = on it
STACK_TOL = 0.02                  # top cube's xy within this of the bottom cube's
Z_MIN, Z_MAX = 0.012, 0.20        # TCP height limits: fingertips clear the table, stays in view
XY_LIM = 0.25
MAX_LAG = 0.03                    # the gripper setpoint stays within this of the gripper (m)
OPEN, CLOSED = 0.04, 0.0          # finger position targets
STORED_INITS = 50                 # per task in tabletop_inits.json
EVAL_STREAM, DEMO_STREAM, EXPERT_STREAM = 7001, 7002, 7003   # disjoint seed streams
OPTIONS = {"max_step": 0.025, "expert_noise": 0.0, "layout": "fixed"}  # suite `options` this adapter reads
LAYOUTS = ("fixed", "shuffled", "free")   # easiest to hardest; see sample_init
CUBE_SLOTS = np.array([[-0.12, -0.05], [0.0, -0.05], [0.12, -0.05]])  # front row: fingers clear a neighbour
PAD_SLOTS = np.array([[-0.10, 0.09], [0.10, 0.09]])                  # back row
SLOT_JITTER = 0.015               # uniform ± (m) around a slot


# --------------------------------------------------------------------------- initial states

def sample_init(rng: np.random.Generator, layout: str = "fixed") -> dict:
    """A random scene layout, from easiest to hardest to learn from pixels:

    `fixed` (the default): each cube and pad in its own slot (cubes in the front row, pads at the
    back), jittered by ±1.5 cm, as LIBERO-Goal does: one scene, the instruction says what to do,
    the image says exactly where. Learnable by the tiny backbone in `make run`'s minutes.
    `shuffled`: the same slots in a random arrangement (12), so the policy must also find the
    named cube and pad in the image; needs several times the training.
    `free`: cubes and pads anywhere on the table, kept apart.
    """
    if layout in ("fixed", "shuffled"):
        shuffle = layout == "shuffled"
        cubes = CUBE_SLOTS[rng.permutation(3) if shuffle else [0, 1, 2]] + rng.uniform(-SLOT_JITTER, SLOT_JITTER, (3, 2))
        pads = PAD_SLOTS[rng.permutation(2) if shuffle else [0, 1]] + rng.uniform(-SLOT_JITTER, SLOT_JITTER, (2, 2))
    elif layout == "free":
        cubes, pads = _free_positions(rng)
    else:
        raise ConfigError(f"tabletop: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    yaw = rng.uniform(-0.3, 0.3, size=3)
    grip = rng.uniform([-0.05, -0.08, 0.12], [0.05, -0.02, 0.16])
    r = lambda v: [round(float(x), 5) for x in v]  # noqa: E731  (JSON-exact)
    return {"cubes": {c: r([*cubes[i], yaw[i]]) for i, c in enumerate(CUBES)},
            "pads": {p: r(pads[i]) for i, p in enumerate(PADS)},
            "gripper": r(grip)}


def _free_positions(rng: np.random.Generator):
    """Cubes and pads anywhere, by rejection: pads apart, cubes apart and off the pads."""
    for _ in range(10_000):
        pads = rng.uniform([-0.14, -0.02], [0.14, 0.12], size=(2, 2))
        if np.linalg.norm(pads[0] - pads[1]) < 0.15:
            continue
        cubes = rng.uniform([-0.15, -0.10], [0.15, 0.10], size=(3, 2))
        if min(np.linalg.norm(cubes[i] - cubes[j]) for i, j in ((0, 1), (0, 2), (1, 2))) < 0.10:
            continue
        if min(np.linalg.norm(c - p) for c in cubes for p in pads) < 0.10:
            continue
        return cubes, pads
    raise RuntimeError("could not sample a tabletop layout")  # pragma: no cover


def eval_init(task_name: str, index: int, layout: str = "fixed") -> dict:
    """The generator of evaluation init `index` of a task (stream disjoint from demos)."""
    return sample_init(np.random.default_rng([EVAL_STREAM, zlib.crc32(task_name.encode()), index]), layout)


def demo_init(seed: int, layout: str = "fixed") -> dict:
    return sample_init(np.random.default_rng([DEMO_STREAM, seed]), layout)


def generate_inits(task_names, count: int = STORED_INITS) -> dict:
    return {"generator": "harness.suites.tabletop.eval_init", "count": count,
            "layouts": {lay: {n: [eval_init(n, i, lay) for i in range(count)] for n in task_names} for lay in LAYOUTS}}


_stored: dict | None = None


def stored_init(task_name: str, index: int, layout: str = "fixed") -> dict:
    """Eval init from the stored file; tasks a user adds fall back to the same generator."""
    global _stored
    if _stored is None:
        _stored = json.loads(INITS.read_text()) if INITS.is_file() else {"layouts": {}}
    inits = _stored["layouts"].get(layout, {}).get(task_name)
    if inits is not None and index < len(inits):
        return inits[index]
    return eval_init(task_name, index, layout)


# --------------------------------------------------------------------------- the environment

class TabletopEnv(SuiteEnv):
    """One task of the tabletop suite: physics always, rendering only on `observe(render=True)`."""
    SERVE_KEYS = {"images": {"observation/image": "front"}, "state": "observation/state", "prompt": "prompt"}

    def __init__(self, spec: SuiteSpec, task_index: int):
        if not 0 <= task_index < len(spec.tasks):
            raise ConfigError(f"suite '{spec.name}' has {len(spec.tasks)} tasks; task index {task_index} is out of range")
        super().__init__(spec, task_index)
        self.kind, self.obj, self.target = self._parse_task()
        unknown = set(spec.options) - set(OPTIONS)
        if unknown:
            raise ConfigError(f"suite '{spec.name}': unknown tabletop option(s) {sorted(unknown)}; valid: {sorted(OPTIONS)}")
        opts = {**OPTIONS, **spec.options}
        self.max_step = float(opts["max_step"])
        self.expert_noise = float(opts["expert_noise"])
        self.layout = opts["layout"]
        if self.layout not in LAYOUTS:
            raise ConfigError(f"suite '{spec.name}': options.layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if (spec.action_dim, spec.state_dim) != (4, 4):
            raise ConfigError(f"suite '{spec.name}': the tabletop adapter has action_dim 4 and state_dim 4, "
                              f"got {spec.action_dim} and {spec.state_dim}")

        self.model = mujoco.MjModel.from_xml_path(str(XML))
        self.model.vis.global_.offwidth = self.model.vis.global_.offheight = spec.image_size  # small buffer = fast
        self.data = mujoco.MjData(self.model)
        for cam in spec.cameras:
            if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, cam) < 0:
                raise ConfigError(f"suite '{spec.name}': the tabletop scene has no camera '{cam}'; it has: front")
        m = self.model
        gid = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, n)  # noqa: E731
        self._cube_qadr = {c: m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f"cube_{c}")] for c in CUBES}
        self._cube_geom = {c: gid(f"cube_{c}") for c in CUBES}
        self._pad_geom = {p: gid(f"pad_{p}") for p in PADS}
        self._finger_geoms = (gid("finger_left"), gid("finger_right"))
        self._finger_qadr = [m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f)]
                             for f in ("finger_left", "finger_right")]
        self._grip_qadr = [m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f"grip_{a}")] for a in "xyz"]
        self._tcp_site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "tcp")
        self.substeps = max(1, round(1.0 / (spec.control_hz * m.opt.timestep)))
        self._chunks = [self.substeps // 10 + (1 if i < self.substeps % 10 else 0) for i in range(10)]
        self._chunks = [c for c in self._chunks if c]
        self._renderer = None
        self._expert_rng = np.random.default_rng(0)
        self.reset(0, 0)

    def _parse_task(self):
        o, where = self.task.options, f"suite '{self.spec.name}' task '{self.task.name}'"
        unknown = set(o) - {"kind", "object", "target"}
        if unknown:
            raise ConfigError(f"{where}: unknown option(s) {sorted(unknown)}; valid: kind, object, target")
        kind, obj, target = o.get("kind"), o.get("object"), o.get("target")
        if kind not in KINDS:
            raise ConfigError(f"{where}: options.kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if obj not in CUBES:
            raise ConfigError(f"{where}: options.object must be one of {', '.join(CUBES)}, got {obj!r}")
        valid = [c for c in CUBES if c != obj] if kind == "stack" else list(PADS)
        if target not in valid:
            raise ConfigError(f"{where}: options.target for '{kind}' must be one of {', '.join(valid)}, got {target!r}")
        return kind, obj, target

    # ------------------------------------------------------------------ SuiteEnv interface

    def reset(self, init_index: int | None, seed: int) -> None:
        """`init_index` picks a stored eval layout (then `seed` only seeds the expert's noise)."""
        if init_index is None:
            self.init = demo_init(seed, self.layout)
        else:
            if not isinstance(init_index, (int, np.integer)) or not 0 <= init_index < self.spec.init_states:
                raise UserError(f"suite '{self.spec.name}': init_index must be in [0, {self.spec.init_states}), got {init_index!r}")
            self.init = stored_init(self.task.name, int(init_index), self.layout)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        for c in CUBES:
            x, y, yaw = self.init["cubes"][c]
            a = self._cube_qadr[c]
            d.qpos[a:a + 7] = [x, y, HALF, np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
        for p in PADS:
            m.geom_pos[self._pad_geom[p], :2] = self.init["pads"][p]
        d.qpos[self._grip_qadr] = self.init["gripper"]
        d.qpos[self._finger_qadr] = OPEN
        d.ctrl[:3] = self.init["gripper"]
        d.ctrl[3:] = OPEN
        mujoco.mj_forward(m, d)
        mujoco.mj_step(m, d, nstep=20)  # let contacts settle
        self._target = np.array(self.init["gripper"], dtype=np.float64)
        self._stage = 0.0
        self._start_dist = self._pad_dist(self.obj) if self.kind == "push" else 0.0
        self._phase, self._count, self._axis, self._push_axis, self._axes = "approach", 0, -1, -1, None
        self._expert_rng = np.random.default_rng([EXPERT_STREAM, seed, 0 if init_index is None else int(init_index) + 1])
        self.steps = 0

    def observe(self, render: bool = True) -> Observation:
        images = {cam: self.render(cam) for cam in self.spec.cameras} if render else {}
        return Observation(images=images, state=self.state(), instruction=self.task.instruction)

    def step(self, action) -> None:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (4,):
            raise UserError(f"suite '{self.spec.name}': action must have shape (4,) [dx, dy, dz, gripper], got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise UserError(f"suite '{self.spec.name}': action is not finite: {a.tolist()}")
        a = np.clip(a, -1.0, 1.0)
        m, d = self.model, self.data
        start = self._target
        # the setpoint moves from the last one, but never runs away from a blocked gripper
        goal = self.tcp() + np.clip(start + a[:3] * self.max_step - self.tcp(), -MAX_LAG, MAX_LAG)
        goal[:2] = np.clip(goal[:2], -XY_LIM, XY_LIM)
        goal[2] = np.clip(goal[2], Z_MIN, Z_MAX)
        d.ctrl[3:] = CLOSED if a[3] > 0 else OPEN
        done = 0
        for n in self._chunks:  # ramp the setpoint across the substeps: smooth motion
            done += n
            d.ctrl[:3] = start + (goal - start) * (done / self.substeps)
            mujoco.mj_step(m, d, nstep=n)
        self._target = goal
        if not np.all(np.isfinite(d.qpos)):
            raise SimulatorError(f"tabletop physics diverged at step {self.steps}")
        self.steps += 1
        self._update_stage()

    def success(self) -> bool:
        if self.kind == "stack":
            top, bottom = self._pos(self.obj), self._pos(self.target)
            return bool(np.all(np.abs(top[:2] - bottom[:2]) < STACK_TOL) and 0.04 < top[2] - bottom[2] < 0.06
                        and bottom[2] < HALF + 0.005 and not any(self._touching(self.obj)))
        p = self._pos(self.obj)
        on_pad = np.all(np.abs(p[:2] - self._pad(self.target)) < PAD_TOL) and p[2] < HALF + 0.005
        return bool(on_pad and (self.kind == "push" or not any(self._touching(self.obj))))

    def progress(self) -> float:
        return 1.0 if self.success() else self._stage

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ state, rendering

    def state(self) -> np.ndarray:
        return np.array([*self.tcp(), self.data.qpos[self._finger_qadr].sum()], dtype=np.float32)

    def tcp(self) -> np.ndarray:
        return self.data.site_xpos[self._tcp_site].copy()

    def render(self, camera: str = "front") -> np.ndarray:
        """(S, S, 3) uint8, S = suite image_size; no shadows, reflections, skybox or multisampling."""
        if self._renderer is None:
            try:
                self._renderer = mujoco.Renderer(self.model, self.spec.image_size, self.spec.image_size)
            except Exception as e:  # no GL: say what to set
                raise SimulatorError(f"cannot render offscreen ({e}); set MUJOCO_GL=egl or osmesa") from e
            for f in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX):
                self._renderer.scene.flags[f] = 0
        self._renderer.update_scene(self.data, camera)
        return self._renderer.render()

    def _pos(self, cube: str) -> np.ndarray:
        return self.data.xpos[self.model.geom_bodyid[self._cube_geom[cube]]].copy()

    def _pad(self, pad: str) -> np.ndarray:
        return self.model.geom_pos[self._pad_geom[pad], :2].copy()

    def _pad_dist(self, cube: str) -> float:
        return float(np.linalg.norm(self._pos(cube)[:2] - self._pad(self.target)))

    def _touching(self, cube: str) -> tuple[bool, bool]:
        """Whether the (left, right) finger touches `cube`."""
        g, (fl, fr) = self._cube_geom[cube], self._finger_geoms
        left = right = False
        for c in self.data.contact[: self.data.ncon]:
            pair = {c.geom1, c.geom2}
            if g in pair:
                left |= fl in pair
                right |= fr in pair
        return left, right

    def _grasped(self, cube: str) -> bool:
        return all(self._touching(cube))

    def _reached(self, cube: str) -> bool:
        tcp, p = self.tcp(), self._pos(cube)
        return bool(np.linalg.norm(tcp[:2] - p[:2]) < (0.06 if self.kind == "push" else 0.02) and tcp[2] < p[2] + 0.02)

    def _update_stage(self) -> None:
        s = self._stage
        if self.kind == "push":
            if s < 0.25 and self._reached(self.obj):
                s = 0.25
            moved = 1.0 - self._pad_dist(self.obj) / max(self._start_dist, 1e-6)
            if s >= 0.25:
                s = max(s, 0.75 if moved >= 0.5 else 0.5 if moved >= 0.25 else s)
        else:
            if s < 0.25 and self._reached(self.obj):
                s = 0.25
            if s >= 0.25 and self._grasped(self.obj):
                s = max(s, 0.5)
                if self._pos(self.obj)[2] > HALF + 0.03:
                    s = 0.75
        self._stage = s

    # ------------------------------------------------------------------ scripted expert

    def expert_action(self) -> np.ndarray:
        """A waypoint state machine on privileged state; Gaussian noise (`expert_noise`) on xyz."""
        tcp = self.tcp()
        goal, grip = (self._push_waypoint if self.kind == "push" else self._pick_waypoint)(tcp)
        a = np.empty(4)
        a[:3] = np.clip((goal - tcp) / self.max_step, -1.0, 1.0)
        if self.expert_noise > 0:
            a[:3] = np.clip(a[:3] + self._expert_rng.normal(0.0, self.expert_noise, 3), -1.0, 1.0)
        a[3] = grip
        return a.astype(np.float32)

    def _goto(self, phase: str) -> None:
        self._phase, self._count = phase, 0

    def _pick_waypoint(self, tcp):
        obj = self._pos(self.obj)
        near = lambda g, tol: np.linalg.norm(g - tcp[: len(g)]) < tol  # noqa: E731
        carrying = self._phase in ("lift", "carry", "lower")
        if carrying and np.linalg.norm(obj - tcp) > 0.04:  # dropped it: start over
            self._goto("approach")
        if self.kind == "stack":
            b = self._pos(self.target)
            place_xy, place_z = b[:2], b[2] + 2 * HALF + 0.004
        else:
            place_xy, place_z = self._pad(self.target), HALF + 0.004
        offset = tcp[:2] - obj[:2]  # carry the object, not the TCP, to the target
        self._count += 1
        ph = self._phase
        if ph == "approach":
            g = np.array([obj[0], obj[1], max(obj[2] + 0.06, 0.08)])
            if tcp[2] < 0.06 and not near(g[:2], 0.015):
                return np.array([tcp[0], tcp[1], 0.08]), -1.0  # up first: never sweep through cubes
            if near(g[:2], 0.008) and abs(g[2] - tcp[2]) < 0.03:
                self._goto("descend")
            return g, -1.0
        if ph == "descend":
            g = np.array([obj[0], obj[1], obj[2] - 0.004])
            if near(g, 0.006):
                self._goto("grasp")
            return g, -1.0
        if ph == "grasp":
            if self._count >= 3:
                self._goto("lift")
            return tcp, 1.0
        if ph == "lift":
            g = np.array([tcp[0], tcp[1], place_z + 0.06])
            if tcp[2] > place_z + 0.04:
                self._goto("carry")
            return g, 1.0
        if ph == "carry":
            g = np.array([*(place_xy + offset), place_z + 0.06])
            if near(g[:2], 0.006):
                self._goto("lower")
            return g, 1.0
        if ph == "lower":
            g = np.array([*(place_xy + offset), place_z + (tcp[2] - obj[2])])
            if near(g, 0.006) or self._count > 12:
                self._goto("release")
            return g, 1.0
        if ph == "release":
            if self._count >= 3:
                self._goto("retreat")
            return tcp, -1.0
        return np.array([tcp[0], tcp[1], Z_MAX - 0.05]), -1.0  # retreat

    def _push_waypoint(self, tcp):
        """Push along one axis at a time (flat face on flat face is stable), the L-shaped route
        that keeps clear of the other cubes; re-approach from behind whenever contact is lost."""
        obj, pad = self._pos(self.obj), self._pad(self.target)
        err = pad - obj[:2]
        if np.all(np.abs(err) < 0.012) or self._phase == "retreat":
            self._goto("retreat")
            return np.array([tcp[0], tcp[1], 0.12]), 1.0
        if self._axes is None:
            self._axes = self._push_order(obj[:2], pad)
        self._count += 1
        first, second = self._axes
        axis = first if abs(err[first]) > (0.025 if self._axis == second else 0.012) else second
        self._axis = axis
        other, sgn = 1 - axis, np.sign(err[axis]) or 1.0
        behind = obj[:2].copy()
        behind[axis] -= sgn * (0.055 if axis == 0 else 0.06)
        ph = self._phase
        if ph == "push":
            gap = (obj[axis] - tcp[axis]) * sgn
            if abs(tcp[other] - obj[other]) > 0.015 or not 0.03 < gap < 0.08 or axis != self._push_axis:
                self._goto("approach")
                ph = "approach"
        if ph == "approach":
            if tcp[2] < 0.06 and np.linalg.norm(behind - tcp[:2]) > 0.015:
                return np.array([tcp[0], tcp[1], 0.08]), 1.0  # up first: never sweep through cubes
            g = np.array([*behind, 0.08])
            if np.linalg.norm(g[:2] - tcp[:2]) < 0.008:
                self._goto("descend")
            return g, 1.0
        if ph == "descend":
            g = np.array([*behind, 0.02])
            if self._count > 8 and tcp[2] > 0.04:  # landed on another cube: take the other route
                self._axes = self._axes[::-1]
                self._goto("approach")
            elif np.linalg.norm(g - tcp) < 0.006 or (self._count > 4 and np.linalg.norm(g - tcp) < 0.012):
                self._goto("push")
                self._push_axis = axis
            return g, 1.0
        g = tcp.copy()  # push: along the axis, keeping the pusher centred on the cube
        g[axis] += sgn * min(0.6 * self.max_step, abs(err[axis]))
        g[other] = obj[other]
        g[2] = 0.02
        return g, 1.0

    def _push_order(self, start, pad):
        """Axis order (x then y, or y then x) whose L-route and pushing spots (behind the cube at
        the start and at the corner) stay furthest from the other cubes."""
        others = [self._pos(c)[:2] for c in CUBES if c != self.obj]
        best, order = -1.0, (0, 1)
        for axes in ((0, 1), (1, 0)):
            corner = start.copy()
            corner[axes[0]] = pad[axes[0]]
            pts = [start + t * (corner - start) for t in np.linspace(0, 1, 8)]
            pts += [corner + t * (pad - corner) for t in np.linspace(0, 1, 8)]
            spots = []
            for a, at, to in ((axes[0], start, corner), (axes[1], corner, pad)):
                spot = at.copy()
                spot[a] -= np.sign(to[a] - at[a]) * 0.06
                spots.append(spot)
            clearance = min(min(np.linalg.norm(p - o) for p in pts for o in others),
                            min(np.linalg.norm(p - o) for p in spots for o in others) - 0.01)
            if clearance > best:
                best, order = clearance, axes
        return order


# --------------------------------------------------------------------------- the stored inits

def _suite_task_names() -> list[str]:
    from harness.config import Registry
    return [t.name for t in Registry().suite("tabletop").tasks]


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m harness.suites.tabletop", description="check or rewrite tabletop_inits.json")
    p.add_argument("--write", action="store_true", help="regenerate the stored eval init states")
    args = p.parse_args(argv)
    fresh = generate_inits(_suite_task_names())
    if args.write:
        INITS.write_text(json.dumps(fresh, indent=1) + "\n")
        print(f"wrote {INITS}")
        return 0
    ok = INITS.is_file() and json.loads(INITS.read_text()) == fresh
    print(f"{INITS.name}: {'matches the generator' if ok else 'DIFFERS from the generator (run with --write)'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
