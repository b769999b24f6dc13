"""Batched inference: a batch gives each sample what it gets alone (its own noise generator,
its own observed chunks, its own DiT-cache decisions), for every variant and the levels it declares."""

import pytest
import torch
from test_masks import random_model

from harness.config import Registry
from harness.model.wam import InferOptions
from harness.policy.levels import infer_options

REG = Registry()
TOL = 1e-5
VARIANTS = ["fastwam", "fastwam-joint", "fastwam-idm", "fastwam-no-cotrain", "dreamzero", "dreamzero-flash"]
CHEAP = ["O0-eager", "O1-kvcache", "O2-cfg-batch", "O3-dit-cache", "O6-flash"]  # O4 compiles, O5 is lossy


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


@pytest.fixture(scope="module")
def models():
    return {n: random_model(n) for n in VARIANTS}


@pytest.mark.parametrize("name", VARIANTS)
def test_batch_equals_one_at_a_time(models, name):
    m = models[name]
    B = 4 if m.v.layout == "dreamzero" else 3
    lat, state, prompts, blocks = _batch(m, B)
    seeds = [11, 12, 13, 14][:B]
    levels = [lv for lv in CHEAP if lv in m.v.opt_levels]
    assert "O1-kvcache" in levels
    for lv in levels:
        opts = infer_options(REG.opt_level(lv))
        opts.steps = opts.steps or (6 if opts.dit_cache else 3)  # the DiT cache needs > 4 steps to act
        out = m.sample(lat, state, prompts, opts, seeds, blocks)
        ref, eff, passes = _one_at_a_time(m, lat, state, prompts, blocks, opts, seeds)
        assert out["actions"].shape == ref.shape
        assert (out["actions"] - ref).abs().max().item() <= TOL, (name, lv)
        assert out["effective_steps"] == eff and out["forward_passes"] == passes, (name, lv)


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


def test_rollout_batches_across_workers_and_envs(tmp_path):
    """Dynamic batching in the evaluator, two environments per worker process: calls really run
    in batches, each record says at which size, and the episodes match one-at-a-time evaluation."""
    import dataclasses

    from harness.eval.rollout import episode_plan, run_episodes
    from harness.policy.policy import Policy
    from harness.config import ResolvedVariant, override, resolve_variant
    from harness.model.wam import WorldActionModel
    spec = dataclasses.replace(REG.suite("tabletop"), max_steps=16)
    rv = resolve_variant("fastwam")
    rv = ResolvedVariant(override(rv.variant, {"inference.steps": 3}), rv.backbone)
    torch.manual_seed(0)
    policy = Policy(WorldActionModel(rv, spec.action_dim, spec.state_dim).eval(), {"camera": "front"},
                    REG.opt_level("O1-kvcache"), device="cpu")
    plan = episode_plan(spec, 0, 1)
    runs = {}
    for name, kw in (("one", dict(workers=1, max_batch=1)),
                     ("batched", dict(workers=2, envs_per_worker=2, max_batch=4, max_wait_ms=2000))):
        recs = []
        run_episodes(spec, plan, policy, recs.append, noise_seed=0, progress=False, **kw)
        runs[name] = {r["seed"]: r for r in recs}
    assert all(b == 1 for r in runs["one"].values() for b in r["batch_size"])
    assert max(b for r in runs["batched"].values() for b in r["batch_size"]) >= 2
    for seed, a in runs["one"].items():
        b = runs["batched"][seed]
        assert a["steps"] == b["steps"] and abs(a["progress"] - b["progress"]) < 1e-3 and b["error"] is None
        assert len(b["latency_ms"]) == len(b["batch_size"]) == len(b["forward_passes"]) == len(b["effective_steps"])
        assert b["effective_steps"] == a["effective_steps"] == [3] * len(a["effective_steps"])
