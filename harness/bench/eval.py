"""`wam-bench bench eval`: closed-loop harness throughput ÷ raw simulator throughput.

Both sides run the same episodes (tasks, init states, seeds) with the same rendering cadence
(one camera frame per action chunk) and the same random actions, interleaved so machine noise
hits both: `raw` is a bare loop over one environment in this process; `harness` is
`run_episodes` (worker processes, pipes, per-episode records). `eval_over_sim` is their ratio.

With a policy in the loop (`--checkpoint`, else a random-weight tiny fastwam, said in the notes):
`batched_speedup` is episodes/s with dynamic batching (`--max-batch 8`) over one call per
observation (`--max-batch 1`), the same policy, plan and 8 environments (in a worker process per
core, `layout`), interleaved, start-up of the worker processes included; and
`eval_over_sim_policy` is the batched harness's control steps/s over the raw simulator's at the
same cadence (one rendered frame per chunk; the policy must not keep history, so fastwam-like).

A LIBERO suite (`--suite libero_object`), whose episodes cost seconds each, gets a run of its own
(`libero_figures`): four environments, one full-length episode each, batched and at batch 1 side
by side (in ABBA order, each figure the mean of its two runs) -> `libero_episodes_per_hour` (and
`_unbatched`, `libero_batched_speedup`), and where an episode's time goes (physics, renders,
inference), each part timed on one environment.
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


def harness_run(spec, plan, policy, workers: int, max_batch: int = 8, envs_per_worker: int = 1) -> tuple[float, float, list]:
    """-> (control steps/s, episodes/s, records) of `run_episodes` over `plan`; an episode whose
    simulator failed (its worker killed, say) does not count as one."""
    from harness.eval.rollout import run_episodes
    recs = []
    t0 = time.perf_counter()
    run_episodes(spec, plan, policy, recs.append, workers=workers, progress=False, noise_seed=0, max_batch=max_batch,
                 envs_per_worker=envs_per_worker)
    dt = time.perf_counter() - t0
    ok = [r for r in recs if r["error"] is None]
    return sum(r["steps"] for r in ok) / dt, len(ok) / dt, recs


def layout(envs: int) -> tuple[int, int]:
    """(worker processes, environments each) for `envs` environments: a process per core at most,
    and at least two environments a process, or the batched run would have nothing to batch.
    Eight simulator processes on two cores pay eight interpreter and GL start-ups and fight over
    the cores; two processes of four environments step the same environments, one after another."""
    import os
    most = min(os.cpu_count() or 1, max(1, envs // 2))
    procs = max(d for d in range(1, envs + 1) if envs % d == 0 and d <= most)
    return procs, envs // procs


def harness_steps_per_s(spec, plan, policy, workers: int) -> float:
    return harness_run(spec, plan, policy, workers)[0]


def bench_policy(spec, checkpoint: str | None):
    """(policy, description): the checkpoint at O1, else a random-weight tiny fastwam."""
    from harness.config import Registry
    from harness.policy.policy import Policy, build_policy
    if checkpoint:
        policy = build_policy(checkpoint, "O1-kvcache", device="cpu", suite=spec)
        if policy.needs_history:
            raise ValueError(f"bench eval compares cadences without history: give a fastwam-like checkpoint, not {policy.variant}")
        return policy, f"trained {policy.variant} ({checkpoint})"
    from harness.config import resolve_variant
    from harness.model.frame import Frame
    from harness.model.wam import WorldActionModel
    rv = resolve_variant("fastwam")
    frame = Frame.of_suite(spec, rv.backbone.codec.image_size)  # the suite's cameras, composed
    model = WorldActionModel(rv, spec.action_dim, spec.state_dim, frame_size=frame.shape)
    policy = Policy(model, frame.to_meta(), Registry().opt_level("O1-kvcache"), device="cpu")
    return policy, "random-weight tiny fastwam (no --checkpoint given)"


def policy_figures(spec, args, policy, what: str) -> tuple[dict, list, list]:
    """batched_speedup and eval_over_sim_policy, side by side in one run."""
    from harness.eval.rollout import episode_plan
    envs = 4 if args.quick else 8
    plan = episode_plan(spec, 0, 1 if args.quick else 4)   # quick: 4 episodes on 4 envs; else 16 on 8
    horizon = spec.action_horizon or policy.action_horizon
    if args.quick:  # three chunks an episode: a spot check of the path, not the figure to report
        import dataclasses
        spec = dataclasses.replace(spec, max_steps=3 * horizon)
    procs, per = layout(envs)
    rows, seq, bat, bat_steps, raw, outcomes = [], [], [], [], [], {}
    for rep in range(1 if args.quick else 2):
        for max_batch in (1, envs):
            steps_s, eps_s, recs = harness_run(spec, plan, policy, procs, max_batch, per)
            sizes = [b for r in recs for b in r["batch_size"]]
            lat = [x for r in recs for x in r["latency_ms"]]
            rows.append({"mode": f"harness, policy, {envs} envs ({procs} processes), max batch {max_batch}",
                         "episodes_per_s": eps_s, "steps_per_s": steps_s, "mean_batch": float(np.mean(sizes)),
                         "latency_p50_ms": float(np.median(lat)), "rep": rep})
            outcomes.setdefault(max_batch, []).append(sorted((r["seed"], r["steps"], r["success"]) for r in recs))
            (bat if max_batch > 1 else seq).append(eps_s)
            if max_batch > 1:
                bat_steps.append(steps_s)
        raw.append(raw_steps_per_s(spec, plan, horizon))
        rows.append({"mode": "raw simulator, 1 process, same cadence", "steps_per_s": raw[-1], "rep": rep})
    # batch-size scaling of one call (for planning a GPU host: latency vs batch)
    from harness.suites.base import make_env
    env = make_env(spec, 0)
    env.reset(0, 0)
    obs = env.observe(render=True)
    env.close()
    for b in (1, 2, 4, 8):
        ts = []
        for k in range(2 if args.quick else 6):
            t0 = time.perf_counter()
            policy.infer_batch([obs] * b, list(range(b)))
            ts.append((time.perf_counter() - t0) * 1000)
        rows.append({"mode": f"one call, batch {b}", "latency_p50_ms": float(np.median(ts[1:]))})
    ref = outcomes[1][0]
    same = [a == b for run in outcomes[envs] for a, b in zip(run, ref)]
    figures = {"batched_speedup": float(np.median(bat) / np.median(seq)),
               "eval_over_sim_policy": float(np.median(bat_steps) / np.median(raw)),
               "batched_episodes_as_batch1": float(np.mean(same))}
    return figures, rows, [f"policy: {what}; {envs} environments in {procs} worker processes"
                           + ("; --quick: 3 chunks an episode" if args.quick else ""),
                           "batched_episodes_as_batch1: the fraction of batched episodes that ended as batch 1's "
                           "(seed, steps, success)"]


def episode_costs(spec, policy, batch: int, steps: int = 24) -> dict:
    """Seconds one control step's physics (with the success and progress checks a worker makes),
    one observation's renders (every camera of the suite) and one inference call per sample (at
    batch 1 and at `batch`) cost, measured on one environment in this process, medians."""
    from harness.suites.base import make_env
    env = make_env(spec, 0)
    try:
        env.reset(0, 0)
        rng = np.random.default_rng(0)
        phys, rend = [], []
        for k in range(steps):
            t0 = time.perf_counter()
            env.step(rng.uniform(-0.3, 0.3, spec.action_dim).astype(np.float32))
            env.success(), env.progress()
            phys.append(time.perf_counter() - t0)
            if k % 4 == 0:
                t0 = time.perf_counter()
                obs = env.observe(render=True)
                rend.append(time.perf_counter() - t0)
    finally:
        env.close()
    inf = {}
    for b in (1, batch):
        ts = []
        for k in range(4):
            t0 = time.perf_counter()
            policy.infer_batch([obs] * b, list(range(b)))
            ts.append((time.perf_counter() - t0) / b)
        inf[b] = float(np.median(ts[1:]))
    return {"physics_step": float(np.median(phys)), "render": float(np.median(rend)), "inference": inf}


def libero_figures(spec, args) -> dict:
    """LIBERO episodes per hour with the policy in the loop, batched and one call per observation,
    side by side, and where an episode's time goes (physics, renders, inference)."""
    from harness.eval.rollout import episode_plan
    policy, what = bench_policy(spec, args.checkpoint)
    envs = 4  # at least two a process (`layout`): with one a process nothing batches
    plan = episode_plan(spec, 0, 1, tasks=list(range(envs)))  # one episode per environment, first tasks
    horizon = spec.action_horizon or policy.action_horizon
    if args.quick:  # three chunks an episode: a spot check of the path, not the figure to report
        import dataclasses
        spec = dataclasses.replace(spec, max_steps=3 * horizon)
    procs, per = layout(envs)
    cost = episode_costs(spec, policy, envs)  # first: loads the simulator from disk for both runs alike
    rows, per_hour, recs_of = [], {}, {}
    for max_batch in ((1, envs) if args.quick else (1, envs, envs, 1)):  # ABBA: a drifting load hits both alike
        t0 = time.perf_counter()
        _, eps_s, recs = harness_run(spec, plan, policy, procs, max_batch, per)
        per_hour.setdefault(max_batch, []).append(eps_s * 3600)
        recs_of[max_batch] = recs
        rows.append({"mode": f"harness, policy, {envs} envs ({procs} processes), max batch {max_batch}",
                     "episodes_per_hour": eps_s * 3600, "wall_s": time.perf_counter() - t0,
                     "mean_steps": float(np.mean([r["steps"] for r in recs])),
                     "mean_batch": float(np.mean([b for r in recs for b in r["batch_size"]])),
                     "errors": sum(r["error"] is not None for r in recs), "successes": sum(bool(r["success"]) for r in recs)})
    per_hour = {b: float(np.mean(v)) for b, v in per_hour.items()}
    recs = recs_of[envs]
    steps = float(np.mean([r["steps"] for r in recs]))
    calls = float(np.mean([len(r["latency_ms"]) for r in recs]))
    split = {"physics": steps * cost["physics_step"], "renders": calls * cost["render"],
             "inference, batch 1": calls * cost["inference"][1],
             f"inference, batch {envs}": calls * cost["inference"][envs]}
    for part, sec in split.items():
        rows.append({"mode": f"one episode's {part} (one environment, this process)", "seconds": sec})
    sim = split["physics"] + split["renders"]
    figures = {"libero_episodes_per_hour": per_hour[envs], "libero_episodes_per_hour_unbatched": per_hour[1],
               "libero_batched_speedup": per_hour[envs] / per_hour[1],
               # where the cores bound the run (simulators and policy share them), batching saves only
               # the inference part of an episode's CPU time: the most it can give
               "libero_batched_speedup_cpu_bound": (sim + split["inference, batch 1"])
               / (sim + split[f"inference, batch {envs}"]),
               "libero_episode_s_physics": split["physics"], "libero_episode_s_renders": split["renders"],
               "libero_episode_s_inference_batch1": split["inference, batch 1"],
               "libero_episode_s_inference_batched": split[f"inference, batch {envs}"]}
    notes = [f"{spec.name}: policy {what}; {envs} environments in {procs} worker processes, one episode each "
             f"(the first {envs} tasks), {steps:.0f} control steps and {calls:.0f} calls an episode on average; "
             "episodes/hour counts the whole run: worker start-up, simulator creation and resets included",
             f"an episode's split: {steps:.0f} x physics step {cost['physics_step'] * 1e3:.1f} ms, {calls:.0f} x "
             f"render of {len(spec.cameras)} camera(s) at {spec.image_size} px {cost['render'] * 1e3:.0f} ms, "
             f"{calls:.0f} x inference {cost['inference'][1] * 1e3:.0f} ms a call at batch 1, "
             f"{cost['inference'][envs] * 1e3:.0f} ms per sample at batch {envs}"]
    if args.quick:
        notes.append("--quick: 3 chunks an episode: a spot check of the path, not the figure to report")
    return {"figures": figures, "rows": rows, "notes": notes}


def measure(args) -> dict:
    import torch
    torch.set_num_threads(1)
    from harness.eval.rollout import episode_plan
    from harness.policy.reference import RandomPolicy
    spec = Registry(getattr(args, "include_path", None) or []).suite(args.suite or "tabletop")
    if spec.adapter == "libero":  # simulation costs seconds an episode: its own, smaller run
        return libero_figures(spec, args)
    policy, what = bench_policy(spec, args.checkpoint)  # first: a checkpoint the suite cannot serve stops here
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
    pf, prow, pnotes = policy_figures(spec, args, policy, what)
    figures.update(pf)
    return {"figures": figures, "rows": rows + prow,
            "notes": ["raw = one environment in one process; harness = worker processes + the policy in the driver"]
            + pnotes}
