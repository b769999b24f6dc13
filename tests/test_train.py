"""Training for real on a small LeRobot dataset the tests write: overfit, checkpoints, resume."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import like_a_terminal
import torch

from conftest import write_toy_dataset
from harness.policy import checkpoint
from harness.cli import main as cli
from harness.config import Registry, ResolvedVariant, override, resolve_variant
from harness.data.lerobot import open_dataset
from harness.errors import UserError
from harness.policy.policy import load_policy
from harness.suites.base import Observation
from harness.train import make_sampler, to_torch, train
from harness.model.wam import WorldActionModel

VARIANTS = Registry().names("variant")


def small(rv, **sets):
    return ResolvedVariant(override(rv.variant, {"train.log_every": 1, **sets}), rv.backbone)


@pytest.mark.parametrize("name", VARIANTS)
def test_each_variant_overfits_one_batch(name, toy_dataset):
    """Same batch, same noise every step: the loss must fall at least 10x."""
    rv = small(resolve_variant(name), **{"train.text_dropout": 0.0})
    data = open_dataset(toy_dataset)
    batch = to_torch(make_sampler(rv, data, "front").sample(np.random.default_rng(0), 4))
    torch.manual_seed(0)
    model = WorldActionModel(rv, data.action_dim, data.state_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(120):
        loss = model.loss(batch, torch.Generator().manual_seed(0))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < losses[0] / 10, f"{name}: {losses[0]:.3f} -> {min(losses[-5:]):.3f}"


def test_checkpoint_round_trip_gives_identical_actions(toy_dataset, tmp_path):
    rv = small(resolve_variant("fastwam"), **{"train.steps": 6})
    res = train(rv, toy_dataset, tmp_path / "run", progress=False)
    ep = open_dataset(toy_dataset).episode(0)
    obs = Observation({"front": ep.images["front"][3]}, ep.state[3], ep.task)
    p1, p2 = load_policy(res.checkpoint), load_policy(res.checkpoint)
    a1, a2 = p1.infer(obs, noise_seed=5), p2.infer(obs, noise_seed=5)
    assert a1.shape == (8, 4) and np.isfinite(a1).all()
    np.testing.assert_array_equal(a1, a2)
    _, meta, opt = checkpoint.load(res.checkpoint)
    assert meta["step"] == 6 and meta["config_hash"] == rv.hash and opt["state"]
    assert len(meta["stats"]["action"]["mean"]) == 4


def test_interrupted_training_resumes_exactly(toy_dataset, tmp_path):
    """Ctrl-C mid-run saves; re-running continues from that step and ends where an
    uninterrupted run ends (per-step RNG streams + optimizer state in the checkpoint)."""
    cmd = [sys.executable, "-m", "harness.cli", "train", "--variant", "fastwam", "--dataset", str(toy_dataset),
           "--steps", "40", "--set", "train.checkpoint_every=5", "--out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd + [str(tmp_path / "a")], env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=like_a_terminal)
    ckpt = tmp_path / "a" / "last.safetensors"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err[-500:]
    step_at_stop = checkpoint.load(ckpt)[1]["step"]
    assert 0 < step_at_stop < 40
    subprocess.run(cmd + [str(tmp_path / "a")], env=env, check=True, capture_output=True)
    info = json.loads((tmp_path / "a" / "train.json").read_text())
    assert info["resumed_from"] == step_at_stop and info["step"] == 40
    subprocess.run(cmd + [str(tmp_path / "b")], env=env, check=True, capture_output=True)
    wa, wb = checkpoint.load(tmp_path / "a" / "last.safetensors")[0], checkpoint.load(tmp_path / "b" / "last.safetensors")[0]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_killed_training_logs_each_step_once(toy_dataset, tmp_path):
    """A run killed after its last checkpoint had logged steps past it; the resumed run logs those
    steps again, so the old entries are dropped: loss.jsonl holds every step once, in order, and
    train.json is whole (written atomically, no temp file left)."""
    out = tmp_path / "k"
    cmd = [sys.executable, "-m", "harness.cli", "train", "--variant", "fastwam", "--dataset", str(toy_dataset),
           "--steps", "30", "--set", "train.checkpoint_every=5", "--set", "train.log_every=1", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    loss = out / "loss.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (out / "last.safetensors").exists() and loss.exists() and len(loss.read_text().splitlines()) >= 7:
            proc.send_signal(signal.SIGKILL)  # no chance to save: the checkpoint is behind the log
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    logged = len(loss.read_text().splitlines())
    assert logged > checkpoint.load(out / "last.safetensors")[1]["step"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    assert [json.loads(x)["step"] for x in loss.read_text().splitlines()] == list(range(30))
    assert json.loads((out / "train.json").read_text())["step"] == 30
    assert not [f.name for f in out.iterdir() if f.name.endswith(".tmp")]


def test_nan_loss_stops_with_clear_error(tmp_path):
    ds = write_toy_dataset(tmp_path / "nan", nan=True)
    rv = small(resolve_variant("fastwam"), **{"train.steps": 3})
    with pytest.raises(UserError, match="diverged: loss is nan at step 0"):
        train(rv, ds, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_corrupt_checkpoint_and_missing_dataset_errors(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        load_policy(bad)
    assert cli(["train", "--variant", "fastwam", "--dataset", str(tmp_path / "nope")]) == 2
    assert "not a LeRobot dataset" in capsys.readouterr().err


def test_yaml_typo_and_unknown_variant(tmp_path, capsys):
    (tmp_path / "mine.yaml").write_text("include: %s\nlayout: fastwam\nloss: {vidoe: 1.0}\n"
                                        % (Registry().path("variant", "fastwam")))
    assert cli(["--include-path", str(tmp_path), "variants", "show", "mine"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'vidoe'" in err and "did you mean video" in err and "mine.yaml" in err
    assert cli(["variants", "show", "fastwm"]) == 2
    assert "did you mean fastwam" in capsys.readouterr().err


def test_user_variant_from_include_path(tmp_path, capsys):
    (tmp_path / "fastwam-deep.yaml").write_text("include: %s\ntrain: {steps: 7}\n" % Registry().path("variant", "fastwam"))
    assert cli(["--include-path", str(tmp_path), "variants"]) == 0
    assert "fastwam-deep" in capsys.readouterr().out
    assert cli(["--include-path", str(tmp_path), "variants", "show", "fastwam-deep"]) == 0
    assert "steps: 7" in capsys.readouterr().out
