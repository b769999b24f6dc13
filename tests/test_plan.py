"""`wam-bench plan`: memory per device, FLOPs per sample, wall time, and a clear 'does not fit'."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.cli import main as cli
from harness.config import resolve_variant
from harness.model.wam import WorldActionModel
from harness.scale.plan import make_plan


def test_fastwam_on_wan22_5b_fits_on_8x80(capsys):
    assert cli(["plan", "--variant", "fastwam", "--backbone", "wan22-5b", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "FSDP" in out and "fits:" in out and "samples/s" in out and "EasyWAM" in out
    p = make_plan(resolve_variant("fastwam", None, "wan22-5b"), 8)
    assert 6e9 < p.params < 7e9  # Wan2.2-5B video expert + the 1024-wide action expert
    assert p.mem["params"] == pytest.approx(4 * p.params / 8 / 1e9)  # fp32 master weights sharded 8 ways
    assert p.mem["optim"] == pytest.approx(8 * p.params / 8 / 1e9)


def test_one_80gb_gpu_does_not_fit_adamw_and_says_what_would(capsys):
    assert cli(["plan", "--variant", "fastwam", "--backbone", "wan22-5b", "--gpus", "1", "--gpu-mem", "80"]) == 0
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out
    assert "FSDP over 2 devices" in out and "CPU offload" in out and "8-bit Adam" in out
    rv = resolve_variant("fastwam", None, "wan22-5b")
    assert not make_plan(rv, 1, 80).fits
    assert make_plan(rv, 1, 80, offload=True).fits and make_plan(rv, 2, 80).fits  # what it suggested does fit


def test_ddp_replicates_and_more_devices_are_faster():
    rv = resolve_variant("fastwam", None, "small")
    one, four = make_plan(rv, 1, strategy="ddp"), make_plan(rv, 4, strategy="ddp")
    assert four.mem["optim"] == one.mem["optim"]          # DDP: every device holds everything
    assert four.samples_per_s == pytest.approx(4 * one.samples_per_s)
    assert four.wall_h == pytest.approx(one.wall_h / 4)


@pytest.mark.parametrize("name", ["fastwam", "dreamzero", "fastwam-idm"])
def test_analytic_flops_match_torchs_flop_counter(name):
    """The plan's forward FLOPs per sample agree with FlopCounterMode on a real forward."""
    rv = resolve_variant(name)
    torch.manual_seed(0)
    model = WorldActionModel(rv, 7, 8)
    with FlopCounterMode(display=False) as fc:
        model.loss(model.layout.fake_batch(rv, 2, 7, 8), torch.Generator().manual_seed(0))
    measured = fc.get_total_flops() / 2
    assert 0.8 < measured / make_plan(rv, 1).flops_fwd < 1.05


def test_bad_plan_arguments_are_one_line(capsys):
    assert cli(["plan", "--variant", "fastwam", "--gpus", "0"]) == 2
    assert "--gpus must be >= 1" in capsys.readouterr().err
    assert cli(["plan", "--variant", "fastwam", "--gpus", "2", "--strategy", "zero3"]) == 2
    assert "--strategy 'zero3'" in capsys.readouterr().err
