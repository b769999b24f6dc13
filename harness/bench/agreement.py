"""`wam-bench bench agreement --checkpoint C --suite S` (or `--policy expert`): do two harnesses agree on LIBERO?

The same checkpoint on the same LIBERO tasks and init states, once through our evaluator (the
`evaluate_cell` that `wam-bench eval` runs, into a scratch store) and once through vla-eval's own
LIBERO benchmark and orchestrator (`vla_eval.api.run`, in-process, `docker=False`) against our
vla-eval server (`WamBenchModelServer`, `vla_eval.api.serve_background`), under the settings
`libero_config` derives from the suite. One `Policy` answers both, so every call is recorded
where it is made: the observation the policy got (each camera's pixels, the state, the
instruction), its noise seed and the chunk it returned. Per episode the rows say whether success
and steps agree and whether every call was bit-identical, or where the two first parted.

Settings vla-eval's LIBERO benchmark cannot take are listed in `notes` (and the run goes on: a
misaligned setting shows up as disagreement). Episodes run one at a time on each side, at batch
1, on one torch thread unless `--threads`, so both sides compute the same floating point.
docs/harness_agreement.md has the comparison of the two protocols and a measured run.
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np

from harness.config import Registry
from harness.errors import UserError


class CallLog:
    """Spies on one policy: every `infer_batch` call, per episode context (`new_state`), in order."""

    def __init__(self, policy):
        from harness.eval.serving import needed_cameras
        self.policy, self.states, self.calls = policy, [], {}
        self.cameras = sorted(needed_cameras(policy))   # what the policy reads (our evaluator renders every camera)
        self._infer, self._new = policy.infer_batch, policy.new_state
        policy.infer_batch, policy.new_state = self.infer_batch, self.new_state

    def new_state(self):
        st = self._new()
        self.states.append(st)           # kept alive, so no two episodes share an id
        self.calls[id(st)] = []
        return st

    def infer_batch(self, observations, noise_seeds=None, states=None):
        chunks = self._infer(observations, noise_seeds, states)
        for o, seed, st, chunk in zip(observations, noise_seeds or [None] * len(chunks), states, chunks):
            self.calls[id(st)].append({
                "images": {c: hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest()[:16]
                           for c, im in sorted(o.images.items()) if c in self.cameras},
                "state": np.asarray(o.state, np.float32).copy(), "instruction": o.instruction, "seed": seed,
                "chunk": np.asarray(chunk).copy()})
        return chunks

    def take(self) -> list[list[dict]]:
        """The calls of each episode since the last `take`, in the order the episodes started."""
        out = [self.calls.pop(id(st)) for st in self.states]
        self.states = []
        return out

    def close(self):
        self.policy.infer_batch, self.policy.new_state = self._infer, self._new


class ExpertReplay:
    """The scripted expert as a policy both harnesses can drive: its actions are recorded once in
    our environment from each planned (task, init state), under the suite's protocol, and replayed
    open loop, the episode found by its first observation (instruction and state, bit for bit).
    Where both harnesses' physics equal the recording's, both replay the expert's successes: the
    success check and the step count are compared on episodes that succeed, which a barely trained
    checkpoint does not give. An episode whose first observation was not recorded fails loudly."""
    variant, level, needs_history, frame_stride, level_info = "expert-replay", "reference", False, 1, None
    last_latency_ms = 0.0

    def __init__(self, spec, plan):
        from types import SimpleNamespace

        from harness.suites.base import make_env
        self.action_horizon = spec.action_horizon or 8
        self.chunk = SimpleNamespace(actions=self.action_horizon, latent_frames=1)
        self.cameras = tuple(spec.cameras)
        self.meta, self.config = {"action_size": spec.action_dim}, {"policy": self.variant}
        self.episodes: dict[tuple, np.ndarray] = {}
        self.last_stats: list[dict] = []
        for task in sorted({t for t, _, _ in plan}):     # one fresh env per task, inits in order: as both harnesses
            with make_env(spec, task) as env:
                for _, init, seed in (p for p in plan if p[0] == task):
                    env.reset(init, seed)
                    obs = env.observe(render=False)
                    actions = []
                    while len(actions) < spec.max_steps and not env.success():
                        actions.append(np.asarray(env.expert_action(), np.float32))
                        env.step(actions[-1])
                    self.episodes[obs.instruction, np.asarray(obs.state, np.float32).tobytes()] = np.stack(actions)

    def new_state(self):
        from types import SimpleNamespace
        return SimpleNamespace(actions=None, calls=0)   # an object, as the server snapshots a context's vars

    def infer_batch(self, observations, noise_seeds=None, states=None):
        out = []
        for o, st in zip(observations, states):
            if st.actions is None:
                key = (o.instruction, np.asarray(o.state, np.float32).tobytes())
                if key not in self.episodes:
                    raise KeyError(f"expert replay: no recorded episode starts from this observation ({o.instruction!r}, "
                                   f"state {np.round(o.state, 4).tolist()})")
                st.actions = self.episodes[key]
            k, h = st.calls, self.chunk.actions
            chunk = st.actions[k * h:(k + 1) * h]
            rest = np.tile(np.r_[np.zeros(6), -1.0].astype(np.float32), (h - len(chunk), 1))  # past the expert: hold
            out.append(np.concatenate([chunk, rest]))
            st.calls += 1
        self.last_stats = [{"latency_ms": 0.0, "batch_size": len(out), "effective_steps": 0, "forward_passes": 0}] * len(out)
        return out


def first_difference(ours: list[dict], theirs: list[dict]) -> str | None:
    """Where two episodes' calls first part (None: every call bit-identical)."""
    for k, (a, b) in enumerate(zip(ours, theirs)):
        for key in ("instruction", "seed", "images"):
            if a[key] != b[key]:
                return f"call {k}: {key} {a[key]!r} vs {b[key]!r}"
        if not np.array_equal(a["state"], b["state"]):
            return f"call {k}: state differs by up to {np.abs(a['state'] - b['state']).max():.3g}"
        if not np.array_equal(a["chunk"], b["chunk"]):
            return f"call {k}: chunk differs by up to {np.abs(a['chunk'] - b['chunk']).max():.3g}"
    if len(ours) != len(theirs):
        return f"calls: {len(ours)} vs {len(theirs)}"
    return None


def compare(spec, policy, episodes_per_task: int | None = None, workdir: Path | None = None) -> dict:
    """Run the suite's episodes through both harnesses with `policy` -> {"rows": one per episode,
    "unaligned": settings vla-eval cannot take, "config": vla-eval's config}."""
    from vla_eval.api import run, serve_background

    from harness.eval.cell import evaluate_cell, todo_episodes
    from harness.eval.protocols.vla_eval import WamBenchModelServer, libero_config
    from harness.results.store import CellKey, Store
    from harness.suites.libero import setup
    config, unaligned = libero_config(spec, episodes_per_task)
    n = config["benchmarks"][0]["episodes_per_task"]
    task_ids = [int(t.options.get("task_id", i)) for i, t in enumerate(spec.tasks)]
    with tempfile.TemporaryDirectory(prefix="wam-agreement-") as tmp:
        work = Path(workdir or tmp)
        log = CallLog(policy)
        try:
            cell = Store(work / "store").cell(CellKey("agreement", policy.variant, spec.name, 0, policy.level))
            plan = todo_episodes(cell, spec, n)
            evaluate_cell(cell, spec, policy, episodes_per_task=n, workers=1, progress=False)
            ours = {(task_ids[r["task_index"]], r["init_index"]): r for r in cell.episodes()}
            ours_calls = dict(zip([(task_ids[t], i) for t, i, _ in plan], log.take()))
            setup(spec.options.get("assets"))  # vla-eval's LIBERO reads the package config our setup writes
            with serve_background(WamBenchModelServer(policy, spec, max_batch_size=1)) as server:
                results = run(config, server_url=server.url, docker=False, no_save=True, output_dir=work / "vla-eval")
        finally:
            log.close()
        # vla-eval runs its tasks in the benchmark's order, episode e of each from init state e
        theirs_calls = dict(zip([(tid, e) for tid in sorted(task_ids) for e in range(n)], log.take()))
    lang = dict(zip(config["benchmarks"][0]["tasks"], task_ids))
    theirs = {(lang[t["task"]], e["episode_id"]): e for t in results[0]["tasks"] for e in t["episodes"]}
    rows = []
    for key, r in sorted(ours.items()):
        t = theirs.get(key, {})
        a, b = ours_calls.get(key, []), theirs_calls.get(key, [])
        t_success = (t.get("metrics") or {}).get("success")
        rows.append({"task": r["task"], "task_id": key[0], "init": key[1],
                     "success": r["success"], "success_vla_eval": t_success,
                     "steps": r["steps"], "steps_vla_eval": t.get("steps"),
                     "calls": len(a), "calls_vla_eval": len(b),
                     "error": r["error"], "error_vla_eval": t.get("failure_reason"),
                     "agree": r["error"] is None and not t.get("failure_reason") and r["success"] == t_success
                     and r["steps"] == t.get("steps"),
                     "first_difference": first_difference(a, b),
                     "max_state_difference": max((float(np.abs(x["state"] - y["state"]).max()) for x, y in zip(a, b)),
                                                 default=None)})
    return {"rows": rows, "unaligned": unaligned, "config": config, "cameras": log.cameras}


def measure(args) -> dict:
    import torch

    from harness.eval.rollout import episode_plan
    from harness.policy.policy import build_policy
    if bool(args.checkpoint) == bool(args.policy):
        raise UserError("bench agreement: give --checkpoint C (trained on the LIBERO suite's shapes) or --policy expert")
    reg = Registry(list(getattr(args, "include_path", []) or []))
    spec = reg.suite(args.suite or "libero_object")
    torch.set_num_threads(args.threads or 1)
    if args.policy:
        policy = ExpertReplay(spec, episode_plan(spec, 0, args.episodes))
    else:
        policy = build_policy(args.checkpoint, "O1-kvcache", registry=reg, device="cpu", suite=spec)
    out = compare(spec, policy, args.episodes)
    rows = out["rows"]
    n = len(rows)
    figures = {"episodes": n, "agreement": sum(r["agree"] for r in rows) / n,
               "identical_calls": sum(r["first_difference"] is None for r in rows) / n,
               "successes": sum(bool(r["success"]) for r in rows),
               "successes_vla_eval": sum(bool(r["success_vla_eval"]) for r in rows),
               "unaligned_settings": len(out["unaligned"])}
    notes = [f"not aligned: {u}" for u in out["unaligned"]] + [f"cameras compared: {', '.join(out['cameras'])}",
                                                                  f"vla-eval config: {out['config']}"]
    return {"figures": figures, "rows": rows, "notes": notes}
