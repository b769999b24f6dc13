"""Scripted pick-and-place expert for LIBERO (libero_object, libero_spatial) from privileged poses.

It reads the goal predicate (`on`/`in` OBJECT TARGET) from the task's BDDL, finds the object's and
target's world bounding boxes from their collision geometry, and drives the OSC_POSE controller
through approach → descend → grasp → lift → carry → lower → release → retreat, with the
gripper held at its start orientation. Bowls are grasped by the rim. A grasp that does not lift
the object is retried from the approach.
"""
from __future__ import annotations

import numpy as np

HAND_HALF = (0.105, 0.035)  # Panda hand footprint (m): half-length along the finger axis, half-width
MAX_SPAN = 0.072         # widest object span the open fingers (0.08 m) take
CARRY_CLEARANCE = 0.08   # object bottom above the target's top while carrying (m)
GAIN = 12.0              # position error (m) -> OSC input (1 = 5 cm)
ROT_GAIN = 1.5
KI = 0.5                 # integral gain (per step): removes the OSC's steady-state error under load
I_MAX = 0.4


def _subtree_geoms(m, root: int) -> np.ndarray:
    bodies = {root}
    for b in range(root + 1, m.nbody):
        if m.body_parentid[b] in bodies:
            bodies.add(b)
    return np.array([g for g in range(m.ngeom) if m.geom_bodyid[g] in bodies
                     and (m.geom_contype[g] or m.geom_conaffinity[g])], dtype=int)


_SIGNS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)


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


class PickPlaceExpert:
    """Stateful expert for one episode of a LiberoEnv; `act()` returns the next 7-d action."""

    def __init__(self, env):
        self.env = env
        inner = env.inner
        pick = [p for p in env.goal if p[0].lower() in ("on", "in") and len(p) == 3]
        if not pick:
            raise NotImplementedError(f"no scripted expert for goal {env.goal} (only on/in pick-and-place)")
        _, self.obj, self.target = pick[0]
        self.m, self.d = inner.sim.model._model, inner.sim.data._data
        self.robot = inner.robots[0]
        self.obj_geoms = _subtree_geoms(self.m, inner.obj_body_id[self.obj])
        self.target_is_site = self.target in inner.object_sites_dict
        if self.target_is_site:
            parent = inner.object_sites_dict[self.target].parent_name if hasattr(inner.object_sites_dict[self.target], "parent_name") else None
            parent = parent or self.target.split("_contain_region")[0].split("_region")[0]
            self.target_geoms = _subtree_geoms(self.m, inner.obj_body_id[parent]) if parent in inner.obj_body_id else None
        else:
            self.target_geoms = _subtree_geoms(self.m, inner.obj_body_id[self.target])
        self.r_start = self._eef_rot().copy()
        self.base = self.d.xpos[self.m.body("robot0_base").id].copy()
        self.r_goal = self.r_start
        robot = {b for b in range(self.m.nbody) if self.m.body(b).name.startswith(("robot0_", "gripper0_", "mount0_"))}
        mine = set(self.obj_geoms.tolist())
        self.others = np.array([g for g in range(self.m.ngeom) if (self.m.geom_contype[g] or self.m.geom_conaffinity[g])
                                and g not in mine and self.m.geom_bodyid[g] not in robot and self.m.geom_bodyid[g] != 0], int)
        self.phase, self.t, self.tries, self.ierr = "approach", 0, 0, np.zeros(3)
        self.bowl = "bowl" in self.obj
        self.yaw, self.side = 0.0, 1.0

    # ------------------------------------------------------------------ state
    def _eef(self) -> np.ndarray:
        return self.d.site_xpos[self.robot.eef_site_id].copy()

    def _eef_rot(self) -> np.ndarray:
        return self.d.site_xmat[self.robot.eef_site_id].reshape(3, 3)

    def _obj_box(self):
        return _aabb(self.m, self.d, self.obj_geoms)

    def _target_xy_top(self) -> tuple[np.ndarray, float]:
        inner = self.env.inner
        if self.target_is_site:
            xy = inner.sim.data.get_site_xpos(self.target)[:2].copy()
        else:
            xy = self.d.xpos[inner.obj_body_id[self.target]][:2].copy()
        top = _aabb(self.m, self.d, self.target_geoms)[1][2] if self.target_geoms is not None and len(self.target_geoms) else 0.9
        return xy, top

    def _axis(self, yaw: float) -> np.ndarray:
        """Finger closing direction (world xy) after turning the hand by `yaw` about z."""
        x = self.r_start[:2, 0] / np.linalg.norm(self.r_start[:2, 0])
        c, s = np.cos(yaw), np.sin(yaw)
        return np.array([c * x[0] - s * x[1], s * x[0] + c * x[1]])

    def _footprint(self, geoms) -> np.ndarray:
        """World xy corners of each geom's box (an object's horizontal footprint)."""
        pts = []
        for g in geoms:
            local = self.m.geom_aabb[g, :3] + _SIGNS * self.m.geom_aabb[g, 3:]
            pts.append((self.d.geom_xpos[g] + local @ self.d.geom_xmat[g].reshape(3, 3).T)[:, :2])
        return np.concatenate(pts)

    def _obstacle_points(self, z_lo: float, z_hi: float) -> np.ndarray:
        """xy of points sampled (2 cm apart) in every other collision geom's box, within [z_lo, z_hi]."""
        out = []
        for g in self.others:
            c, h = self.m.geom_aabb[g, :3], self.m.geom_aabb[g, 3:]
            n = np.clip(np.ceil(2 * h / 0.02).astype(int) + 1, 2, 20)
            grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, k) for k in n], indexing="ij"), -1).reshape(-1, 3)
            pts = self.d.geom_xpos[g] + (c + grid * h) @ self.d.geom_xmat[g].reshape(3, 3).T
            pts = pts[(pts[:, 2] > z_lo) & (pts[:, 2] < z_hi)]
            if len(pts):
                out.append(pts[:, :2])
        return np.concatenate(out) if out else np.zeros((0, 2))

    def _plan_grasp(self) -> None:
        """Pick the hand yaw (and bowl rim side) whose open fingers fit the object and whose hand
        footprint keeps furthest from taller neighbours; prefer small turns."""
        lo, hi = self._obj_box()
        c = (lo[:2] + hi[:2]) / 2
        pts = self._footprint(self.obj_geoms)
        grasp_z = hi[2] - 0.02
        obstacles = self._obstacle_points(grasp_z - 0.03, grasp_z + 0.35)  # fingertips reach ~3 cm below
        best = None
        for deg in range(-90, 91, 15):
            u = self._axis(np.radians(deg))
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
                if len(obstacles):
                    d = obstacles - g
                    clear = min(clear, np.maximum(np.abs(d @ u) - HAND_HALF[0], np.abs(d @ v) - HAND_HALF[1]).min())
                reach = np.linalg.norm(g - self.base[:2])  # the arm is weak near its reach limit
                score = min(clear, 0.03) - 0.01 * abs(deg) / 90 - 0.5 * max(0.0, reach - 0.7)
                if best is None or score > best[0]:
                    best = (score, np.radians(deg), side)
        if best is not None:
            _, self.yaw, self.side = best
        c_, s_ = np.cos(self.yaw), np.sin(self.yaw)
        self.r_goal = np.array([[c_, -s_, 0], [s_, c_, 0], [0, 0, 1]]) @ self.r_start

    def _grasp_point(self) -> np.ndarray:
        lo, hi = self._obj_box()
        c = (lo + hi) / 2
        if self.bowl:  # straddle the rim wall on the chosen side, along the closing direction
            u = self._axis(self.yaw)
            pts = self._footprint(self.obj_geoms)
            r = ((pts - c[:2]) @ u).max() - 0.015
            return np.r_[c[:2] - self.side * r * u, hi[2] - 0.02]
        return np.array([c[0], c[1], hi[2] - min(0.035, 0.5 * (hi[2] - lo[2]))])

    # ------------------------------------------------------------------ control
    def _move(self, goal: np.ndarray, grip: float, tol: float = 0.01) -> tuple[np.ndarray, bool]:
        err = goal - self._eef()
        near = np.abs(err) < 0.03  # anti-windup: integrate only close to the goal
        self.ierr = np.clip(self.ierr + near * KI * err * GAIN / 10, -I_MAX, I_MAX)
        a = np.zeros(7)
        a[:3] = np.clip(err * GAIN + self.ierr, -1, 1)
        a[3:6] = np.clip(_rot_error(self._eef_rot(), self.r_goal) * ROT_GAIN, -1, 1)
        a[6] = grip
        return a, bool(np.linalg.norm(err) < tol)

    def _go(self, phase: str):
        self.phase, self.t, self.ierr = phase, 0, np.zeros(3)

    def act(self) -> np.ndarray:
        self.t += 1
        eef = self._eef()
        if self.phase == "approach":
            if self.t == 1:
                self._plan_grasp()
            self.grasp = self._grasp_point()
            a, done = self._move(self.grasp + [0, 0, 0.10], -1, 0.015)
            if done or self.t > 120:
                self._go("descend")
            return a
        if self.phase == "descend":
            self.grasp = self._grasp_point()
            a, done = self._move(self.grasp, -1, 0.006)
            if done or self.t > 60:
                self._go("grasp")
            return a
        if self.phase == "grasp":
            a, _ = self._move(self.grasp, 1)
            if self.t >= 12:
                self.lift_from = self._obj_box()[0][2]
                self._go("lift")
            return a
        txy, ttop = self._target_xy_top()
        lo, hi = self._obj_box()
        carry_bottom = max(ttop, self.lift_from) + CARRY_CLEARANCE
        if self.phase == "lift":
            a, _ = self._move(np.r_[eef[:2], eef[2] + carry_bottom - lo[2]], 1)
            if lo[2] > carry_bottom - 0.02:
                self._go("carry")
            elif self.t > 40:
                self._retry()
            return a
        ocxy = (lo[:2] + hi[:2]) / 2
        if self.phase == "carry":
            goal = np.r_[eef[:2] + txy - ocxy, eef[2] + carry_bottom - lo[2]]
            a, _ = self._move(goal, 1)
            if np.linalg.norm(txy - ocxy) < 0.01 or self.t > 150:
                self._go("lower")
            if lo[2] < self.lift_from + 0.01 and self.t > 5:  # dropped it
                self._retry()
            return a
        if self.phase == "lower":
            release_bottom = ttop + (0.01 if not self.target_is_site else 0.0)
            if self.target_is_site:  # into a container: just below its rim
                release_bottom = ttop - 0.03
            goal = np.r_[eef[:2] + txy - ocxy, eef[2] + release_bottom - lo[2]]
            a, done = self._move(goal, 1, 0.01)
            if done or self.t > 80:
                self._go("release")
            return a
        if self.phase == "release":
            a, _ = self._move(eef, -1)
            a[:3] = 0
            if self.t >= 10:
                self.retreat = eef + [0, 0, 0.12]
                self._go("retreat")
            return a
        a, _ = self._move(self.retreat, -1)  # retreat, then hold
        return a

    def _retry(self):
        self.tries += 1
        self._go("approach")
