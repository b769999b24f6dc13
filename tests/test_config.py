"""Loading a config checks every enum-like field at once, in one line naming the file, the key
and the choices; removed keys say why in a YAML and are dropped from an old checkpoint."""
import subprocess
import sys

import pytest
import torch

from harness import cli
from harness.config import (LAYOUTS, SPECS, PROCEDURES, ConfigError, Registry, ResolvedVariant, SuiteSpec,
                            VariantSpec, from_dict, load_yaml, override, resolve_variant)

BASE = SPECS / "variants" / "fastwam.yaml"


def write_variant(tmp_path, body: str, name: str = "bad"):
    (tmp_path / f"{name}.yaml").write_text(f"include: {BASE}\n{body}\n")
    return tmp_path / f"{name}.yaml"


@pytest.mark.parametrize("body,match", [
    ("layout: fastwam2", r"bad\.yaml: layout 'fastwam2' is not one of fastwam \| idm \| dreamzero; did you mean fastwam\?"),
    ("inference: {procedure: prefill}", r"bad\.yaml\.inference: procedure 'prefill' is not one of prefill_action \| joint"),
    ("inference: {procedure: chunk_autoregressive}",
     r"bad\.yaml: inference\.procedure 'chunk_autoregressive' cannot sample layout 'fastwam'; it accepts prefill_action \| joint"),
    ("loss: {sigma_weighting: belll}", r"bad\.yaml\.loss: sigma_weighting 'belll' is not one of none \| bell; did you mean bell\?"),
    ("train: {precision: fp16}", r"bad\.yaml\.train: precision 'fp16' is not one of auto \| fp32 \| bf16"),
    ("train: {device: gpu0}", r"bad\.yaml\.train: device 'gpu0' is not one of auto \| cpu \| cuda \| cuda:N"),
    ("sigma: {mode: per_chunk}", r"bad\.yaml\.sigma: key 'mode' was removed \(which tokens share a σ is chosen by the layout\)"),
    ("flash_trained: true", r"bad\.yaml: key 'flash_trained' was removed"),
])
def test_bad_variant_fields_fail_at_load_naming_file_key_and_choices(tmp_path, body, match):
    write_variant(tmp_path, body)
    with pytest.raises(ConfigError, match=match):
        Registry([tmp_path]).variant("bad")


@pytest.mark.parametrize("body", ["layout: fastwam2", "inference: {procedure: joint_ar}", "loss: {sigma_weighting: belll}"])
def test_cli_variants_show_bad_is_one_line_and_exit_2(tmp_path, capsys, body):
    write_variant(tmp_path, body)
    assert cli.main(["--include-path", str(tmp_path), "variants", "show", "bad"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.yaml" in err and "is not one of" in err, err


def test_cli_threads_sets_torch_and_openmp_threads_and_refuses_zero(capsys, monkeypatch):
    """`wam-bench --threads N`: on a busy 2-core machine torch's default threads trained 16x slower
    than one. The test process runs at 1 (conftest), so 3 shows the flag took effect."""
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    try:
        assert cli.main(["--threads", "3", "variants"]) == 0
        assert torch.get_num_threads() == 3
        import os
        assert os.environ["OMP_NUM_THREADS"] == "3" == os.environ["MKL_NUM_THREADS"]
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
    assert cli.main(["--threads", "0", "variants"]) == 2
    assert capsys.readouterr().err.strip() == "wam-bench: error: --threads must be at least 1, got 0"


@pytest.mark.parametrize("body,match", [
    ("codec: {kind: vae}", r"\.codec: kind 'vae' is not one of pixel \| wan_vae"),
    ("text: {kind: clip}", r"\.text: kind 'clip' is not one of hashed \| t5"),
    ("action_init: copy", r": action_init 'copy' is not one of random \| interpolate"),
])
def test_bad_backbone_fields_fail_at_load(tmp_path, body, match):
    (tmp_path / "variants" / "backbones").mkdir(parents=True)
    (tmp_path / "variants" / "backbones" / "mine.yaml").write_text(f"include: {SPECS / 'variants/backbones/tiny.yaml'}\n{body}\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml" + match):
        Registry([tmp_path]).backbone("mine")


def test_overrides_and_levels_are_checked_too(tmp_path):
    with pytest.raises(ConfigError, match=r"train: device 'cuda:x'"):
        override(resolve_variant("fastwam").variant, {"train.device": "cuda:x"})
    assert override(resolve_variant("fastwam").variant, {"train.device": "cuda:1"}).train.device == "cuda:1"
    (tmp_path / "opt_levels.yaml").write_text("levels:\n  O9-mine: {precision: int4}\n")
    with pytest.raises(ConfigError, match=r"opt_levels.yaml:O9-mine: precision 'int4' is not one of fp32 \| bf16 \| int8"):
        Registry([tmp_path]).opt_levels()


def test_every_procedure_belongs_to_one_layout_and_every_shipped_variant_loads():
    assert len(PROCEDURES) == len(set(PROCEDURES))
    reg = Registry()
    for name in reg.names("variant"):
        v = reg.variant(name)
        assert v.inference.procedure in LAYOUTS[v.layout].procedures
    for name in reg.names("suite"):
        reg.suite(name)


def test_suite_seeds_is_gone_with_a_reason(tmp_path):
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "mine.yaml").write_text(f"include: {SPECS / 'suites/tabletop.yaml'}\nseeds: [7]\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: key 'seeds' was removed \(a cell's seed"):
        Registry([tmp_path]).suite("mine")
    assert "seeds" not in SuiteSpec.__dataclass_fields__


def test_dataclass_defaults_equal_base_yaml():
    """_base.yaml states the shared defaults; the dataclasses must not drift from it."""
    base = from_dict(VariantSpec, load_yaml(SPECS / "variants" / "_base.yaml"), "_base.yaml")
    assert base == VariantSpec()


def test_loading_a_config_does_not_import_torch():
    code = ("import sys; from harness.config import Registry, resolve_variant; r = Registry(); "
            "[resolve_variant(n, r) for n in r.names('variant')]; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_old_checkpoint_with_removed_keys_still_loads(tmp_path):
    """A checkpoint written before sigma.mode and flash_trained went: its config still rebuilds the model."""
    from harness.policy import checkpoint
    from harness.policy.policy import load_policy
    from harness.model.wam import WorldActionModel
    rv = resolve_variant("dreamzero-flash")
    old = rv.to_dict()
    old["variant"]["flash_trained"] = True
    old["variant"]["sigma"]["mode"] = "per_chunk"
    with pytest.raises(ConfigError, match="was removed"):  # the strict loader alone refuses them ...
        from_dict(VariantSpec, old["variant"])
    torch.manual_seed(0)
    model = WorldActionModel(rv, 4, 4)
    meta = {"config": old, "action_size": 4, "state_size": 4, "stats": {}, "camera": "front"}
    path = checkpoint.save(tmp_path / "old.safetensors", model, meta)
    policy = load_policy(path)  # ... the checkpoint path drops them
    assert policy.model.rv == ResolvedVariant.from_dict(old) == rv
    assert all(torch.equal(a, b) for a, b in zip(policy.model.state_dict().values(), model.state_dict().values()))
    assert policy.needs_history


def test_training_dir_from_before_the_removed_keys_resumes_without_retraining(toy_dataset, tmp_path):
    """A finished train cell whose checkpoint (and hash) still hold sigma.mode is the same config:
    `train` finds it done instead of refusing it as another config, and leaves the weights alone."""
    from harness.policy import checkpoint
    from harness.train import train
    rv = resolve_variant("fastwam")
    rv = ResolvedVariant(override(rv.variant, {"train.steps": 2, "train.batch_size": 2}), rv.backbone)
    train(rv, toy_dataset, tmp_path, progress=False)
    sd, meta, opt = checkpoint.load(tmp_path / "last.safetensors")
    meta["config"]["variant"]["sigma"]["mode"] = "independent"
    meta["config_hash"] = "0123456789abcdef"  # as the old schema hashed it
    model = checkpoint.build_model(meta, sd)
    checkpoint.save(tmp_path / "last.safetensors", model, meta)
    before = (tmp_path / "last.safetensors").read_bytes()
    res = train(rv, toy_dataset, tmp_path, progress=False)
    assert res.resumed_from == 2 and (tmp_path / "last.safetensors").read_bytes() == before
