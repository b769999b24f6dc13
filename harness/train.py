"""Flow-matching training of any variant on a LeRobot-format dataset.

`wam-bench train --variant fastwam --dataset DIR [--out DIR] [--steps N]`. Re-running the same
command resumes from `<out>/last.safetensors`; Ctrl-C saves first. A NaN/inf loss stops the run
with the last good checkpoint kept.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from harness.policy import checkpoint
from harness.config import Registry, ResolvedVariant, override, resolve_variant
from harness.errors import UserError


@dataclass
class TrainResult:
    checkpoint: Path
    step: int
    final_loss: float
    samples_per_s: float
    resumed_from: int


def lr_at(step: int, total: int, base: float, warmup_frac: float) -> float:
    """Linear warm-up then cosine decay to 0."""
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def dataset_stats(data) -> dict:
    return {k: {"mean": np.asarray(data.stats[f][ "mean"], dtype=float).ravel().tolist(),
                "std": np.asarray(data.stats[f]["std"], dtype=float).ravel().tolist()}
            for k, f in (("action", "action"), ("state", "observation.state"))}


def make_sampler(rv: ResolvedVariant, data, camera: str):
    from harness.data.windows import WindowSampler
    ch = rv.variant.chunk
    return WindowSampler(data, camera=camera, actions=ch.chunks * ch.actions, frame_stride=ch.frame_stride,
                         future_frames=ch.chunks * ch.latent_frames, image_size=rv.backbone.codec.image_size)


def to_torch(batch: dict, device: str | torch.device = "cpu") -> dict:
    return {k: (torch.from_numpy(v).to(device) if isinstance(v, np.ndarray) else v) for k, v in batch.items()}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name}: no CUDA device here; use train.device=cpu or auto")
    return torch.device(name)


def train(rv: ResolvedVariant, dataset: str | Path, out: str | Path, *, camera: str | None = None,
          progress: bool = True, desc: str | None = None) -> TrainResult:
    from harness.data.lerobot import open_dataset
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ts = rv.variant.train
    data = open_dataset(dataset)
    camera = camera or data.camera_names[0]
    sampler = make_sampler(rv, data, camera)
    meta = {"config": rv.to_dict(), "config_hash": rv.hash, "stats": dataset_stats(data),
            "action_size": data.action_dim, "state_size": data.state_dim, "camera": camera,
            "dataset": str(Path(dataset).resolve()), "fps": data.fps}
    torch.manual_seed(ts.seed)
    model = checkpoint.build_model(meta)
    device = pick_device(ts.device)
    last = out / "last.safetensors"
    if not last.exists() and (rv.backbone.weights or rv.backbone.action_init != "random"):
        from harness.model.wan import apply_init  # pretrained video weights, interpolated action expert
        apply_init(model.net, rv.backbone.weights, rv.backbone.action_init)
    model.to(device)
    if ts.grad_checkpointing:
        model.net.enable_grad_checkpointing(True)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=ts.precision == "bf16" and device.type == "cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=ts.lr, betas=tuple(ts.betas), weight_decay=ts.weight_decay)
    start = 0
    if last.exists():
        sd, old_meta, opt_sd = checkpoint.load(last)
        if ResolvedVariant.from_dict(old_meta["config"]).hash != rv.hash:  # read as today's schema: retired keys dropped
            raise UserError(f"{out} holds a checkpoint of a different config ({old_meta.get('config_hash')} vs "
                            f"{rv.hash}); use another --out or delete it")
        model.load_state_dict(sd)
        if opt_sd is not None:
            opt.load_state_dict(opt_sd)
        start = int(old_meta["step"])
        meta["stats"] = old_meta["stats"]
    keep_losses_before(out / "loss.jsonl", start)
    log = (out / "loss.jsonl").open("a")
    total, bs = ts.steps, ts.batch_size
    model.train()
    loss_val, t0, done_samples = float("nan"), time.perf_counter(), 0
    bar = tqdm(range(start, total), initial=start, total=total, disable=not progress,
               desc=desc or f"train {rv.variant.name}", unit="step", dynamic_ncols=True)

    def save(step):
        checkpoint.save(last, model, {**meta, "step": step}, opt)

    step = start
    try:
        for step in bar:
            rng = np.random.default_rng([ts.seed, step])  # per-step streams: resume is exact
            gen = torch.Generator(device).manual_seed(ts.seed * 1_000_003 + step)
            batch = to_torch(sampler.sample(rng, bs), device)
            lr = lr_at(step, total, ts.lr, ts.warmup_frac)
            for g in opt.param_groups:
                g["lr"] = lr
            with autocast:
                losses = model.loss(batch, gen)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise UserError(f"training {rv.variant.name} diverged: loss is {loss.item()} at step {step}; "
                                f"the last good checkpoint is {last if last.exists() else 'none'}; lower train.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), ts.grad_clip)
            opt.step()
            loss_val = loss.item()
            done_samples += bs
            if step % ts.log_every == 0 or step == total - 1:
                rate = done_samples / (time.perf_counter() - t0)
                log.write(json.dumps({"step": step, "loss": loss_val, "loss_video": losses["loss_video"].item(),
                                      "loss_action": losses["loss_action"].item(), "lr": lr, "samples_per_s": rate}) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{loss_val:.3f}", sps=f"{rate:.0f}")
            if (step + 1) % ts.checkpoint_every == 0 and step + 1 < total:
                save(step + 1)
        step = total
    except KeyboardInterrupt:
        save(step)
        raise
    finally:
        bar.close()
        log.close()
    if start < total or not last.exists():
        save(total)
    elapsed = time.perf_counter() - t0
    result = TrainResult(last, total, loss_val, done_samples / elapsed if elapsed > 0 else 0.0, start)
    from harness.results.store import atomic_write_json
    atomic_write_json(out / "train.json", {"step": total, "final_loss": loss_val, "samples_per_s": result.samples_per_s,
                                           "resumed_from": start, "config_hash": rv.hash, "wall_s": elapsed})
    return result


def keep_losses_before(path: Path, step: int) -> None:
    """Drop loss records at or past `step`, the step training resumes from: they were logged after
    the checkpoint a crash fell back to, and the resumed run logs those steps again."""
    if not path.exists():
        return
    from harness.results.store import read_jsonl
    lines = [json.dumps(r) + "\n" for r in read_jsonl(path) if int(r.get("step", -1)) < step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(lines))
    tmp.replace(path)


def add_arguments(p):
    p.add_argument("--variant", required=True)
    p.add_argument("--dataset", required=True, help="LeRobot-format dataset folder")
    p.add_argument("--out", default=None, help="output folder (default runs/<variant>)")
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--backbone", default=None, help="override the variant's backbone preset")
    p.add_argument("--camera", default=None, help="dataset camera to train on (default: the first)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any variant field, e.g. --set train.lr=3e-4 (key-locked)")


def parse_sets(items: list[str]) -> dict:
    import yaml
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def main(args) -> int:
    rv = resolve_variant(args.variant, Registry(args.include_path), args.backbone)
    sets = parse_sets(args.set)
    if args.steps is not None:
        sets["train.steps"] = args.steps
    if sets:
        rv = ResolvedVariant(override(rv.variant, sets), rv.backbone)
    res = train(rv, args.dataset, args.out or f"runs/{rv.variant.name}", camera=args.camera)
    print(f"trained {rv.variant.name}: step {res.step}, loss {res.final_loss:.4f}, "
          f"{res.samples_per_s:.0f} samples/s -> {res.checkpoint}")
    return 0
