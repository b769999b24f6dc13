"""Token layouts: the refactor into classes kept every training loss bit for bit, and each
layout's answers (labels, procedures, history, cost, fake batch) agree with what the model does."""
import pytest
import torch

from harness.config import resolve_variant
from harness.model.wam import WorldActionModel

# (loss, loss_video, loss_action) for `fixed_batch` at seed 3, computed on commit 5e9007b (before
# the layouts moved into harness/model/layouts.py) with harness/model/wam.py's old `_loss`.
PINNED = {
    ("fastwam", "none"): (4.984269142150879, 2.683115005493164, 2.301154375076294),
    ("fastwam", "bell"): (4.907803058624268, 2.689185619354248, 2.2186174392700195),
    ("fastwam-joint", "none"): (4.967710494995117, 2.683115005493164, 2.2845957279205322),
    ("fastwam-joint", "bell"): (4.874217510223389, 2.689185619354248, 2.1850318908691406),
    ("fastwam-idm", "none"): (4.951488494873047, 2.683115005493164, 2.268373489379883),
    ("fastwam-idm", "bell"): (4.862293243408203, 2.689185619354248, 2.173107385635376),
    ("fastwam-no-cotrain", "none"): (2.301154375076294, 0.0, 2.301154375076294),
    ("fastwam-no-cotrain", "bell"): (2.2186174392700195, 0.0, 2.2186174392700195),
    ("dreamzero", "none"): (5.397016525268555, 2.6821839809417725, 2.714832305908203),
    ("dreamzero", "bell"): (5.603976249694824, 2.6817243099212646, 2.9222521781921387),
    ("dreamzero-flash", "none"): (5.378201484680176, 2.663506507873535, 2.7146947383880615),
    ("dreamzero-flash", "bell"): (5.570653915405273, 2.647951364517212, 2.9227025508880615),
}


def fixed_batch(rv, B=3, A=4, S=4):
    """A `WindowSampler`-shaped batch with padding in it (written out here, not by the code under test)."""
    ch, size = rv.variant.chunk, rv.backbone.codec.image_size
    F, H = ch.chunks * ch.latent_frames, ch.chunks * ch.actions
    g = torch.Generator().manual_seed(7)
    fp = torch.zeros(B, 1 + F, dtype=torch.bool)
    fp[1, -1] = True
    ap = torch.zeros(B, H, dtype=torch.bool)
    ap[1, -3:] = True
    return {"frames": torch.randint(0, 255, (B, 1 + F, size, size, 3), dtype=torch.uint8, generator=g),
            "frame_pad": fp, "actions": torch.randn(B, H, A, generator=g), "action_pad": ap,
            "state": torch.randn(B, S, generator=g), "task": ["pick the red cube", "stack", "open the drawer"]}


def seeded_model(rv):
    torch.manual_seed(0)
    m = WorldActionModel(rv, 4, 4)
    for p in m.parameters():  # the zero-initialised output heads would hide the video prediction
        if p.dim() > 1 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(1))
    return m


@pytest.mark.parametrize("name,weighting", sorted(PINNED))
def test_training_loss_unchanged_by_the_layout_refactor(name, weighting):
    rv = resolve_variant(name)
    rv.variant.loss.sigma_weighting = weighting
    out = seeded_model(rv).loss(fixed_batch(rv), torch.Generator().manual_seed(3))
    got = (out["loss"].item(), out["loss_video"].item(), out["loss_action"].item())
    assert got == pytest.approx(PINNED[(name, weighting)], abs=1e-6, rel=0)


def test_every_layout_is_one_registered_class_with_its_traits():
    from harness.config import LAYOUTS
    from harness.model.layouts import LAYOUT_CLASSES, Layout, register
    assert set(LAYOUT_CLASSES) == set(LAYOUTS)
    assert [n for n in LAYOUT_CLASSES if LAYOUT_CLASSES[n].needs_history] == ["dreamzero"]

    class Unlisted(Layout):
        name = "unlisted"
    with pytest.raises(TypeError, match="config.LAYOUTS"):
        register(Unlisted)


@pytest.mark.parametrize("name,cost", [("fastwam", 4.0), ("fastwam-joint", 4.0), ("fastwam-no-cotrain", 2.0),
                                       ("fastwam-idm", 7.0), ("dreamzero", 11.0), ("dreamzero-flash", 11.0)])
def test_cost_is_frames_plus_actions_over_8_of_the_training_sequence(name, cost):
    """The grid's queue order (`train_cost`) asks the layout; values as the grid's old formula gave."""
    from harness.scale.grid import GridOptions, train_cost
    rv = resolve_variant(name)
    m = WorldActionModel(rv, 4, 4)
    assert m.layout.cost(rv.variant) == cost == train_cost(GridOptions(variants=[name]), name, 0)
    labels = m.layout.labels(rv.variant, 1)  # one token a frame: the sequence's frames and actions
    assert (labels.group != "A").sum() + (labels.group == "A").sum() / 8 == cost


@pytest.mark.parametrize("name", ["fastwam-no-cotrain", "fastwam-idm", "dreamzero"])
def test_fake_batch_trains_and_its_sequence_matches_the_labels(name):
    rv = resolve_variant(name)
    m = seeded_model(rv)
    batch = m.layout.fake_batch(rv, 2, 4, 4)
    assert batch["frames"].dtype == torch.uint8 and len(batch["task"]) == 2
    loss = m.loss(batch, torch.Generator().manual_seed(0))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and m.net.action_out.weight.grad.abs().sum() > 0
    lat = m.codec.encode(batch["frames"])
    seq = m.layout.sequence(m, lat, torch.randn(lat.shape), ~batch["frame_pad"], None)
    video = seq.labels.group != "A"
    assert seq.video.x.shape[1] == video.sum() == seq.video.pos.shape[0] == seq.video.sigma.shape[1]
    assert seq.action_sigma.shape == (2, (~video).sum())
    clean = torch.from_numpy(seq.labels.group[video] == "F0") | torch.from_numpy(seq.labels.group[video] == "C")
    assert (seq.video.sigma[:, clean] == 0).all()  # clean context carries σ = 0 ...
    assert seq.video_target.shape[1] == seq.video_ok.shape[1] == seq.video_sigma.shape[1] \
        == len(range(*seq.video_scored.indices(seq.video.x.shape[1])))  # ... and only the noisy part is scored
