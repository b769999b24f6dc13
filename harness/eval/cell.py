"""`wam-bench eval --checkpoint C --suite S`: one evaluation cell of the results store.

The cell's episodes depend on a recorded source (checkpoint hash, suite hash, execution, noise
seed); episodes already in the cell are skipped, and result.json is written at the end.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from harness.config import Registry, SuiteSpec, to_dict
from harness.errors import UserError
from harness.eval.rollout import episode_plan, run_episodes


def evaluate_cell(cell, spec: SuiteSpec, policy, *, config: dict | None = None, checkpoint_path=None,
                  episodes_per_task: int | None = None, workers: int = 2, execution: str = "sync",
                  noise_seed: int | None = 0, progress: bool = True, extra: dict | None = None,
                  max_batch: int = 1, max_wait_ms: float = 5.0, checkpoint_sha256: str | None = None,
                  envs_per_worker: int = 1):
    """Evaluate into a store cell, skipping episodes already there; write result.json at the end.
    `checkpoint_sha256` stands for the checkpoint file when the policy is remote (`--server`)."""
    from harness.results.provenance import provenance
    from harness.results.stats import per_task, summarize
    from harness.results.store import Result
    from harness.config import spec_hash

    source = cell_source(spec, checkpoint_path, policy if isinstance(policy, str) else None, execution, noise_seed,
                         checkpoint_sha256)
    if cell.claim(source):
        print(f"{cell.path}: its episodes came from another checkpoint or suite version; evaluating again",
              file=sys.stderr)
    if cell.is_complete():
        return cell.result()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    plan = episode_plan(spec, cell.key.seed, episodes_per_task)
    done = cell.done_ids()
    todo = [p for p in plan if cell.episode_id(p[0], p[1], p[2]) not in done]

    def record(rec):
        rec["episode_id"] = cell.episode_id(rec["task_index"], rec["init_index"], rec["seed"])
        cell.append_episode(rec)

    if todo:
        run_episodes(spec, todo, policy, record, workers=workers, execution=execution, noise_seed=noise_seed,
                     progress=progress, max_batch=max_batch, max_wait_ms=max_wait_ms, envs_per_worker=envs_per_worker, desc=f"eval {cell.key.variant}/{cell.key.suite}/{cell.key.opt_level}")
    eps = cell.episodes()
    cfg = {"suite": to_dict(spec), **(config or {}), "execution": execution, "noise_seed": noise_seed,
           "episodes_per_task": episodes_per_task or spec.episodes_per_task}
    result = Result(experiment=cell.key.experiment, variant=cell.key.variant, suite=cell.key.suite,
                    seed=cell.key.seed, opt_level=cell.key.opt_level, status="complete",
                    metrics=summarize(eps), per_task=per_task(eps), config=cfg, config_hash=spec_hash(cfg),
                    checkpoint={"path": str(checkpoint_path), "sha256": source["checkpoint_sha256"]}
                    if checkpoint_path or checkpoint_sha256 else None,
                    provenance={**provenance(), "suite": suite_provenance(spec)}, started=started,
                    finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), extra=extra or {})
    cell.write_result(result)
    return result.to_dict()


def cell_source(spec: SuiteSpec, checkpoint_path=None, policy: str | None = None, execution: str = "sync",
                noise_seed: int | None = 0, checkpoint_sha256: str | None = None) -> dict:
    """What an eval cell's episodes depend on; a cell whose records came from another source is
    re-evaluated (`Cell.claim`), so a retrained checkpoint never inherits old episodes."""
    from harness.policy.checkpoint import file_sha256
    from harness.config import spec_hash
    sha = checkpoint_sha256 or (file_sha256(checkpoint_path) if checkpoint_path else None)
    return {"suite_hash": spec_hash(spec), "checkpoint_sha256": sha,
            "policy": policy, "execution": execution, "noise_seed": noise_seed}


def suite_provenance(spec: SuiteSpec) -> dict:
    """Simulator versions and asset checksums the adapter module reports through a module-level
    `provenance(spec)` (e.g. LIBERO), if it has one."""
    import importlib
    from harness.suites.base import ADAPTERS
    target = ADAPTERS.get(spec.adapter, spec.adapter)
    module = importlib.import_module(target.split(":")[0])
    fn = getattr(module, "provenance", None)
    return fn(spec) if callable(fn) else {}


def add_arguments(p):
    p.add_argument("--checkpoint", help="trained checkpoint (or use --policy expert|random)")
    p.add_argument("--policy", choices=["expert", "random"], help="a reference row instead of a checkpoint")
    p.add_argument("--suite", default="tabletop")
    p.add_argument("--experiment", default="adhoc")
    p.add_argument("--level", default="O1-kvcache", help="inference-optimization level")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=None, help="episodes per task (default: the suite's)")
    p.add_argument("--workers", type=int, default=2, help="environment worker processes")
    p.add_argument("--execution", choices=["sync", "async"], default="sync")
    p.add_argument("--noise-seed", type=int, default=0, help="fixed sampling noise per call (-1: random)")
    p.add_argument("--smooth", action="store_true", help="Savitzky-Golay action smoothing (x2 upsampled)")
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
        policy = RemotePolicy(args.server)
        if args.level != "O1-kvcache" and args.level != policy.level:
            raise UserError(f"--level {args.level}: the server at {args.server} runs {policy.level}; restart it with --level")
        if policy.metadata.get("suite") != spec.name:
            raise UserError(f"--suite {spec.name}: the server at {args.server} maps keys for suite "
                            f"'{policy.metadata.get('suite')}'; restart it with --suite {spec.name}")
        cfg = {"server": args.server, "level": {"name": policy.level}, "variant": {"name": policy.variant}}
        key = CellKey(args.experiment, policy.variant, spec.name, args.seed, policy.level)
        ckpt, sha = None, policy.checkpoint_sha256
    elif args.policy:
        key = CellKey(args.experiment, args.policy, spec.name, args.seed, "reference")
        policy, cfg, ckpt = args.policy, {"policy": args.policy}, None
    else:
        from harness.policy.levels import load_leveled_policy
        policy, cfg = load_leveled_policy(args.checkpoint, args.level, reg)
        policy.smoothing = args.smooth
        cfg["smoothing"] = args.smooth
        key = CellKey(args.experiment, policy.variant, spec.name, args.seed, args.level)
        ckpt = Path(args.checkpoint)
    cell = Store(args.root).cell(key)
    res = evaluate_cell(cell, spec, policy, config=cfg, checkpoint_path=ckpt, episodes_per_task=args.episodes,
                        workers=args.workers, execution=args.execution, noise_seed=noise,
                        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, checkpoint_sha256=sha,
                        envs_per_worker=args.envs_per_worker)
    m = res["metrics"]
    print(f"{key.variant} on {key.suite} [{key.opt_level}]: success {m['success_rate']:.1%} "
          f"(n={m['n_episodes']}, errors {m['n_errors']}), progress {m['progress_mean']:.2f} -> {cell.path}")
    return 0
