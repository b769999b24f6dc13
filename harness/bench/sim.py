"""`wam-bench bench sim`: simulator throughput, physics alone and at the policy's frame cadence.

Three modes run side by side, interleaved in short blocks so a noisy shared machine slows them
alike: no rendering (`sim_steps_per_s`), one frame every `frame_stride` control steps, the
cadence the policy consumes frames at (`sim_steps_per_s_policy_cadence`), and a frame every step
(what a recorder such as `demos` pays). The scripted expert drives the gripper, so contacts and
grasps are part of the cost; its own time is not counted, nor are resets.
"""
from __future__ import annotations

import time

import numpy as np

from harness.config import Registry
from harness.errors import UserError

BLOCK = 20  # control steps per mode before switching to the next mode


def measure(args) -> dict:
    from harness.suites.base import make_env

    spec = Registry(getattr(args, "include_path", None) or []).suite(getattr(args, "suite", None) or "tabletop")
    if spec.adapter == "libero":  # robosuite: compare with its own render-every-step default
        from harness.suites.libero import sim_speed
        figs = sim_speed(spec, steps=40 if args.quick else 80, rounds=1 if args.quick else 3,
                         cadence=int(getattr(args, "frame_stride", None) or 4))
        return {"figures": figs, "rows": [{"mode": k, "steps_per_s": v} for k, v in figs.items()]}
    stride = int(getattr(args, "frame_stride", None) or 4)
    if stride < 1:
        raise UserError(f"frame_stride must be at least 1, got {stride}")
    # seconds of timed stepping, all modes together (quick: ~12 s wall with the expert's time)
    budget = getattr(args, "budget_s", None) or (8.0 if args.quick else 60.0)
    modes = {"physics only": 0, f"frame every {stride} steps": stride, "frame every step": 1}
    envs = {m: make_env(spec, 0) for m in modes}
    timed = {m: 0.0 for m in modes}
    steps = {m: 0 for m in modes}
    frames = {m: 0 for m in modes}
    episodes = {m: 0 for m in modes}
    ep_steps = {m: 0 for m in modes}
    try:
        for m, env in envs.items():
            env.reset(None, 0)
            env.observe(render=modes[m] > 0)  # warm-up: renderer creation is not throughput
        while sum(timed.values()) < budget:
            for m, env in envs.items():
                every = modes[m]
                for _ in range(BLOCK):
                    if ep_steps[m] >= spec.max_steps or env.success():
                        episodes[m] += 1
                        env.reset(None, episodes[m])
                        ep_steps[m] = 0
                    action = _action(env)
                    t0 = time.perf_counter()
                    render = every > 0 and steps[m] % every == 0
                    env.observe(render=render)
                    env.step(action)
                    timed[m] += time.perf_counter() - t0
                    steps[m] += 1
                    frames[m] += render
                    ep_steps[m] += 1
    finally:
        for env in envs.values():
            env.close()

    rate = {m: steps[m] / timed[m] for m in modes}
    rows = [{"suite": spec.name, "mode": m, "steps": steps[m], "frames": frames[m], "episodes": episodes[m],
             "seconds": timed[m], "steps_per_s": rate[m], "ms_per_step": 1000 * timed[m] / steps[m]}
            for m in modes]
    names = list(modes)
    phys, cadence, every = (timed[n] / steps[n] for n in names)
    frame_ms = 1000 * (every - phys)  # the extra cost of one rendered frame
    figures = {"sim_steps_per_s": rate[names[0]], "sim_steps_per_s_policy_cadence": rate[names[1]],
               "sim_steps_per_s_render_every_step": rate[names[2]], "render_ms_per_frame": frame_ms,
               "frame_stride": stride}
    notes = [f"{spec.name}: {spec.image_size}x{spec.image_size} {'+'.join(spec.cameras)} camera(s), "
             f"control at {spec.control_hz:g} Hz; the expert drives, its time is excluded"]
    return {"figures": figures, "rows": rows, "notes": notes}


def _action(env) -> np.ndarray:
    try:
        return env.expert_action()
    except NotImplementedError:  # a suite without an expert: hold still
        return np.zeros(env.spec.action_dim, dtype=np.float32)
