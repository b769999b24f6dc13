"""Optimization levels: the exact ones give O0's actions, the lossy ones stay within a bound,
the DiT cache follows DreamZero's official rule, and n/a levels are refused."""

import numpy as np
import pytest
import torch
from test_masks import random_model

from harness.config import Registry
from harness.errors import UserError
from harness.policy.levels import Int8Linear, infer_options, not_applicable, prepare, quantize_int8
from harness.policy.policy import smooth_actions
from harness.model.wam import DitCache, InferOptions

torch.set_num_threads(1)
REG = Registry()
EXACT_ATOL = 1e-4  # fp32 reassociation only (batched / split / fused kernels)


def _inputs(m):
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 1, m.tokens_per_frame, m.codec.channels, generator=g)
    blocks = None
    if m.v.layout == "dreamzero":
        blocks = [torch.randn(1, m.v.chunk.latent_frames * m.tokens_per_frame, m.codec.channels, generator=g)]
    return lat, torch.randn(1, 4, generator=g), blocks


def _actions(m, opts, steps=4):
    lat, state, blocks = _inputs(m)
    opts.steps = steps
    return m.sample(lat, state, ["pick up the red cube"], opts, noise_seed=7, blocks=blocks)["actions"]


@pytest.fixture(scope="module")
def models():
    return {n: random_model(n) for n in ("fastwam", "fastwam-joint", "fastwam-idm", "dreamzero")}


@pytest.mark.parametrize("name", ["fastwam", "fastwam-joint", "fastwam-idm", "dreamzero"])
def test_exact_levels_match_O0(models, name):
    """O1 (K/V reuse), O2 (batched CFG) and CFG over two worker threads: O0's actions."""
    m = models[name]
    o0 = _actions(m, infer_options(REG.opt_level("O0-eager")))
    for opts in (infer_options(REG.opt_level("O1-kvcache")), infer_options(REG.opt_level("O2-cfg-batch")),
                 InferOptions(kv_cache=True, cfg_parallel=True)):
        assert torch.allclose(_actions(m, opts), o0, atol=EXACT_ATOL), (name, opts)
    assert m.v.inference.cfg_scale != 1.0 or name != "dreamzero"  # dreamzero really exercises CFG


def test_int8_and_bf16_within_bound(models):
    """Low precision changes the actions, but by less than 5% of their spread (normalized units)."""
    import copy
    m = models["dreamzero"]
    o1 = _actions(m, InferOptions())
    q = copy.deepcopy(m)
    q.net = quantize_int8(q.net)
    assert isinstance(q.net.blocks[0].video.qkv, Int8Linear)
    for model, opts in ((q, InferOptions()), (m, InferOptions(autocast="bf16"))):
        err = (_actions(model, opts) - o1).abs().max().item()
        assert 0 < err < 0.05 * o1.std().item() + 1e-3, (opts, err)


@pytest.mark.slow  # torch.compile takes minutes on a 2-core CPU: `make test-slow` runs it
def test_compile_matches_O0(models):
    import copy
    m = copy.deepcopy(models["fastwam"])
    o0 = _actions(m, InferOptions(kv_cache=False))
    level = REG.opt_level("O4-compile")
    opts, info = prepare(m, level)
    assert info["compile_s"] > 0 and info["compile_mode"] == "default"  # CPU: no CUDA graphs
    assert torch.allclose(_actions(m, opts), o0, atol=EXACT_ATOL)


def test_compile_mode_per_device():
    """O4 captures CUDA graphs on a GPU (reduce-overhead) and compiles in the default mode on CPU,
    as opt_levels.yaml says (the compiled numbers themselves: the slow test above)."""
    from harness.policy.levels import compile_mode
    assert compile_mode(torch.device("cuda")) == "reduce-overhead"
    assert compile_mode(torch.device("cpu")) == "default"
    assert "reduce-overhead" in REG.opt_level("O4-compile").description


def test_unknown_precision_is_refused(models):
    """fp8 is not offered (nothing here could test it); any precision outside the list is one line."""
    import copy
    import dataclasses
    level = dataclasses.replace(REG.opt_level("O5-lowp"), precision="fp8", compile=False)
    with pytest.raises(UserError, match="unknown precision 'fp8'"):
        prepare(copy.deepcopy(models["fastwam"]), level)
    assert all(lvl.precision != "fp8" for lvl in REG.opt_levels().values())


def test_levels_declared_per_variant():
    o2, o3, o6 = (REG.opt_level(n) for n in ("O2-cfg-batch", "O3-dit-cache", "O6-flash"))
    assert "fastwam declares" in not_applicable(o2, REG.variant("fastwam"))   # no CFG to batch
    assert not_applicable(o3, REG.variant("dreamzero-flash"))                 # one step: nothing to skip
    assert not_applicable(o6, REG.variant("dreamzero")) is None               # the Flash control
    assert not_applicable(o6, REG.variant("dreamzero-flash")) is None


# --------------------------------------------------------------------------- DiT cache rule

def _replay(cosines: list[float], steps: int = 16, rule: dict | None = None) -> list[int]:
    """Steps the cache computes when consecutive computed velocities have the given cosines."""
    cache = DitCache(rule or {"always": 2, "rules": [[0.95, 4], [0.93, 2]]}, steps)
    ran, v, k = [], torch.tensor([[1.0, 0.0]]), 0
    for i in range(steps):
        if i == 0 or cache.run(i):
            ran.append(i)
            if ran[1:]:  # rotate so cos(previous, this) = cosines[k]
                c = cosines[min(k, len(cosines) - 1)]
                k += 1
                s = np.sqrt(max(0.0, 1 - c * c))
                v = torch.tensor([[v[0, 0] * c - v[0, 1] * s, v[0, 0] * s + v[0, 1] * c]])
            cache.record(v)
    return ran


def test_dit_cache_high_similarity_skips_four():
    """16 -> 4 effective steps (the paper's figure): 0, 1, then skip 4, compute one, repeat."""
    assert _replay([0.99]) == [0, 1, 6, 11]


def test_dit_cache_medium_similarity_skips_two():
    assert _replay([0.94]) == [0, 1, 4, 7, 10, 13]


def test_dit_cache_low_similarity_computes_all():
    assert _replay([0.5]) == list(range(16))


def test_dit_cache_mixed_sequence():
    # cos(v0,v1)=0.94 -> skip 2,3; cos(v1,v4)=0.5 -> compute 5; cos(v4,v5)=0.99 -> skip 6..9; ...
    assert _replay([0.94, 0.5, 0.99, 0.2, 0.2, 0.2]) == [0, 1, 4, 5, 10, 11, 12, 13, 14, 15]


def test_dit_cache_configurable_and_short_loops():
    assert _replay([0.97], rule={"rules": [[0.99, 3]]}) == list(range(16))   # threshold not met
    assert _replay([0.999], rule={"rules": [[0.99, 3]]}) == [0, 1, 5, 9, 13]
    assert _replay([0.99], steps=4) == [0, 1, 2, 3]                           # official: <= 4 steps run all
    assert _replay([0.99], rule={"always": 3, "rules": [[0.95, 4]]}) == [0, 1, 2, 7, 12]


def test_dit_cache_static_schedule():
    assert _replay([0.0], rule={"schedule": "TTTFFFTFFFTFFTTT"}) == [0, 1, 2, 6, 10, 13, 14, 15]
    assert _replay([0.0], steps=5, rule={"schedule": [0, 3]}) == [0, 3]
    with pytest.raises(ValueError, match="step 0 computed"):
        DitCache({"schedule": "FT"}, 2)


def test_dit_cache_effective_steps_in_sample(models):
    """The model's reported effective steps are the cache's computed steps, and skipping changes the result."""
    m = models["dreamzero"]
    full = _actions(m, InferOptions(), steps=16)
    sched = InferOptions(dit_cache={"schedule": "TTTFFFTFFFTFFTTT"})
    lat, state, blocks = _inputs(m)
    out = m.sample(lat, state, ["pick up the red cube"], sched, noise_seed=7, blocks=blocks)
    assert out["effective_steps"] == [8]
    assert out["forward_passes"] == [2 + 2 * 8]  # two prefills, then conditional + unconditional per computed step
    assert not torch.allclose(out["actions"], full)


# --------------------------------------------------------------------------- smoothing

def test_smoothing_keeps_trends_and_removes_jitter():
    t = np.arange(16, dtype=np.float32)[:, None]
    ramp = np.concatenate([0.1 * t, 0.3 - 0.05 * t], axis=1)
    assert np.allclose(smooth_actions(ramp), ramp, atol=1e-5)                    # linear trends kept exactly
    jitter = ramp + np.where(np.arange(16) % 2, 0.2, -0.2)[:, None].astype(np.float32)
    assert np.abs(smooth_actions(jitter) - ramp).mean() < 0.5 * np.abs(jitter - ramp).mean()
    assert smooth_actions(ramp[:2]).shape == (2, 2)                               # too short: unchanged


def test_dit_cache_rule_inside_sample(models):
    """The cosine rule decides inside `sample`: with a threshold every similarity beats, steps are
    really skipped (the network runs fewer times) and `effective_steps` says how many ran; with one none
    beats, every step runs and the actions are the uncached ones."""
    m = models["dreamzero"]
    lat, state, blocks = _inputs(m)
    calls = []
    hook = m.net.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        def run(rules):
            calls.clear()
            opts = InferOptions(kv_cache=True, cfg_batch=True, steps=16,
                                dit_cache={"always": 2, "rules": rules, "min_steps": 5} if rules else None)
            out = m.sample(lat, state, ["pick up the red cube"], opts, noise_seed=7, blocks=blocks)
            assert out["forward_passes"][0] == len(calls)   # every network forward is counted
            return out, len(calls) - 1  # one batched prefill of the clean context, then one call per step
        plain, n_plain = run(None)
        skip, n_skip = run([[-1.0, 4]])    # cos > -1 always: compute 0, 1, then skip 4, compute 1, ...
        never, n_never = run([[1.5, 4]])   # cos > 1.5 never: every step computed
    finally:
        hook.remove()
    assert n_plain == plain["effective_steps"][0] == 16
    assert n_skip == skip["effective_steps"][0] == len([0, 1, 6, 11])
    assert not torch.allclose(skip["actions"], plain["actions"])
    assert n_never == never["effective_steps"][0] == 16 and torch.equal(never["actions"], plain["actions"])


def test_dit_cache_rule_comes_from_the_level_only():
    """opt_levels.yaml is the one source of the thresholds: a level that turns the cache on without
    a rule is refused, not run with numbers from elsewhere."""
    import dataclasses
    o3 = REG.opt_level("O3-dit-cache")
    assert infer_options(o3).dit_cache["rules"] == o3.dit_cache_rule["rules"]
    with pytest.raises(UserError, match="dit_cache needs dit_cache_rule"):
        infer_options(dataclasses.replace(o3, dit_cache_rule={}))


# --------------------------------------------------------------------------- building a policy

def _meta(m):
    return {"camera": "front", "action_size": m.action_size, "state_size": m.state_size, "config": m.rv.to_dict()}


def _obs(m):
    from harness.suites.base import Observation
    s = m.b.codec.image_size
    return Observation(images={"front": np.zeros((s, s, 3), np.uint8)}, state=np.zeros(4, np.float32),
                       instruction="stack the cubes")


def test_policy_on_the_meta_device_puts_model_and_inputs_there(models):
    """Model and inputs go to the policy's device (meta here: no GPU on this machine; `bench gpu`
    checks a real CUDA policy against the CPU one)."""
    import copy
    from harness.policy.policy import Policy
    m = copy.deepcopy(models["dreamzero"])
    p = Policy(m, _meta(m), REG.opt_level("O1-kvcache"), device="meta", warm=False)
    assert {t.device.type for t in p.model.parameters()} == {"meta"}
    assert {t.device.type for t in p.model.buffers()} == {"meta"}
    cur, state, blocks = p._inputs([_obs(m)], [p.new_state()])
    assert cur.device.type == "meta" and state.device.type == "meta" and blocks == [[]]
    assert p.config["device"] == "meta"


def test_policy_device_choice_and_errors(models, monkeypatch):
    import copy
    from harness.policy.policy import Policy, resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None).type == "cpu"
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="not a torch device"):
        resolve_device("gpu0")
    m = copy.deepcopy(models["dreamzero"])
    with pytest.raises(UserError, match="int8 dynamic quantization runs on CPU only"):
        Policy(m, _meta(m), REG.opt_level("O5-lowp"), device="meta", warm=False)
    with pytest.raises(UserError, match="does not apply to fastwam"):
        Policy(models["fastwam"], _meta(models["fastwam"]), REG.opt_level("O3-dit-cache"), warm=False)


def test_policy_on_cpu_returns_numpy_actions_and_records_its_config(models):
    import copy
    from harness.policy.policy import Policy
    m = copy.deepcopy(models["dreamzero"])
    p = Policy(m, _meta(m), REG.opt_level("O2-cfg-batch"), device="cpu", action_horizon=4)
    a = p.infer(_obs(m), noise_seed=0)
    assert isinstance(a, np.ndarray) and a.shape == (m.v.chunk.actions, 4) and p.last_latency_ms > 0
    cfg = p.config
    assert cfg["level"]["name"] == "O2-cfg-batch" and cfg["action_horizon"] == 4 and cfg["device"] == "cpu"
    assert "compile_s" not in str(cfg)  # what building did is `level_info`, never part of the hashed config


def test_level_overrides_are_key_locked():
    from harness.policy.levels import with_overrides
    o3 = REG.opt_level("O3-dit-cache")
    assert with_overrides(o3, {"steps": 6, "dit_cache_rule.rules": [[0.9, 4]]}).steps == 6
    with pytest.raises(UserError, match="unknown key"):
        with_overrides(o3, {"stepz": 6})
