"""Masks are data: every variant's outputs depend exactly on the tokens its rule lets them see."""
import numpy as np
import pytest
import torch

from harness.model.backbone import Tokens
from harness.model.show import _training_labels
from harness.config import ConfigError, Registry, resolve_variant
from harness.model.masks import Labels, build_mask
from harness.model.wam import WorldActionModel

VARIANTS = Registry().names("variant")


def random_model(name):
    torch.manual_seed(0)
    m = WorldActionModel(resolve_variant(name), 4, 4)
    for p in m.parameters():  # the output heads start at zero (DiT init): make them informative
        if p.dim() > 1 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.1)
    return m.eval()


def forward_groups(m, labels, video, action, ctx):
    is_a = labels.group == "A"
    nv, na = int((~is_a).sum()), int(is_a.sum())
    vpos = torch.zeros(nv, 3, dtype=torch.long)
    vpos[:, 0] = torch.from_numpy(np.maximum(labels.frame[~is_a], 0))
    g = torch.Generator().manual_seed(0)  # fixed per-token σ: only the perturbed tokens differ
    ov, oa, _ = m.net(Tokens(video, vpos, torch.rand(1, nv, generator=g)),
                      Tokens(action, torch.arange(na), torch.rand(1, na, generator=g)),
                      ctx, m.mask(labels, labels))
    return ov, oa


def closure(mask: torch.Tensor) -> torch.Tensor:
    reach = mask.clone()
    while True:
        nxt = reach | ((reach.float() @ reach.float()) > 0)
        if torch.equal(nxt, reach):
            return reach
        reach = nxt


@pytest.mark.parametrize("name", VARIANTS)
def test_outputs_depend_only_on_visible_tokens(name):
    torch.manual_seed(1)
    m = random_model(name)
    labels = _training_labels(m)
    order = np.argsort(labels.group == "A", kind="stable")  # model order: video tokens, then actions
    labels = Labels(labels.group[order], labels.chunk[order], labels.frame[order])
    mask = m.mask(labels, labels)
    reach = closure(mask)
    is_a = labels.group == "A"
    video = torch.randn(1, int((~is_a).sum()), m.codec.channels)
    action = torch.randn(1, int(is_a.sum()), 4)
    ctx = m.context(["pick the red cube"], torch.zeros(1, 4))
    with torch.no_grad():
        base = forward_groups(m, labels, video, action, ctx)
        for g in dict.fromkeys(labels.group):
            sel = labels.group == g
            v2, a2 = video.clone(), action.clone()
            if g == "A":
                a2 += torch.randn_like(a2)
            else:
                v2[:, sel[~is_a]] += torch.randn_like(v2[:, sel[~is_a]])
            ov, oa = forward_groups(m, labels, v2, a2, ctx)
            diff = torch.cat([(ov - base[0]).norm(dim=-1), (oa - base[1]).norm(dim=-1)], dim=1)[0]  # per token
            blind = ~reach[:, torch.from_numpy(sel)].any(1)
            assert (float(diff[blind].max()) if blind.any() else 0.0) <= 1e-5, f"{name}: tokens blind to {g} changed"
            sees = mask[:, torch.from_numpy(sel)].any(1) & ~torch.from_numpy(sel)
            if sees.any():
                assert diff[sees].min() > 1e-6, f"{name}: tokens that see {g} did not change"


@pytest.mark.parametrize("name", VARIANTS)
def test_kv_prefill_equals_full_recompute(name):
    m = random_model(name)
    rv = m.v
    lat = torch.randn(1, 1, m.tokens_per_frame, m.codec.channels)
    blocks = [torch.randn(1, rv.chunk.latent_frames * m.tokens_per_frame, m.codec.channels)] if rv.layout == "dreamzero" else None
    from harness.model.wam import InferOptions
    outs = {}
    for kv in (False, True):
        for cb in (False, True):
            outs[(kv, cb)] = m.sample(lat, torch.zeros(1, 4), ["stack"], InferOptions(kv_cache=kv, cfg_batch=cb, steps=3),
                                      noise_seed=3, blocks=blocks)["actions"]
    for k, a in outs.items():
        assert torch.allclose(a, outs[(False, False)], atol=1e-5), f"{name} {k}"
    other = m.sample(lat + 1, torch.zeros(1, 4), ["stack"], InferOptions(steps=3), noise_seed=3, blocks=blocks)["actions"]
    assert (other - outs[(True, False)]).abs().max() > 1e-4  # the actions do read the frame


def test_fastwam_mask_table():
    """The exact Fast-WAM rule of DESIGN.md, group by group."""
    lab = Labels.cat([Labels.of("F0", 1, 0, 0), Labels.of("F+", 2, 0, np.array([1, 2])), Labels.of("A", 2)])
    m = build_mask(lab, lab, {"F0": ["F0"], "F+": ["F0", "F+"], "A": ["F0", "A"]}).int().tolist()
    assert m == [[1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 1, 1], [1, 0, 0, 1, 1]]


def test_dreamzero_window_and_chunk_causality():
    lab = Labels.cat([Labels.of("F0", 1, 0, 0)] + [Labels.of("C", 1, i, i) for i in (1, 2, 3)])
    m = build_mask(lab, lab, {"F0": ["F0"], "C": ["F0", "C:causal"]}, window=1)
    assert m[3].tolist() == [True, False, True, True]  # block 3 sees F0, blocks 2..3 (window 1), not block 1


def test_bad_mask_rules():
    lab = Labels.of("A", 2)
    with pytest.raises(ConfigError, match="unknown relation"):
        build_mask(lab, lab, {"A": ["A:sideways"]})
    with pytest.raises(ConfigError, match="no entry for token group"):
        build_mask(lab, lab, {"F0": ["F0"]})
