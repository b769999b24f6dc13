"""`wam-bench bench demos`: what one scripted LIBERO demonstration costs, before and after the reworks.

Each mode runs in its own process (GL settings are per process), and the modes take turns episode
by episode, one at a time, so a shared machine slows them alike. An episode is what a `demos`
worker does (reset, the expert every step, every camera rendered every step at the stored size)
plus encoding its frames as the writer does, timed in core-seconds (the process's CPU time, GL
threads included; two workers on two cores are two of these at once):

- `before`: the protocol's reset (model rebuilt, a new GL context), both cameras at the suite's
  size every step: what `demos` did until the first rework;
- `<S>px`: the reused compiled sim (`reset(None, seed)`), cameras at S px every step, for each S
  in (256, 128, 64): what `demos --image-stride 1` does;
- `<S>px-stride<K>`: the same, cameras rendered every K-th step only (the rows between hold the
  last frame, encoded as the writer does): what `demos` does by default (K = 4), at 256 and 128 px.

Where the time goes is in the rows: render, physics and encoding per step, and the reset.
`--quick` is one episode of `before` and `256px-stride4`: a minute on a quiet machine, not the usual
under-a-minute (a LIBERO episode alone is ~25 core-seconds).

Figures: core-seconds per episode per mode, the speed-up over `before`, and the minutes a suite's
500 episodes take on 2 workers (core-seconds x 500 / expert success / 2 cores / 60).
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from harness.config import Registry
from harness.errors import UserError

SIZES = (256, 128, 64)
STRIDE = 4          # what `demos` renders a LIBERO episode at (LiberoEnv.DEMO_IMAGE_STRIDE)
STRIDE_SIZES = (256, 128)


def measure(args) -> dict:
    from harness.env import forwarded

    spec = Registry(getattr(args, "include_path", None) or []).suite(getattr(args, "suite", None) or "libero_object")
    if spec.adapter != "libero":
        raise UserError(f"bench demos measures the LIBERO demo path; suite '{spec.name}' is {spec.adapter} "
                        "(tabletop demos cost seconds: time `wam-bench demos` itself)")
    episodes = 1 if args.quick else 2
    modes = {"before": (spec.image_size, True, 1)}
    if not args.quick:
        modes.update({f"{s}px": (s, False, 1) for s in SIZES})
    modes.update({f"{s}px-stride{STRIDE}": (s, False, STRIDE) for s in (STRIDE_SIZES[:1] if args.quick else STRIDE_SIZES)})
    pools = {m: ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_init,
                                    initargs=(forwarded(), dataclasses.replace(spec, image_size=size)))
             for m, (size, _, _) in modes.items()}
    rows = []
    try:
        for k in range(episodes):
            for m, (size, rebuild, stride) in modes.items():
                row = pools[m].submit(_episode, k, rebuild, stride).result()
                rows.append({"mode": m, "size": size, "image_stride": stride, "episode": k, **row})
    finally:
        for pool in pools.values():
            pool.submit(_close).result()
            pool.shutdown()
    figures = {}
    for m in modes:
        rs = [r for r in rows if r["mode"] == m]
        core = float(np.mean([r["core_s"] for r in rs]))
        ok = float(np.mean([r["success"] for r in rs]))
        figures[f"demo_core_s_per_episode_{m}"] = core
        figures[f"demo_expert_success_{m}"] = ok
        figures[f"suite_500_minutes_2_workers_{m}"] = 500 * core / max(ok, 1e-9) / 2 / 60
        if m != "before":
            figures[f"demo_speedup_{m}"] = figures["demo_core_s_per_episode_before"] / core
    notes = [f"{spec.name} task 0, {episodes} episode(s) per mode, cameras {'+'.join(spec.cameras)}; core-s = process "
             "CPU time (GL threads included); env creation excluded; expert success from these episodes only"]
    return {"figures": figures, "rows": rows, "notes": notes}


_W: dict = {}  # in a mode's process: its env and spec


def _init(env_vars: dict, spec) -> None:
    from harness.data.demos import DEFAULT_NOISE
    from harness.env import apply
    from harness.suites.base import make_env
    apply(env_vars)
    _W["spec"], _W["env"] = spec, make_env(spec, 0)
    _W["env"].expert_noise = DEFAULT_NOISE
    _W["tmp"] = Path(tempfile.mkdtemp(prefix="bench-demos-"))


def _close() -> None:
    import shutil
    _W["env"].close()
    shutil.rmtree(_W["tmp"], ignore_errors=True)


def _episode(k: int, rebuild: bool, stride: int = 1) -> dict:
    from harness.data.lerobot import _VideoStream
    env, spec, cpu = _W["env"], _W["spec"], time.process_time
    c0, w0 = cpu(), time.perf_counter()
    if rebuild:
        env.reset(k % len(env.init_states()), seed=k)
    else:
        env.reset(None, seed=1000 + k)
    reset = cpu() - c0
    frames = {c: [] for c in spec.cameras}
    render = physics = 0.0
    steps, success = 0, False
    for j in range(spec.max_steps):
        c = cpu()
        obs = env.observe(render=j % stride == 0)
        render += cpu() - c
        action = env.expert_action()
        for cam in obs.images:
            frames[cam].append(obs.images[cam])
        c = cpu()
        env.step(action)
        physics += cpu() - c
        steps += 1
        if env.success():
            success = True
            break
    c = cpu()
    for cam in spec.cameras:
        arr = np.asarray(frames[cam], np.uint8)[np.arange(steps) // stride]  # rows hold the last rendered frame
        s = _VideoStream(_W["tmp"] / f"{k}-{cam}.mp4", spec.control_hz, *arr.shape[1:3])
        s.append(arr)
        s.close()
    encode = cpu() - c
    return {"success": success, "steps": steps, "core_s": cpu() - c0, "wall_s": time.perf_counter() - w0,
            "reset_s": reset, "render_ms_per_step": 1000 * render / steps,
            "physics_ms_per_step": 1000 * physics / steps, "encode_ms_per_step": 1000 * encode / steps}
