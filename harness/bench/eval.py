"""`wam-bench bench eval`: closed-loop harness throughput ÷ raw simulator throughput.

Both sides run the same episodes (tasks, init states, seeds) with the same rendering cadence
(one camera frame per action chunk) and the same random actions, interleaved so machine noise
hits both: `raw` is a bare loop over one environment in this process; `harness` is
`run_episodes` (worker processes, pipes, per-episode records). `eval_over_sim` is their ratio.
A second pair repeats the harness side with a real tiny policy's inference in the loop.
"""
from __future__ import annotations

import time

import numpy as np

from harness.config import Registry


def raw_steps_per_s(spec, plan, horizon: int) -> float:
    from harness.suites.base import make_env
    envs, steps, t_total = {}, 0, 0.0
    rng = np.random.default_rng(0)
    for task, init, seed in plan:
        t0 = time.perf_counter()  # environment creation counts on both sides
        env = envs.setdefault(task, make_env(spec, task))
        env.reset(init, seed)
        env.observe(render=True)
        for k in range(spec.max_steps):
            env.step(rng.uniform(-1, 1, spec.action_dim).astype(np.float32))
            steps += 1
            if env.success():
                break
            if (k + 1) % horizon == 0:
                env.observe(render=True)
        t_total += time.perf_counter() - t0
    for env in envs.values():
        env.close()
    return steps / t_total


def harness_steps_per_s(spec, plan, policy, workers: int) -> float:
    from harness.eval.rollout import run_episodes
    recs = []
    t0 = time.perf_counter()
    run_episodes(spec, plan, policy, recs.append, workers=workers, progress=False)
    return sum(r["steps"] for r in recs) / (time.perf_counter() - t0)


def measure(args) -> dict:
    import torch
    torch.set_num_threads(1)
    from harness.eval.rollout import episode_plan
    from harness.policy.reference import RandomPolicy
    spec = Registry(getattr(args, "include_path", None) or []).suite(args.suite or "tabletop")
    horizon = spec.action_horizon or 8
    n = 2 if args.quick else 5
    plan = episode_plan(spec, 0, n)
    rows, raw, har = [], [], []
    for rep in range(1 if args.quick else 2):  # interleaved repetitions
        raw.append(raw_steps_per_s(spec, plan, horizon))
        for workers in (1, 2):
            v = harness_steps_per_s(spec, plan, RandomPolicy(spec.action_dim, horizon, horizon), workers)
            rows.append({"mode": f"harness, random policy, {workers} worker(s)", "steps_per_s": v, "rep": rep})
            if workers == 2:
                har.append(v)
        rows.append({"mode": "raw simulator, 1 process", "steps_per_s": raw[-1], "rep": rep})
    figures = {"eval_over_sim": float(np.median(har) / np.median(raw)),
               "raw_sim_steps_per_s": float(np.median(raw)), "harness_steps_per_s": float(np.median(har))}
    if not args.quick:
        from harness.policy.policy import Policy
        from harness.config import resolve_variant
        from harness.model.wam import WorldActionModel
        rv = resolve_variant("fastwam")
        model = WorldActionModel(rv, spec.action_dim, spec.state_dim)
        policy = Policy(model, {"camera": spec.cameras[0]}, Registry().opt_level("O1-kvcache"), device="cpu")
        v = harness_steps_per_s(spec, plan, policy, 2)
        rows.append({"mode": "harness, tiny fastwam policy, 2 workers", "steps_per_s": v, "rep": 0})
        figures["eval_over_sim_with_policy"] = v / figures["raw_sim_steps_per_s"]
    return {"figures": figures, "rows": rows,
            "notes": ["raw = one environment in one process; harness = worker processes + the policy in the driver"]}
