"""Batched inference: a batch gives each sample what it gets alone (its own noise generator,
its own observed chunks, its own DiT-cache decisions, its own int8 scales), for every variant at
every level it declares, with the level's real transforms, and in the evaluator's rollouts.

Models have random non-zero output heads (`random_model`): with the zero-initialised heads of a
fresh model the actions are the noise itself, and a leak through the network would not show.
int8 is the real `quantize_int8` everywhere. Compilation takes minutes per model on a 2-core CPU
(dynamo alone, without inductor, several), so it is in the slow test only, and it matters for one
level: the int8 levels run each sample alone (`per_sample`), so a batched call runs the very graph
of the batch-1 call; O4 is the one level whose compiled graphs see a batch of more than one.
"""
import copy
import dataclasses

import pytest
import torch
from test_masks import random_model

from harness.config import Registry
from harness.model.wam import InferOptions
from harness.policy.levels import infer_options, prepare, quantize_int8, transform

REG = Registry()
TOL = 1e-5
VARIANTS = ["fastwam", "fastwam-joint", "fastwam-idm", "fastwam-no-cotrain", "dreamzero", "dreamzero-flash"]


def _batch(m, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(B, 1, m.tokens_per_frame, m.codec.channels, generator=g)
    state = torch.randn(B, 4, generator=g)
    blocks = None
    if m.v.layout == "dreamzero":  # samples at different points of their episodes: 0, 1, 1, 2 observed chunks
        n = [0, 1, 1, 2, 0, 1][:B]
        size = (1, m.v.chunk.latent_frames * m.tokens_per_frame, m.codec.channels)
        blocks = [[torch.randn(size, generator=g) for _ in range(k)] for k in n]
    prompts = ["pick up the red cube", "push the blue block", None, "stack"][:B]
    return lat, state, prompts, blocks


def _one_at_a_time(m, lat, state, prompts, blocks, opts, seeds):
    outs = [m.sample(lat[j:j + 1], state[j:j + 1], [prompts[j]], opts, seeds[j],
                     None if blocks is None else [b for b in blocks[j]]) for j in range(len(seeds))]
    return (torch.cat([o["actions"] for o in outs]), [o["effective_steps"][0] for o in outs],
            [o["forward_passes"][0] for o in outs])


def _check_batch(m, opts, label):
    B = 4 if m.v.layout == "dreamzero" else 3
    lat, state, prompts, blocks = _batch(m, B)
    seeds = [11, 12, 13, 14][:B]
    out = m.sample(lat, state, prompts, opts, seeds, blocks)
    ref, eff, passes = _one_at_a_time(m, lat, state, prompts, blocks, opts, seeds)
    assert out["actions"].shape == ref.shape
    assert (out["actions"] - ref).abs().max().item() <= TOL, label
    assert out["effective_steps"] == eff and out["forward_passes"] == passes, label


def _at(level, steps=None):
    opts = infer_options(level)
    opts.steps = opts.steps or steps or (6 if opts.dit_cache else 3)  # the DiT cache needs > 4 steps to act
    return opts


@pytest.fixture(scope="module")
def models():
    return {n: random_model(n) for n in VARIANTS}


@pytest.mark.parametrize("name", VARIANTS)
def test_batch_equals_one_at_a_time(models, name):
    """Every declared level with its transforms as `Policy` applies them (int8 real; the compile
    levels run eager here, compiled in the slow test below)."""
    base = models[name]
    for lv in base.v.opt_levels:
        level = dataclasses.replace(REG.opt_level(lv), compile=False)
        m = copy.deepcopy(base)
        info = transform(m, level)
        assert info["precision"] == REG.opt_level(lv).precision
        _check_batch(m, _at(level), (name, lv))
    assert "O1-kvcache" in base.v.opt_levels


@pytest.mark.slow  # inductor compiles for minutes on a 2-core CPU
@pytest.mark.parametrize("name", ["fastwam", "dreamzero"])
def test_inductor_levels_batch_exactly(models, name):
    """O4, O5 (and O6 where declared) exactly as `Policy` builds them: inductor, warm-up, int8."""
    for lv in ("O4-compile", "O5-lowp", "O6-flash"):
        if lv not in models[name].v.opt_levels:
            continue
        m = copy.deepcopy(models[name])
        opts, info = prepare(m, REG.opt_level(lv), warm=False)
        assert info["compile_mode"] == "default"
        opts.steps = opts.steps or 6
        _check_batch(m, opts, (name, lv))


def test_int8_rows_are_their_own(models):
    """Each row of an int8 Linear is quantized with its own scale: a batch-mate ten times larger
    leaves a row's output bit for bit what it is alone (a per-tensor scale would coarsen it)."""
    net = quantize_int8(copy.deepcopy(models["fastwam"].net))
    lin = net.blocks[0].video.qkv
    assert not [n for n, mod in net.blocks.named_modules() if isinstance(mod, torch.nn.Linear)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, lin.in_features, generator=g) * torch.tensor([1.0, 10.0, 0.1])[:, None, None]
    with torch.no_grad():
        y = lin(x)
        for j in range(3):
            assert torch.equal(y[j:j + 1], lin(x[j:j + 1])), j
        ref = torch.nn.functional.linear(x, models["fastwam"].net.blocks[0].video.qkv.weight,
                                         models["fastwam"].net.blocks[0].video.qkv.bias)
    assert 0 < (y - ref).abs().max() <= 0.02 * ref.abs().max()  # quantized, and close


def test_dit_cache_decides_per_sample(models):
    """With a rule that skips on some samples and not others, each sample still matches its solo run."""
    m = models["dreamzero"]
    lat, state, prompts, blocks = _batch(m, 4, seed=3)
    opts = InferOptions(kv_cache=True, dit_cache={"always": 2, "rules": [[0.9, 2]]}, steps=8)
    seeds = [1, 2, 3, 4]
    out = m.sample(lat, state, prompts, opts, seeds, blocks)
    ref, eff, _ = _one_at_a_time(m, lat, state, prompts, blocks, opts, seeds)
    assert min(eff) < 8, eff  # the cache really skipped somewhere
    assert out["effective_steps"] == eff
    assert (out["actions"] - ref).abs().max().item() <= TOL


def test_noise_is_per_sample(models):
    """A sample's noise comes from its own seed: changing a batch-mate's seed leaves it unchanged."""
    m = models["fastwam"]
    lat, state, prompts, _ = _batch(m, 3)
    opts = InferOptions(steps=3)
    a = m.sample(lat, state, prompts, opts, [1, 2, 3])["actions"]
    b = m.sample(lat, state, prompts, opts, [1, 99, 3])["actions"]
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and not torch.allclose(a[1], b[1])


def test_forward_passes_count_cfg_and_prefill(models):
    """dreamzero (CFG, one loop): O0 = 2 passes a step; O1 = 2 a step + 2 prefills; O2 = 1 a step + 1 prefill."""
    m = models["dreamzero"]
    lat, state, prompts, blocks = _batch(m, 1)
    counts = {}
    for lv in ("O0-eager", "O1-kvcache", "O2-cfg-batch"):
        opts = infer_options(REG.opt_level(lv))
        opts.steps = 4
        o = m.sample(lat, state, prompts, opts, [0], blocks)
        counts[lv] = (o["effective_steps"][0], o["forward_passes"][0])
    assert counts == {"O0-eager": (4, 8), "O1-kvcache": (4, 10), "O2-cfg-batch": (4, 5)}


def _recorded_policy(model, spec, level):
    """The real `Policy`, keeping every episode's chunks (keyed by its first observation)."""
    from harness.policy.policy import Policy

    class Recorded(Policy):
        def infer_batch(self, observations, noise_seeds=None, states=None):
            chunks = super().infer_batch(observations, noise_seeds, states)
            for o, st, c in zip(observations, states, chunks):
                if not hasattr(st, "key"):
                    st.key = (o.instruction, o.state.tobytes())
                self.chunks.setdefault(st.key, []).append(c)
            return chunks

    p = Recorded(model, {"camera": spec.cameras[0]}, level, device="cpu")
    p.chunks = {}
    return p


def test_rollout_batches_across_workers_and_envs():
    """Dynamic batching in the evaluator, two environments per worker process: calls really run
    in batches, each record says at which size, and every episode's actions and record match
    one-at-a-time evaluation (a network whose heads are not zero, so a leak would show)."""
    import numpy as np

    from harness.config import ResolvedVariant, override, resolve_variant
    from harness.eval.rollout import episode_plan, run_episodes
    spec = dataclasses.replace(REG.suite("tabletop"), max_steps=16)
    rv = resolve_variant("fastwam")
    policy = _recorded_policy(random_model(ResolvedVariant(override(rv.variant, {"inference.steps": 3}), rv.backbone)),
                              spec, REG.opt_level("O1-kvcache"))
    plan = episode_plan(spec, 0, 1)
    runs, chunks = {}, {}
    for name, kw in (("one", dict(workers=1, max_batch=1)),
                     ("batched", dict(workers=2, envs_per_worker=2, max_batch=4, max_wait_ms=2000))):
        recs, policy.chunks = [], {}
        run_episodes(spec, plan, policy, recs.append, noise_seed=0, progress=False, **kw)
        runs[name], chunks[name] = {r["seed"]: r for r in recs}, policy.chunks
    assert all(b == 1 for r in runs["one"].values() for b in r["batch_size"])
    assert max(b for r in runs["batched"].values() for b in r["batch_size"]) >= 2
    assert chunks["one"].keys() == chunks["batched"].keys() and len(chunks["one"]) == len(plan)
    assert policy.model.net.action_out.weight.abs().min() > 0  # the actions are not just the noise
    for key, seq in chunks["one"].items():
        assert len(seq) == len(chunks["batched"][key])
        for a, b in zip(seq, chunks["batched"][key]):
            assert np.abs(a - b).max() <= TOL, key
    for seed, a in runs["one"].items():
        b = runs["batched"][seed]
        assert a["steps"] == b["steps"] and abs(a["progress"] - b["progress"]) < 1e-3 and b["error"] is None
        assert len(b["latency_ms"]) == len(b["batch_size"]) == len(b["forward_passes"]) == len(b["effective_steps"])
        assert b["effective_steps"] == a["effective_steps"] == [3] * len(a["effective_steps"])


def test_batch_size_is_in_the_cell_source_only_where_it_changes_episodes(models):
    """Sync batches give batch 1's actions, so batched and unbatched episodes pool in one cell;
    async ones do not (a batch's latency decides how many actions are stale): another cell."""
    from harness.eval.cell import policy_behaviour
    from harness.policy.policy import Policy
    p = Policy(models["fastwam"], {"camera": "front"}, REG.opt_level("O1-kvcache"), device="cpu", warm=False)
    assert policy_behaviour(p, "sync", 8) == policy_behaviour(p, "sync", 1) == policy_behaviour(p, "async", 1) == {}
    assert policy_behaviour(p, "async", 8) == {"max_batch": 8}
    assert policy_behaviour("random", "async", 8) == {}  # a reference row is never batched


def _slow_policy(model, seconds: float):
    """The real policy, plus a large model's latency (`seconds` more a call, counted in its latency)."""
    import time

    from harness.policy.policy import Policy

    class SlowPolicy(Policy):
        def infer_batch(self, *args):
            chunks = super().infer_batch(*args)
            time.sleep(seconds)
            self.last_latency_ms += 1000.0 * seconds
            for st in self.last_stats:
                st["latency_ms"] += 1000.0 * seconds
            return chunks

    return SlowPolicy(model, {"camera": "front"}, REG.opt_level("O1-kvcache"), device="cpu", warm=False)


def test_batcher_waits_for_the_environments_that_are_due(models):
    """Four environments in one worker process step one after another, so their observations come
    in a chunk's simulation apart. With a policy whose call takes a second, the driver waits for
    the ones that are due (up to one call's latency) instead of inferring the first alone: after
    the first call every batch holds every running environment (a 5 ms window alone gives 1, 3, 1, 3...)."""
    from harness.eval.rollout import episode_plan, run_episodes
    spec = dataclasses.replace(REG.suite("tabletop"), max_steps=24)  # three calls an episode
    policy = _slow_policy(models["fastwam"], 1.0)
    recs = []
    run_episodes(spec, episode_plan(spec, 0, 1), policy, recs.append, workers=1, envs_per_worker=4, max_batch=4,
                 max_wait_ms=5, noise_seed=0, progress=False)
    sizes = sorted(b for r in recs for b in r["batch_size"])
    assert len(recs) == 4 and sizes.count(4) >= 8 and sum(sizes) / len(sizes) >= 3.4, sizes


def test_async_execution_pays_the_wait_before_the_call(models, monkeypatch):
    """Async execution drops the actions a robot would have executed meanwhile: an observation that
    waits for another's call (here one call at a time, two environments) is that much later."""
    from harness.eval import rollout
    seen = []

    def stale_steps(latency_ms, control_hz):
        seen.append(latency_ms)
        return rollout.math.ceil(latency_ms / 1000 * control_hz - 1e-9)

    monkeypatch.setattr(rollout, "stale_steps", stale_steps)
    spec = dataclasses.replace(REG.suite("tabletop"), max_steps=24)
    policy = _slow_policy(models["fastwam"], 0.3)
    recs = []
    rollout.run_episodes(spec, rollout.episode_plan(spec, 0, 1, tasks=[0, 1]), policy, recs.append,
                         workers=1, envs_per_worker=2, max_batch=1, execution="async", noise_seed=0, progress=False)
    own = sum(ms for r in recs for ms in r["latency_ms"][1:])  # the first call of an episode is never late
    assert len(seen) == 4 and min(seen) >= 300, seen
    assert sum(seen) >= own + 600, (seen, own)  # the calls alternate: each observation waits for the other's


def test_a_suite_horizon_longer_than_the_chunk_runs_the_chunk_and_says_so(models, capsys):
    """A suite asking for more actions a call than the checkpoint's chunk holds (RoboTwin's 24 from
    the tiny preset's 8) executes the chunk between observations and says so once on stderr."""
    from harness.eval.rollout import episode_plan, run_episodes
    from harness.policy.policy import Policy
    spec = dataclasses.replace(REG.suite("tabletop"), max_steps=24, action_horizon=12)
    policy = Policy(models["fastwam"], {"camera": "front"}, REG.opt_level("O1-kvcache"), device="cpu", warm=False)
    recs = []
    run_episodes(spec, episode_plan(spec, 0, 1, tasks=[0]), policy, recs.append, workers=1, noise_seed=0,
                 progress=False)
    (rec,) = recs
    assert rec["steps"] == 24 and len(rec["latency_ms"]) == 3, rec  # 8 a call (12 would give 2)
    err = capsys.readouterr().err
    assert err.count("executes 12 actions a call; this checkpoint's chunk holds 8") == 1, err
