"""Optimization levels (variants/opt_levels.yaml): the one level type is `OptLevelSpec`.

A level is data. This module derives from it the only two things inference needs: the per-call
`InferOptions` (`infer_options`) and the model transforms (`transform`: int8, torch.compile),
and says when a level does not apply to a variant. `Policy` applies both at construction
(harness/policy/policy.py), so every command builds a policy at a level the same way.
"""
from __future__ import annotations

import time

import torch

from harness.config import ConfigError, OptLevelSpec, VariantSpec, override
from harness.errors import UserError
from harness.model.wam import InferOptions

PRECISIONS = ("fp32", "bf16", "int8")


def not_applicable(level: OptLevelSpec, variant: VariantSpec) -> str | None:
    """Why `level` is n/a for `variant` (None when it applies)."""
    if level.name not in variant.opt_levels:
        return f"{variant.name} declares levels {', '.join(variant.opt_levels)}"
    return None


def with_overrides(level: OptLevelSpec, overrides: dict | None) -> OptLevelSpec:
    """The level with dotted fields replaced (`{"steps": 4, "dit_cache_rule.rules": [[0.9, 4]]}`),
    key-locked like every config; a sweep's trial is its base level with overrides."""
    if not overrides:
        return level
    try:
        return override(level, overrides)
    except ConfigError as e:
        raise UserError(f"level {level.name}: {e}") from None


def infer_options(level: OptLevelSpec) -> InferOptions:
    """The per-call options a level switches on (the DiT-cache rule comes from the level alone).

    int8 runs each sample of a batch through the network alone (`per_sample`): a row-wise scale
    is not enough, because fp32 kernels round a row differently at another batch size (MKL's
    sgemm at 4 rows vs 12) and one ulp before a quantizer can move a rounding step, ~1e-3 in the
    actions. Alone, a sample's call is bit for bit its batch-1 call."""
    rule = None
    if level.dit_cache:
        rule = dict(level.dit_cache_rule or {})
        if not (rule.get("rules") or rule.get("schedule")):
            raise UserError(f"level {level.name}: dit_cache needs dit_cache_rule with rules or schedule "
                            "(see variants/opt_levels.yaml)")
    return InferOptions(kv_cache=level.kv_cache, cfg_batch=level.cfg_batch, cfg_parallel=level.cfg_parallel,
                        dit_cache=rule, steps=level.steps, autocast="bf16" if level.precision == "bf16" else None,
                        per_sample=level.precision == "int8")


def check(level: OptLevelSpec, device: torch.device) -> None:
    """Refuse a level that cannot run on `device`, before any weights are loaded."""
    if level.precision not in PRECISIONS:
        raise UserError(f"level {level.name}: unknown precision '{level.precision}' ({' | '.join(PRECISIONS)})")
    if level.precision == "int8" and device.type != "cpu":
        raise UserError(f"level {level.name}: int8 dynamic quantization runs on CPU only (asked for {device.type}); "
                        "use --device cpu or another level")


RECOMPILE_LIMIT = 128


def compile_mode(device: torch.device) -> str:
    """CUDA graphs on a GPU (`reduce-overhead`: one graph replay per call, no launch overhead);
    the default inductor mode on CPU, where there are no graphs to capture."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def compile_net(net: torch.nn.Module, mode: str = "default", backend: str = "inductor") -> torch.nn.Module:
    """torch.compile with dynamic shapes and room for every graph the net needs. Every model in a
    process shares the net's code objects, each with a graph per (prefill or denoise, batch 1 or
    more, context length): dynamo's default of 8 per code object is passed as soon as a process
    holds more than one model (the latency bench holds dozens), and it would fall back to eager.
    The set is bounded, and warm-up builds it before any timed call."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(net, dynamic=True, mode=mode, backend=backend)


class Int8Linear(torch.nn.Module):
    """An nn.Linear in int8: weights per output channel, activations per row (token) with the
    row's own dynamic scale, int32 accumulation (`torch._int_mm`), fp32 out.

    A row's output is a function of that row alone, so a batch-mate never moves its scale (torch.ao's
    dynamic quantization takes one scale for the whole tensor, i.e. the whole batch; a batch equal
    to batch 1 also needs each sample alone, `infer_options`). It is one traceable op chain:
    torch.compile keeps a block in one graph and fuses the quantization (torch.ao's modules broke
    the graph at every Linear: O5 ran 2.2x slower compiled, tiny fastwam on CPU)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(1).clamp(min=1e-12) / 127
        self.register_buffer("weight_t", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        scale = rows.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
        q = torch.round(rows / scale).clamp(-127, 127).to(torch.int8)
        y = torch._int_mm(q, self.weight_t).float() * (scale * self.weight_scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def quantize_int8(net: torch.nn.Module) -> torch.nn.Module:
    """int8 of the nn.Linear layers of the transformer blocks (`Int8Linear`), in place.

    The blocks hold nearly all FLOPs; the embeddings and output heads stay fp32 (the usual
    first/last-layer exception)."""
    def swap(module):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, Int8Linear(child))
            else:
                swap(child)
    swap(net.blocks)
    return net


def transform(model, level: OptLevelSpec) -> dict:
    """Low precision and compilation of `model` (already on its device), in place; returns what
    was done. bf16 is autocast at call time (`InferOptions.autocast`), not a transform."""
    device = next(model.parameters()).device
    check(level, device)
    if level.precision == "int8":
        model.net = quantize_int8(model.net)
    mode = None
    if level.compile:
        mode = compile_mode(device)
        model.net = compile_net(model.net, mode)
    return {"precision": level.precision, "compile": level.compile, "compile_mode": mode}


def warm_up(model, opts: InferOptions) -> None:
    """One call per context shape the policy will meet (dreamzero: 0..K-1 observed blocks), on
    the model's device: compiled graphs are built and lazy state initialised before any timed call."""
    device = next(model.parameters()).device
    g, c = model.tokens_per_frame, model.codec.channels
    lat = torch.zeros(1, 1, g, c, device=device)
    state = torch.zeros(1, model.state_size, device=device)
    ch = model.v.chunk
    counts = range(ch.chunks) if model.v.inference.procedure == "chunk_autoregressive" else [0]
    for n in counts:
        model.sample(lat, state, ["warm up"], opts, 0, [torch.zeros(1, ch.latent_frames * g, c, device=device)] * n)



def prepare(model, level: OptLevelSpec, warm: bool = True) -> tuple[InferOptions, dict]:
    """Apply `level` to `model` (on its device), in place: transforms, then with `warm` one untimed
    warm-up call per context shape, so compilation never lands in a latency (`compile_s` is that
    warm-up's wall time). -> (per-call options, what was done). `Policy` and the latency bench use it."""
    opts = infer_options(level)
    info = transform(model, level)
    info["compile_s"] = None
    if warm:
        t0 = time.perf_counter()
        try:
            warm_up(model, opts)
        except Exception as e:  # a compiler that fails here must not pass as the eager model
            device = next(model.parameters()).device
            raise UserError(f"level {level.name}: warm-up failed ({'torch.compile' if level.compile else 'eager'} "
                            f"on {device}): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
        if level.compile:
            info["compile_s"] = time.perf_counter() - t0
    return opts, info
