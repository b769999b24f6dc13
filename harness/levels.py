"""Optimization levels (variants/opt_levels.yaml) applied to a policy.

A level is data; this module turns it into `InferOptions` plus the model transforms it needs
(torch.compile, low precision), and says when a level does not apply to a variant.
"""
from __future__ import annotations

import time

import torch

from harness.config import OptLevelSpec, Registry, VariantSpec, to_dict
from harness.errors import UserError
from harness.wam import InferOptions


def not_applicable(level: OptLevelSpec, variant: VariantSpec) -> str | None:
    """Why `level` is n/a for `variant` (None when it applies)."""
    if level.name not in variant.opt_levels:
        return f"{variant.name} declares levels {', '.join(variant.opt_levels)}"
    return None


def infer_options(level: OptLevelSpec) -> InferOptions:
    return InferOptions(kv_cache=level.kv_cache, cfg_batch=level.cfg_batch,
                        dit_cache=dict(level.dit_cache_rule) if level.dit_cache else None, steps=level.steps)


def apply_transforms(model, level: OptLevelSpec) -> dict:
    """Low precision and compilation, in place; returns what was done (compile time apart)."""
    info = {"precision": level.precision, "compile_s": None}
    if level.precision == "int8":
        model.net = torch.ao.quantization.quantize_dynamic(model.net, {torch.nn.Linear}, dtype=torch.qint8)
    elif level.precision == "bf16":
        model.net = model.net.to(torch.bfloat16)
    elif level.precision not in ("fp32",):
        raise UserError(f"level {level.name}: precision '{level.precision}' is not available on this device")
    if level.compile:
        t0 = time.perf_counter()
        model.net = torch.compile(model.net, dynamic=True)
        info["compile_s"] = time.perf_counter() - t0  # lazy: the real cost lands in the warm-up call
    return info


def load_leveled_policy(checkpoint_path, level_name: str, registry: Registry | None = None):
    """-> (Policy at that level, config dict for the result). Errors if the level is n/a."""
    from harness.policy import load_policy
    reg = registry or Registry()
    level = reg.opt_level(level_name)
    policy = load_policy(checkpoint_path, infer_options(level), level.name)
    why = not_applicable(level, policy.model.v)
    if why:
        raise UserError(f"level {level.name} does not apply to {policy.variant}: {why}")
    info = apply_transforms(policy.model, level)
    return policy, {"variant": to_dict(policy.model.v), "level": to_dict(level), "level_info": info}
