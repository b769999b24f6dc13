"""Optimization levels (variants/opt_levels.yaml) applied to a policy.

A level is data; this module turns it into `InferOptions` plus the model transforms it needs
(torch.compile, low precision), and says when a level does not apply to a variant. Compilation
happens in a warm-up call at load, so its cost is reported apart and never lands in a latency.
"""
from __future__ import annotations

import time

import torch

from harness.config import OptLevelSpec, Registry, VariantSpec, to_dict
from harness.errors import UserError
from harness.model.wam import InferOptions


def not_applicable(level: OptLevelSpec, variant: VariantSpec) -> str | None:
    """Why `level` is n/a for `variant` (None when it applies)."""
    if level.name not in variant.opt_levels:
        return f"{variant.name} declares levels {', '.join(variant.opt_levels)}"
    return None


def infer_options(level: OptLevelSpec) -> InferOptions:
    return InferOptions(kv_cache=level.kv_cache, cfg_batch=level.cfg_batch, cfg_parallel=level.cfg_parallel,
                        dit_cache=dict(level.dit_cache_rule or {"always": 2}) if level.dit_cache else None,
                        steps=level.steps, autocast="bf16" if level.precision == "bf16" else None)


def fp8_available(device: torch.device) -> str | None:
    """Why fp8 matmuls cannot run on `device` (None when they can: CUDA with compute capability >= 8.9)."""
    if device.type != "cuda":
        return f"fp8 needs a CUDA GPU with compute capability >= 8.9; this model runs on {device.type}"
    cap = torch.cuda.get_device_capability(device)
    return None if cap >= (8, 9) else f"fp8 needs compute capability >= 8.9, {torch.cuda.get_device_name(device)} has {cap}"


def quantize_int8(net: torch.nn.Module) -> torch.nn.Module:
    """int8 dynamic quantization of the nn.Linear layers of the transformer blocks, in place.

    Weights int8, activations quantized per call. The blocks hold nearly all FLOPs; the
    embeddings and output heads stay fp32 (the usual first/last-layer exception)."""
    import warnings
    with warnings.catch_warnings():  # torch.ao's eager quantization warns it is moving to torchao
        warnings.simplefilter("ignore")
        net.blocks = torch.ao.quantization.quantize_dynamic(net.blocks, {torch.nn.Linear}, dtype=torch.qint8)
    return net


def apply_transforms(model, level: OptLevelSpec, warm: bool = True) -> dict:
    """Low precision and compilation, in place; returns what was done, compile time apart.

    With `warm`, one warm-up call per context length runs here, so a compiled graph is built
    before any timed call (`compile_s` is that warm-up's wall time)."""
    device = next(model.parameters()).device
    info = {"precision": level.precision, "compile": level.compile, "compile_s": None}
    if level.precision == "int8":
        if device.type != "cpu":
            raise UserError(f"level {level.name}: int8 dynamic quantization runs on CPU only (model on {device})")
        model.net = quantize_int8(model.net)
    elif level.precision == "fp8":
        why = fp8_available(device)
        if why:
            raise UserError(f"level {level.name}: {why}")
        raise UserError(f"level {level.name}: fp8 is not implemented in this build")
    elif level.precision not in ("fp32", "bf16"):  # bf16 is autocast at call time (InferOptions)
        raise UserError(f"level {level.name}: unknown precision '{level.precision}' (fp32 | bf16 | int8 | fp8)")
    if level.compile:
        model.net = torch.compile(model.net, dynamic=True)
    if warm:
        t0 = time.perf_counter()
        try:
            warm_up(model, infer_options(level))
        except Exception as e:  # a compiler that fails here must not pass as the eager model
            raise UserError(f"level {level.name}: warm-up failed ({'torch.compile' if level.compile else 'eager'}): "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
        if level.compile:
            info["compile_s"] = time.perf_counter() - t0
    return info


def warm_up(model, opts: InferOptions) -> None:
    """One call per context shape the policy will meet (dreamzero: 0..K-1 observed blocks)."""
    g, c = model.tokens_per_frame, model.codec.channels
    lat = torch.zeros(1, 1, g, c)
    state = torch.zeros(1, model.state_size)
    ch = model.v.chunk
    counts = range(ch.chunks) if model.v.inference.procedure == "chunk_autoregressive" else [0]
    for n in counts:
        model.sample(lat, state, ["warm up"], opts, 0, [torch.zeros(1, ch.latent_frames * g, c)] * n)


def load_leveled_policy(checkpoint_path, level_name: str, registry: Registry | None = None):
    """-> (Policy at that level, config dict for the result). Errors if the level is n/a."""
    from harness.policy.policy import load_policy
    reg = registry or Registry()
    level = reg.opt_level(level_name)
    policy = load_policy(checkpoint_path, infer_options(level), level.name)
    why = not_applicable(level, policy.model.v)
    if why:
        raise UserError(f"level {level.name} does not apply to {policy.variant}: {why}")
    info = apply_transforms(policy.model, level)
    return policy, {"variant": to_dict(policy.model.v), "level": to_dict(level), "level_info": info}
