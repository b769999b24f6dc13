"""Scripted LIBERO expert from privileged state: a task's goal predicates run as skills, in order.

`TaskExpert` reads the goal from the task's BDDL and turns each predicate into a skill: `on`/`in`
OBJECT TARGET into a pick-and-place, and `turnon` STOVE into a grip-and-twist of the knob. Skills run one after another (turn-ons first),
each until its predicate holds and the hand is clear; a skill whose predicate already holds is
skipped.
A pick-and-place finds the object's and the target's world bounding boxes from their collision
geometry and drives the OSC_POSE controller through approach → descend → grasp → lift → carry →
lower → release → retreat, the gripper pointing down and turned about the vertical to fit the
object between its fingers (bowls, mugs and plates by the rim); a grasp that does not lift the
object, or a place that does not satisfy the predicate, is retried. libero_goal's "push the plate
to the front of the stove" is done by lifting the plate by its rim and setting it there (the goal
is the plate's place; a push from behind it ran into the bowl and the cream cheese).

What it cannot do (`unsupported()` names the reason; `wam-bench demos` stops with it, or leaves the
task out with --skip-unsupported):
- open or close drawers and doors: a hand pointing down cannot pinch a drawer handle under the
  next drawer's, so libero_goal 0 and 3 (and libero_10 3, whose drawer must be closed) are out;
- put things into the microwave (libero_10 9): the hand would have to reach in sideways;
- `KNOWN_FAILURES`: goals the skills cover but that failed when tried (libero_10 1 and 8).
Done: libero_object and libero_spatial (all), libero_goal 1, 2, 4-9, libero_10 0, 2, 4, 5, 6, 7.
"""
from __future__ import annotations

import numpy as np

HAND_HALF = (0.105, 0.035)  # Panda hand footprint (m): half-length along the finger axis, half-width
MAX_SPAN = 0.072         # widest object span the open fingers (0.08 m) take
CARRY_CLEARANCE = 0.08   # object bottom above the tallest thing on the way while carrying (m)
GAIN = 12.0              # position error (m) -> OSC input (1 = 5 cm)
ROT_GAIN = 1.5
KI = 0.5                 # integral gain (per step): removes the OSC's steady-state error under load
I_MAX = 0.4
MAX_TRIES = 3            # re-grasps / re-places per pick-and-place

_SIGNS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)


def _subtree_geoms(m, root: int) -> np.ndarray:
    bodies = {root}
    for b in range(root + 1, m.nbody):
        if m.body_parentid[b] in bodies:
            bodies.add(b)
    return np.array([g for g in range(m.ngeom) if m.geom_bodyid[g] in bodies
                     and (m.geom_contype[g] or m.geom_conaffinity[g])], dtype=int)


def _aabb(m, d, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World axis-aligned box (lo, hi) of the given geoms."""
    pts = []
    for g in geoms:
        c, h = m.geom_aabb[g, :3], m.geom_aabb[g, 3:]
        local = c + _SIGNS * h
        pts.append(d.geom_xpos[g] + local @ d.geom_xmat[g].reshape(3, 3).T)
    pts = np.concatenate(pts)
    return pts.min(0), pts.max(0)


def _rot_error(r_now: np.ndarray, r_goal: np.ndarray) -> np.ndarray:
    """Axis-angle (world frame) rotating r_now to r_goal."""
    r = r_goal @ r_now.T
    angle = np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2 * np.sin(angle))
    return axis * angle


def _yaw(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


class _Arm:
    """The robot's hand from privileged state, and a position/orientation servo for OSC_POSE."""

    def __init__(self, env):
        inner = env.inner
        self.env, self.inner = env, inner
        self.m, self.d = inner.sim.model._model, inner.sim.data._data
        self.robot = inner.robots[0]
        self.r_start = self.rot().copy()
        self.base = self.d.xpos[self.m.body("robot0_base").id].copy()
        self.ierr = np.zeros(3)
        self.robot_bodies = {b for b in range(self.m.nbody)
                             if self.m.body(b).name.startswith(("robot0_", "gripper0_", "mount0_"))}

    def eef(self) -> np.ndarray:
        return self.d.site_xpos[self.robot.eef_site_id].copy()

    def rot(self) -> np.ndarray:
        return self.d.site_xmat[self.robot.eef_site_id].reshape(3, 3)

    def reset_integral(self) -> None:
        self.ierr = np.zeros(3)

    def move(self, goal: np.ndarray, grip: float, r_goal: np.ndarray, tol: float = 0.01) -> tuple[np.ndarray, bool]:
        err = goal - self.eef()
        near = np.abs(err) < 0.03  # anti-windup: integrate only close to the goal
        self.ierr = np.clip(self.ierr + near * KI * err * GAIN / 10, -I_MAX, I_MAX)
        a = np.zeros(7)
        a[:3] = np.clip(err * GAIN + self.ierr, -1, 1)
        a[3:6] = np.clip(_rot_error(self.rot(), r_goal) * ROT_GAIN, -1, 1)
        a[6] = grip
        return a, bool(np.linalg.norm(err) < tol)

    def yaw_to(self, v: np.ndarray) -> float:
        """The hand turn (within ±90°: the fingers are symmetric) that sets the closing axis along v."""
        a0 = self.axis(0.0)
        yaw = np.arctan2(a0[0] * v[1] - a0[1] * v[0], a0 @ v)
        return (yaw + np.pi / 2) % np.pi - np.pi / 2

    def axis(self, yaw: float) -> np.ndarray:
        """Finger closing direction (world xy) after turning the hand by `yaw` about z."""
        x = self.r_start[:2, 0] / np.linalg.norm(self.r_start[:2, 0])
        return _yaw(yaw)[:2, :2] @ x

    def geoms_of(self, name: str) -> np.ndarray:
        return _subtree_geoms(self.m, self.inner.obj_body_id[name])

    def others(self, mine: set) -> np.ndarray:
        """Collision geoms of everything but the robot, the world body and `mine`."""
        m = self.m
        return np.array([g for g in range(m.ngeom) if (m.geom_contype[g] or m.geom_conaffinity[g]) and g not in mine
                         and m.geom_bodyid[g] not in self.robot_bodies and m.geom_bodyid[g] != 0], int)

    def footprint(self, geoms) -> np.ndarray:
        """World xy corners of each geom's box (an object's horizontal footprint)."""
        pts = []
        for g in geoms:
            local = self.m.geom_aabb[g, :3] + _SIGNS * self.m.geom_aabb[g, 3:]
            pts.append((self.d.geom_xpos[g] + local @ self.d.geom_xmat[g].reshape(3, 3).T)[:, :2])
        return np.concatenate(pts)

    def points(self, geoms, z_lo: float, z_hi: float) -> np.ndarray:
        """xyz of points sampled (2 cm apart) in the given geoms' boxes, within [z_lo, z_hi]."""
        out = []
        for g in geoms:
            c, h = self.m.geom_aabb[g, :3], self.m.geom_aabb[g, 3:]
            n = np.clip(np.ceil(2 * h / 0.02).astype(int) + 1, 2, 20)
            grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, k) for k in n], indexing="ij"), -1).reshape(-1, 3)
            pts = self.d.geom_xpos[g] + (c + grid * h) @ self.d.geom_xmat[g].reshape(3, 3).T
            pts = pts[(pts[:, 2] > z_lo) & (pts[:, 2] < z_hi)]
            if len(pts):
                out.append(pts)
        return np.concatenate(out) if out else np.zeros((0, 3))


class _Skill:
    """One goal predicate's behaviour; `done()` once the predicate holds and the hand is clear."""

    def __init__(self, env, arm: _Arm, predicate: list):
        self.env, self.arm, self.predicate = env, arm, predicate
        self.phase, self.t = "start", 0

    def holds(self) -> bool:
        return bool(self.env.inner._eval_predicate(self.predicate))

    def go(self, phase: str) -> None:
        self.phase, self.t = phase, 0
        self.arm.reset_integral()

    def done(self) -> bool:
        return self.phase == "done"

    def act(self) -> np.ndarray:
        raise NotImplementedError


class PickPlace(_Skill):
    """`on`/`in` OBJECT TARGET: grasp OBJECT from above and put it on / in TARGET (an object or a region)."""

    def __init__(self, env, arm: _Arm, predicate: list):
        super().__init__(env, arm, predicate)
        _, self.obj, self.target = predicate
        inner, m = env.inner, arm.m
        self.contain = predicate[0].lower() == "in"
        self.obj_geoms = arm.geoms_of(self.obj)
        self.target_is_site = self.target in inner.object_sites_dict
        if self.target_is_site:
            body = int(m.site_bodyid[m.site(self.target).id])
            self.target_geoms = _subtree_geoms(m, body) if body else np.zeros(0, int)
        else:
            self.target_geoms = arm.geoms_of(self.target)
        self.bowl = any(k in self.obj for k in ("bowl", "mug", "plate"))  # taken by the rim
        self.yaw, self.side, self.tries, self.r_goal = 0.0, 1.0, 0, arm.r_start

    # ------------------------------------------------------------------ geometry
    def _obj_box(self):
        return _aabb(self.arm.m, self.arm.d, self.obj_geoms)

    def _obj_xy(self) -> np.ndarray:
        """Where the predicates look: the object's body position."""
        return self.arm.d.xpos[self.env.inner.obj_body_id[self.obj]][:2].copy()

    def _target(self) -> tuple[np.ndarray, float]:
        """Target xy and the height its surface (or a container's rim) is at."""
        inner, d = self.env.inner, self.arm.d
        if self.target_is_site:
            pos = inner.sim.data.get_site_xpos(self.target).copy()
            if not len(self.target_geoms):
                return pos[:2], pos[2]
            lo, hi = _aabb(self.arm.m, d, self.target_geoms)
            # a region on a fixture's surface (stove, cabinet top, table) vs. inside a container
            top = hi[2] if self.contain or pos[2] > hi[2] - 0.02 or pos[2] < lo[2] + 0.02 else pos[2]
            return pos[:2], top
        xy = d.xpos[inner.obj_body_id[self.target]][:2].copy()
        return xy, _aabb(self.arm.m, d, self.target_geoms)[1][2]

    def _plan_grasp(self) -> None:
        """Pick the hand yaw (and bowl rim side) whose open fingers fit the object and whose hand
        footprint keeps furthest from taller neighbours; prefer small turns."""
        arm = self.arm
        lo, hi = self._obj_box()
        c = (lo[:2] + hi[:2]) / 2
        pts = arm.footprint(self.obj_geoms)
        grasp_z = hi[2] - 0.02
        others = arm.others(set(self.obj_geoms.tolist()) | set(self.target_geoms.tolist()))
        obstacles = arm.points(others, grasp_z - 0.03, grasp_z + 0.35)[:, :2]
        txy, ttop = self._target()
        place = txy - self._obj_xy() + c  # where the object's box centre goes
        place_z = ttop + (grasp_z - lo[2])  # the fingertips' height when it is let go
        place_obstacles = arm.points(others, place_z - 0.03, place_z + 0.35)[:, :2]
        best = None
        for deg in range(-90, 91, 15):
            u = arm.axis(np.radians(deg))
            v = np.array([-u[1], u[0]])
            for side in ((1.0, -1.0) if self.bowl else (1.0,)):
                if self.bowl:
                    r = ((pts - c) @ u).max() - 0.015
                    g = c - side * r * u
                else:
                    span = (pts @ u).max() - (pts @ u).min()
                    if span > MAX_SPAN:
                        continue
                    g = c
                clear = 0.05
                for obs, at in ((obstacles, g), (place_obstacles, place + g - c)):  # at the grasp and at the place
                    if len(obs):
                        dd = obs - at
                        clear = min(clear, np.maximum(np.abs(dd @ u) - HAND_HALF[0], np.abs(dd @ v) - HAND_HALF[1]).min())
                # the arm is weak near its reach limit: where it grasps and where it will let go
                reach = max(np.linalg.norm(g - arm.base[:2]), np.linalg.norm(place + g - c - arm.base[:2]))
                score = min(clear, 0.03) - 0.01 * abs(deg) / 90 - 0.5 * max(0.0, reach - 0.7)
                if best is None or score > best[0]:
                    best = (score, np.radians(deg), side)
        if best is not None:
            _, self.yaw, self.side = best
        self.r_goal = _yaw(self.yaw) @ arm.r_start

    def _grasp_point(self) -> np.ndarray:
        lo, hi = self._obj_box()
        c = (lo + hi) / 2
        if self.bowl:  # straddle the rim wall on the chosen side, along the closing direction
            u = self.arm.axis(self.yaw)
            pts = self.arm.footprint(self.obj_geoms)
            r = ((pts - c[:2]) @ u).max() - 0.015
            return np.r_[c[:2] - self.side * r * u, max(hi[2] - 0.02, lo[2] + 0.006)]  # a plate's rim is low
        return np.array([c[0], c[1], hi[2] - min(0.035, 0.5 * (hi[2] - lo[2]))])

    def _carry_height(self, txy: np.ndarray, ttop: float) -> float:
        """Object bottom height for the carry: above the target and whatever stands between."""
        arm = self.arm
        start = self._obj_xy()
        mine = set(self.obj_geoms.tolist())
        pts = arm.points(arm.others(mine), 0.0, 2.0)
        top = max(ttop, self.lift_from)
        if len(pts):
            seg = txy - start
            s = np.clip(((pts[:, :2] - start) @ seg) / max(seg @ seg, 1e-9), 0, 1)
            near = np.linalg.norm(pts[:, :2] - (start + s[:, None] * seg), axis=1) < 0.08
            if near.any():
                top = max(top, float(pts[near, 2].max()))
        return min(top + CARRY_CLEARANCE, 1.45 - (self._obj_box()[1][2] - self._obj_box()[0][2]))

    # ------------------------------------------------------------------ control
    def act(self) -> np.ndarray:
        arm = self.arm
        self.t += 1
        eef = arm.eef()
        if self.phase == "start":
            self._plan_grasp()
            self.go("approach")
        if self.phase == "approach":
            self.grasp = self._grasp_point()
            a, ok = arm.move(self.grasp + [0, 0, 0.10], -1, self.r_goal, 0.015)
            if ok or self.t > 120:
                self.go("descend")
            return a
        if self.phase == "descend":
            self.grasp = self._grasp_point()
            a, ok = arm.move(self.grasp, -1, self.r_goal, 0.006)
            if ok or self.t > 60:
                self.go("grasp")
            return a
        if self.phase == "grasp":
            a, _ = arm.move(self.grasp, 1, self.r_goal)
            if self.t >= 12:
                self.lift_from = self._obj_box()[0][2]
                txy, ttop = self._target()
                self.carry_bottom = self._carry_height(txy, ttop)
                self.go("lift")
            return a
        txy, ttop = self._target()
        lo, hi = self._obj_box()
        oxy = self._obj_xy()
        if self.phase == "lift":
            a, _ = arm.move(np.r_[eef[:2], eef[2] + self.carry_bottom - lo[2]], 1, self.r_goal)
            if lo[2] > self.carry_bottom - 0.02:
                self.go("carry")
            elif self.t > 40:
                self._retry()
            return a
        if self.phase == "carry":
            a, _ = arm.move(np.r_[eef[:2] + txy - oxy, eef[2] + self.carry_bottom - lo[2]], 1, self.r_goal)
            if np.linalg.norm(txy - oxy) < 0.01 or self.t > 150:
                self.go("lower")
            if lo[2] < self.lift_from + 0.01 and self.t > 5:  # dropped it
                self._retry()
            return a
        if self.phase == "lower":
            release_bottom = ttop - 0.03 if self.contain else ttop + 0.01
            a, ok = arm.move(np.r_[eef[:2] + txy - oxy, eef[2] + release_bottom - lo[2]], 1, self.r_goal, 0.01)
            if ok or self.t > 80:
                self.go("release")
            return a
        if self.phase == "release":
            a, _ = arm.move(eef, -1, self.r_goal)
            a[:3] = 0
            if self.t >= 10:
                self.retreat = eef + [0, 0, 0.12]
                self.go("retreat")
            return a
        a, ok = arm.move(self.retreat, -1, self.r_goal, 0.02)
        if self.phase == "retreat" and (ok or self.t > 40):
            if self.holds():
                self.go("done")
            elif self.tries + 1 < MAX_TRIES:
                self._retry()
        return a

    def _retry(self) -> None:
        self.tries += 1
        self.go("start")


class TurnOn(_Skill):
    """`turnon` STOVE: grip the knob's fin from above, fingers across it, and twist the wrist until
    the knob's hinge passes the stove's turn-on angle."""

    TWIST = 1.0  # rad of wrist turn; the stove counts as on past 0.5 rad of knob

    def __init__(self, env, arm: _Arm, predicate: list):
        super().__init__(env, arm, predicate)
        inner, m = env.inner, arm.m
        joints = inner.get_object(predicate[1]).joints
        if len(joints) != 1:
            raise NotImplementedError(f"turnon {predicate[1]}: expected one knob joint, found {joints}")
        j = m.joint(joints[0]).id
        self.qadr, self.knob = m.jnt_qposadr[j], int(m.jnt_bodyid[j])
        self.sign = 1.0 if (arm.d.xmat[self.knob].reshape(3, 3) @ m.jnt_axis[j])[2] > 0 else -1.0
        self.geoms = _subtree_geoms(m, self.knob)

    def _plan(self) -> None:
        arm = self.arm
        lo, hi = _aabb(arm.m, arm.d, self.geoms)
        fin = arm.points(self.geoms, hi[2] - 0.02, hi[2] + 0.01)[:, :2]  # the raised fin's top
        self.center = arm.d.xpos[self.knob][:2].copy()
        dirs = np.linalg.eigh(np.cov((fin - fin.mean(0)).T))[1][:, -1]  # the fin's long direction
        self.r_grasp = _yaw(arm.yaw_to(np.array([-dirs[1], dirs[0]]))) @ arm.r_start
        self.grip_z = hi[2] - 0.012

    def act(self) -> np.ndarray:
        arm = self.arm
        self.t += 1
        if self.phase == "start":
            self._plan()
            self.go("approach")
        goal = np.r_[self.center, self.grip_z]
        if self.phase == "approach":
            a, ok = arm.move(goal + [0, 0, 0.08], -1, self.r_grasp, 0.01)
            if ok or self.t > 100:
                self.go("descend")
            return a
        if self.phase == "descend":
            a, ok = arm.move(goal, -1, self.r_grasp, 0.006)
            if ok or self.t > 50:
                self.go("grasp")
            return a
        if self.phase == "grasp":
            a, _ = arm.move(goal, 1, self.r_grasp)
            if self.t >= 10:
                self.go("twist")
            return a
        if self.phase == "twist":
            a, _ = arm.move(goal, 1, _yaw(self.sign * self.TWIST) @ self.r_grasp)
            if self.sign * arm.d.qpos[self.qadr] > 0.7 or self.t > 60:
                self.go("release")
            return a
        if self.phase == "release":
            a, _ = arm.move(arm.eef(), -1, arm.rot().copy())
            a[:3] = 0
            if self.t >= 8:
                self.go("retreat")
            return a
        a, ok = arm.move(goal + [0, 0, 0.12], -1, arm.r_start, 0.02)
        if self.phase == "retreat" and (ok or self.t > 40):
            self.go("done" if self.holds() else "start")
        return a


ORDER = {"turnon": 0, "on": 1, "in": 1}  # the stove before what goes on it


# Goals the skills cover on paper but fail in practice (one episode each from a fresh init, measured).
KNOWN_FAILURES = {
    frozenset({("in", "cream_cheese_1", "basket_1_contain_region"), ("in", "butter_1", "basket_1_contain_region")}):
        "the butter stands against the basket, and a hand from above does not get around it (0 of 1)",
    frozenset({("on", "moka_pot_1", "flat_stove_1_cook_region"), ("on", "moka_pot_2", "flat_stove_1_cook_region"),
               ("turnon", "flat_stove_1")}):
        "the moka pots side by side are not lifted by a grasp from above (0 of 1)",
}


def unsupported(goal: list) -> str | None:
    """Why the expert cannot do a task with this goal (BDDL goal predicates), or None."""
    for p in goal:
        kind = p[0].lower()
        if kind not in SKILLS:
            return f"goal predicate '{kind}' ({' '.join(p)}) has no skill (drawers and doors are not scripted)"
        if kind == "in" and "microwave" in p[2]:
            return "placing into the microwave needs a hand reaching in sideways; the expert's points down"
        if kind == "in" and "cabinet" in p[2]:
            return "placing into a drawer needs it opened first, and drawers are not scripted"
    return KNOWN_FAILURES.get(frozenset(tuple(x.lower() for x in p) for p in goal))


SKILLS = {"on": PickPlace, "in": PickPlace, "turnon": TurnOn}


class TaskExpert:
    """The goal's predicates as skills, run in order; `act()` returns the next 7-d action."""

    def __init__(self, env):
        why = unsupported(env.goal)
        if why is not None:
            raise NotImplementedError(f"no scripted expert for {env.spec.name} task '{env.task.name}': {why}")
        self.env, self.arm = env, _Arm(env)
        preds = sorted(env.goal, key=lambda p: ORDER[p[0].lower()])
        self.skills = [SKILLS[p[0].lower()](env, self.arm, p) for p in preds]
        self.k = 0

    def act(self) -> np.ndarray:
        while self.k < len(self.skills) - 1 and (self.skills[self.k].done() or
                                                 (self.skills[self.k].phase == "start" and self.skills[self.k].holds())):
            self.k += 1
            self.arm.reset_integral()
        return self.skills[self.k].act()
