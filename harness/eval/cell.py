"""`wam-bench eval --checkpoint C --suite S`: one evaluation cell of the results store.

The cell's episodes depend on a recorded source (checkpoint hash, suite hash, execution, noise
seed, device class); episodes already in the cell are kept and only the missing ones of the
requested plan run, so asking for more episodes per task extends a finished cell. Asking for
fewer than the cell holds is refused (the report pools every recorded episode, so it would
silently show more), and so is extending a cell on another device class than its episodes ran on
(CPU and GPU outcomes and latencies are never pooled). result.json is written at the end; its
`config` is the policy's own (`Policy.config`), the same whichever command built the policy, what
building it did (compile time) goes to `extra`, and `extra.episodes_run` counts the episodes the
call that wrote it ran (the others were in the cell already).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from harness.config import Registry, SuiteSpec, to_dict
from harness.errors import UserError
from harness.eval.rollout import episode_plan, executed, run_episodes


def todo_episodes(cell, spec: SuiteSpec, episodes_per_task: int | None = None) -> list[tuple[int, int, int]]:
    """The planned episodes (`episode_plan`) the cell does not hold yet. A cell holding episodes
    outside the plan (recorded with more episodes per task than asked) is refused."""
    n = episodes_per_task or spec.episodes_per_task
    plan = {cell.episode_id(*p): p for p in episode_plan(spec, cell.key.seed, n)}
    done = cell.done_ids()
    outside = done - set(plan)
    if outside:
        raise UserError(f"{cell.path} holds {len(done)} episodes, {len(outside)} of them outside the {len(plan)} asked "
                        f"for ({n} per task); ask for at least as many episodes per task (--episodes), or use "
                        "another --experiment or --root")
    return [p for eid, p in plan.items() if eid not in done]


def is_done(cell, spec: SuiteSpec, episodes_per_task: int | None = None) -> bool:
    """Complete, with exactly the requested plan's episodes (the grid skips only such cells)."""
    if not cell.is_complete() or todo_episodes(cell, spec, episodes_per_task):
        return False
    n = episodes_per_task or spec.episodes_per_task
    return cell.result()["metrics"].get("n_episodes") == n * len(spec.tasks)


def evaluate_cell(cell, spec: SuiteSpec, policy, *, checkpoint_path=None, episodes_per_task: int | None = None,
                  workers: int = 2, execution: str = "sync", noise_seed: int | None = 0, progress: bool = True,
                  extra: dict | None = None, max_batch: int = 1, max_wait_ms: float = 5.0,
                  checkpoint_sha256: str | None = None, envs_per_worker: int = 1):
    """Evaluate the missing episodes of the plan into a store cell; write result.json at the end.

    `policy` is a `Policy` or a `RemotePolicy` (its `config` is recorded), or "expert" / "random"
    (reference rows). `checkpoint_sha256` stands for the checkpoint file when the policy is remote."""
    from harness.results.provenance import load_snapshot, provenance
    from harness.results.stats import per_task, summarize
    from harness.results.store import Result
    from harness.config import spec_hash

    from harness.suites.base import require_runnable
    require_runnable(spec)  # before the cell is claimed: a suite that cannot run here leaves no folder
    source = cell_source(spec, checkpoint_path, policy if isinstance(policy, str) else None, execution, noise_seed,
                         checkpoint_sha256, behaviour=policy_behaviour(policy, execution, max_batch),
                         device=policy_device(policy))
    refuse_other_device(cell, source)
    if cell.claim(source):
        print(f"{cell.path}: its episodes came from another checkpoint, suite version or setting; evaluating again",
              file=sys.stderr)
    if is_done(cell, spec, episodes_per_task):
        return cell.result()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    todo = todo_episodes(cell, spec, episodes_per_task)
    ran = 0

    def record(rec):
        nonlocal ran
        rec["episode_id"] = cell.episode_id(rec["task_index"], rec["init_index"], rec["seed"])
        cell.append_episode(rec)
        ran += 1

    load = {"start": load_snapshot()}   # what the cores were doing: latency under load is not solo latency
    if todo:
        run_episodes(spec, todo, policy, record, workers=workers, execution=execution, noise_seed=noise_seed,
                     progress=progress, max_batch=max_batch, max_wait_ms=max_wait_ms, envs_per_worker=envs_per_worker,
                     desc=f"eval {cell.key.variant}/{cell.key.suite}/{cell.key.opt_level}")
    eps = cell.episodes()
    policy_cfg = {"policy": policy} if isinstance(policy, str) else dict(getattr(policy, "config", {}))
    cfg = {"suite": to_dict(spec), **policy_cfg, "execution": execution, "noise_seed": noise_seed,
           "episodes_per_task": episodes_per_task or spec.episodes_per_task}
    info = getattr(policy, "level_info", None)
    result = Result(experiment=cell.key.experiment, variant=cell.key.variant, suite=cell.key.suite,
                    seed=cell.key.seed, opt_level=cell.key.opt_level, status="complete",
                    metrics=summarize(eps), per_task=per_task(eps), config=cfg, config_hash=spec_hash(cfg),
                    checkpoint={"path": str(checkpoint_path), "sha256": source["checkpoint_sha256"]}
                    if checkpoint_path or checkpoint_sha256 else None,
                    provenance={**provenance(), "suite": suite_provenance(spec)}, started=started,
                    finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    extra={**({"level_info": info} if info else {}), "load": {**load, "end": load_snapshot()},
                           "episodes_run": ran, **(extra or {})})
    cell.write_result(result)
    return result.to_dict()


def policy_behaviour(policy, execution: str = "sync", max_batch: int = 1) -> dict:
    """What a policy does differently from its checkpoint's defaults that changes the episodes:
    action smoothing, an action horizon other than the variant's, and batches with async
    execution (a batch's latency decides how many actions are stale; sync batches give batch 1's
    actions, tests/test_batch.py). Empty for the defaults, so cells recorded before these were
    part of the source keep it."""
    cfg = {} if isinstance(policy, str) else dict(getattr(policy, "config", None) or {})
    out = {}
    if cfg and execution == "async" and max_batch > 1:
        out["max_batch"] = int(max_batch)
    if cfg.get("smoothing"):
        out["smoothing"] = True
    default_h = ((cfg.get("variant") or {}).get("inference") or {}).get("action_horizon")
    if cfg.get("action_horizon") is not None and cfg.get("action_horizon") != default_h:
        out["action_horizon"] = int(cfg["action_horizon"])
    return out


def policy_device(policy) -> str | None:
    """The device class a policy infers on ("cpu", "cuda"; its `config`, local or served), None
    for the expert and random rows, which infer nothing."""
    if isinstance(policy, str):
        return None
    device = (getattr(policy, "config", None) or {}).get("device")
    return device_class(device) if device else None


def device_class(device: str) -> str:
    """"cuda:1" -> "cuda": the episodes of one class pool, those of two never do."""
    return str(device).split(":")[0]


def cell_source(spec: SuiteSpec, checkpoint_path=None, policy: str | None = None, execution: str = "sync",
                noise_seed: int | None = 0, checkpoint_sha256: str | None = None, behaviour: dict | None = None,
                device: str | None = None) -> dict:
    """What an eval cell's episodes depend on; a cell whose records came from another source is
    re-evaluated (`Cell.claim`), so a retrained checkpoint, or the same one with smoothing or
    another action horizon (`policy_behaviour`), never inherits old episodes. `device` is the
    policy's device class (`policy_device`): one the cell's episodes did not run on is refused
    (`refuse_other_device`) rather than pooled or re-run."""
    from harness.policy.checkpoint import file_sha256
    from harness.config import spec_hash
    sha = checkpoint_sha256 or (file_sha256(checkpoint_path) if checkpoint_path else None)
    return {"suite_hash": spec_hash(spec), "checkpoint_sha256": sha, "policy": policy, "execution": execution,
            "noise_seed": noise_seed, "device": device_class(device) if device else None, **(behaviour or {})}


def refuse_other_device(cell, source: dict) -> None:
    """A cell whose episodes came from this very source but on another device class is refused:
    extending it would pool two devices' outcomes and latencies, and re-running it would throw
    finished episodes away."""
    old = cell.source() or {}
    if old.get("device") in (None, source.get("device")) or not cell.done_ids():
        return
    if {k: v for k, v in old.items() if k != "device"} == {k: v for k, v in source.items() if k != "device"}:
        raise UserError(f"{cell.path} holds episodes run on {old['device']}, this run is on {source['device']}: "
                        f"evaluate it on {old['device']} (--device), or use another --experiment or --root")


def reusable(cell, spec: SuiteSpec, source: dict, episodes_per_task: int | None = None) -> bool:
    """Whether a grid skips `cell`: made by `source` and complete with exactly the asked episodes.
    What `evaluate_cell` would refuse (another device class, more episodes than asked) is refused
    here, before any work starts."""
    refuse_other_device(cell, source)
    return cell.source() == source and is_done(cell, spec, episodes_per_task)


def suite_provenance(spec: SuiteSpec) -> dict:
    """Simulator versions and asset checksums the adapter module reports through a module-level
    `provenance(spec)` (e.g. LIBERO), if it has one."""
    import importlib
    from harness.suites.base import ADAPTERS
    target = ADAPTERS.get(spec.adapter, spec.adapter)
    module = importlib.import_module(target.split(":")[0])
    fn = getattr(module, "provenance", None)
    return fn(spec) if callable(fn) else {}


ALONE_CALLS = 20


def time_alone(root, keys: list, registry: Registry | None = None, calls: int = ALONE_CALLS, device: str = "cpu") -> int:
    """Time each complete eval cell's policy alone on the machine, after a grid's cells are done:
    `calls` inference calls, episode-like (a reset every full episode, a chunk's frames of history
    between calls) on one observation of the suite, after one untimed warm-up, on one torch thread
    (as the grid's cells run) and on `device`, into result.extra["latency_solo"]. Latency measured while other
    cells share the cores is not like for like between variants; the report prefers this one.
    Cells that already have it are skipped; returns how many were timed."""
    import torch
    from harness.policy.policy import build_policy
    from harness.results.provenance import load_snapshot
    from harness.results.stats import latency_summary
    from harness.results.store import Result, Store
    from harness.suites.base import make_env
    reg = registry or Registry()
    store = Store(root)
    n, threads = 0, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for key in keys:
            cell = store.cell(key)
            res = cell.result()
            if not res or res["status"] != "complete" or not res.get("checkpoint") or "latency_solo" in res["extra"]:
                continue
            spec = reg.suite(key.suite)
            policy = build_policy(res["checkpoint"]["path"], key.opt_level, registry=reg, device=device, suite=spec)
            with make_env(spec, 0) as env:
                env.reset(0, 0)
                obs = env.observe(render=True)
            horizon = executed(policy, spec)
            per_episode = max(1, -(-spec.max_steps // horizon))  # calls in a full-length episode
            ms = []
            for c in range(calls + 1):
                if c % per_episode == 0:
                    policy.reset()
                obs.history = [] if c % per_episode == 0 else [obs.images] * max(1, horizon // policy.frame_stride)
                policy.infer(obs, noise_seed=c)
                ms.append(policy.last_latency_ms)
            res["extra"]["latency_solo"] = {**latency_summary(ms, warmup=1), "torch_threads": 1, "load": load_snapshot()}
            cell.write_result(Result.from_dict(res))
            n += 1
    finally:
        torch.set_num_threads(threads)
    return n


def add_arguments(p):
    p.add_argument("--checkpoint", help="trained checkpoint (or use --policy expert|random)")
    p.add_argument("--policy", choices=["expert", "random"], help="a reference row instead of a checkpoint")
    p.add_argument("--suite", default="tabletop")
    p.add_argument("--experiment", default="adhoc")
    p.add_argument("--level", default=None,
                   help="inference-optimization level (default O1-kvcache; with --server: the server's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=None, help="episodes per task (default: the suite's)")
    p.add_argument("--workers", type=int, default=2, help="environment worker processes")
    p.add_argument("--execution", choices=["sync", "async"], default="sync")
    p.add_argument("--noise-seed", type=int, default=0, help="fixed sampling noise per call (-1: random)")
    p.add_argument("--smooth", action="store_true", help="Savitzky-Golay action smoothing (x2 upsampled)")
    p.add_argument("--device", default=None, help="torch device of the policy (default: cuda when present, else cpu)")
    p.add_argument("--root", default="results", help="results store")
    p.add_argument("--server", default=None, metavar="ws://HOST:PORT",
                   help="drive a policy served by `wam-bench serve` instead of loading --checkpoint here")
    p.add_argument("--max-batch", type=int, default=1,
                   help="dynamic batching: most observations inferred in one call (default 1: latencies stay batch-1 "
                        "figures; 8+ for throughput, each call's latency is then its batch's)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="dynamic batching: how long the first observation waits for others")
    p.add_argument("--envs-per-worker", type=int, default=1,
                   help="environments in each worker process (--workers counts processes)")


def main(args) -> int:
    from harness.results.store import CellKey, Store
    reg = Registry(args.include_path)
    spec = reg.suite(args.suite)
    if sum(map(bool, (args.checkpoint, args.policy, args.server))) != 1:
        raise UserError("give exactly one of --checkpoint C, --server ws://HOST:PORT or --policy expert|random")
    noise = None if args.noise_seed < 0 else args.noise_seed
    sha = None
    if args.server:
        from harness.eval.remote import RemotePolicy
        policy = RemotePolicy(args.server, level=args.level, device=args.device, smoothing=args.smooth)
        if policy.metadata.get("suite") != spec.name:
            raise UserError(f"--suite {spec.name}: the server at {args.server} maps keys for suite "
                            f"'{policy.metadata.get('suite')}'; restart it with --suite {spec.name}")
        key = CellKey(args.experiment, policy.variant, spec.name, args.seed, policy.level)
        ckpt, sha = None, policy.checkpoint_sha256
    elif args.policy:
        key = CellKey(args.experiment, args.policy, spec.name, args.seed, "reference")
        policy, ckpt = args.policy, None
    else:
        from harness.policy.policy import build_policy
        policy = build_policy(args.checkpoint, args.level or "O1-kvcache", registry=reg, device=args.device,
                              smoothing=args.smooth, suite=spec)
        key = CellKey(args.experiment, policy.variant, spec.name, args.seed, policy.level)
        ckpt = Path(args.checkpoint)
    cell = Store(args.root).cell(key)
    res = evaluate_cell(cell, spec, policy, checkpoint_path=ckpt, episodes_per_task=args.episodes,
                        workers=args.workers, execution=args.execution, noise_seed=noise,
                        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, checkpoint_sha256=sha,
                        envs_per_worker=args.envs_per_worker)
    m = res["metrics"]
    print(f"{key.variant} on {key.suite} [{key.opt_level}]: success {m['success_rate']:.1%} "
          f"(n={m['n_episodes']}, errors {m['n_errors']}), progress {m['progress_mean']:.2f} -> {cell.path}")
    return 0
