"""The one training loop: flow matching of any variant on LeRobot-format datasets.

One dataset or several (a model for several suites: harness/data/mix.py checks they can share a
model, picks the frame its cameras compose into and pools their normalization statistics); the
checkpoint records the frame, the suites and the datasets.

Re-running the same training resumes from `<out>/last.safetensors`; Ctrl-C saves first. A NaN/inf
loss stops the run with the last good checkpoint kept. The same loop runs as one rank of many
(harness/train/ranks.py): those runs save sharded checkpoints under `<out>/ckpt/` while training
and the single file at the end.
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
from harness.config import ResolvedVariant
from harness.errors import UserError
from harness.train.ranks import (Dist, StepBatches, batches, complete_checkpoints, device_for, noise_generator, recompute,
                                 trains_in_bf16)


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


def make_sampler(rv: ResolvedVariant, data, cameras: str | list[str], compose: str = "horizontal"):
    """Training windows of `data` (one LeRobotData or a list) for variant `rv`: its chunk sizes, and
    frames of `cameras` composed as `compose` at the backbone's tile size."""
    from harness.data.windows import WindowSampler
    from harness.model.frame import Frame
    ch = rv.variant.chunk
    frame = Frame((cameras,) if isinstance(cameras, str) else tuple(cameras), compose, rv.backbone.codec.image_size)
    return WindowSampler(data, frame=frame, actions=ch.chunks * ch.actions, frame_stride=ch.frame_stride,
                         future_frames=ch.chunks * ch.latent_frames)


def to_torch(batch: dict, device: str | torch.device = "cpu") -> dict:
    return {k: (torch.from_numpy(v).to(device) if isinstance(v, np.ndarray) else v) for k, v in batch.items()}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name}: no CUDA device here; use train.device=cpu or auto")
    return torch.device(name)


class _State:
    """A state dict dressed as a module/optimizer, for `checkpoint.save` of a gathered state."""

    def __init__(self, sd: dict):
        self.sd = sd

    def state_dict(self) -> dict:
        return self.sd


def train(rv: ResolvedVariant, datasets: str | Path | list, out: str | Path, *, cameras: list[str] | None = None,
          compose: str | None = None, progress: bool = True, desc: str | None = None, dist=None) -> TrainResult:
    """The training loop, on one process or as one rank of many (`dist`: a `ranks.Dist`), on one
    dataset folder or a list of them; `cameras`/`compose` override the frame the datasets record."""
    from harness.data.lerobot import dataset_identity, same_data
    from harness.data.mix import open_training_data
    d = dist or Dist()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d.record_pid(out)
    ts = rv.variant.train
    td = open_training_data(datasets, rv.backbone.codec.image_size, cameras, compose)
    if not d.main:
        d.barrier()  # rank 0 decodes the windows into the shared cache first; the others read it
    sampler = make_sampler(rv, td.datas, td.frame.cameras, td.frame.compose)
    if d.main:
        d.barrier()
    meta = {"config": rv.to_dict(), "config_hash": rv.hash, "stats": td.stats(),
            "action_size": td.action_dim, "state_size": td.state_dim, **td.frame.to_meta(),
            "suites": td.suites, "datasets": dataset_identity(td.paths), "fps": td.datas[0].fps}
    torch.manual_seed(ts.seed)
    model = checkpoint.build_model(meta)
    device = pick_device(device_for(d, ts.device))
    last = out / "last.safetensors"
    # resume from the newest of: the single-file checkpoint, the newest complete sharded one
    sharded = complete_checkpoints(out)[-1:]
    single = checkpoint.load(last) if last.exists() else None
    use_sharded = bool(sharded) and (single is None or sharded[0][0] > int(single[1]["step"]))
    old_meta = json.loads((sharded[0][1] / "meta.json").read_text()) if use_sharded else (single[1] if single else None)
    if old_meta is not None and ResolvedVariant.from_dict(old_meta["config"]).hash != rv.hash:  # today's schema
        raise UserError(f"{out} holds a checkpoint of a different config ({old_meta.get('config_hash')} vs "
                        f"{rv.hash}); use another --out or delete it")
    if old_meta is not None and checkpoint.frame(old_meta) != td.frame:
        raise UserError(f"{out} holds a checkpoint that observes {checkpoint.frame(old_meta).describe()}, not "
                        f"{td.frame.describe()}; use another --out, or the cameras it was started with")
    if old_meta is not None and not (same_data(old_meta["datasets"], meta["datasets"]) if "datasets" in old_meta
                                     else old_meta.get("dataset") in td.paths):  # before identities
        raise UserError(f"{out} holds a checkpoint trained on other demonstrations "
                        f"({old_meta.get('dataset') or [d['path'] for d in old_meta['datasets']]}, not {td.paths}); "
                        "use another --out or delete it")
    if old_meta is None and (rv.backbone.weights or rv.backbone.action_init != "random"):
        from harness.model.wan import apply_init  # pretrained video weights, interpolated action expert
        apply_init(model.net, rv.backbone.weights, rv.backbone.action_init)
    shards = int(old_meta.get("shards", 1)) if old_meta else (d.shards or d.world)
    if old_meta and d.shards and d.shards != shards:
        raise UserError(f"{out} was started with --shards {shards}; resume it with that (or a new --out)")
    meta["shards"] = shards
    mine = d.my_shards(shards)
    model.to(device)
    if recompute(rv, d.strategy, d.world):
        model.net.enable_grad_checkpointing(True)
    names = [n for n, _ in model.named_parameters()]
    bf16 = trains_in_bf16(rv, device.type)
    net = d.wrap(model, bf16=bf16, device=device)  # the module whose forward is the loss
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=bf16)
    # fused: one kernel for every parameter (on CPU the default per-tensor loop was ~15% of a tiny
    # step); FSDP2's sharded DTensors keep the default implementation
    fused = not (d.active and d.strategy == "fsdp")
    opt = torch.optim.AdamW(model.parameters(), lr=ts.lr, betas=tuple(ts.betas), weight_decay=ts.weight_decay,
                            fused=fused or None)
    start = 0
    if use_sharded:
        start = int(d.load_sharded(sharded[0][1], model, opt)["step"])
    elif single is not None:
        d.load_full(model, opt, single[0], single[2], names)
        start = int(single[1]["step"])
    if old_meta is not None:
        meta["stats"] = old_meta["stats"]
    d.precompute(model, sampler, sampler.tasks)  # T5 prompts / VAE latents once, split over ranks
    if d.main:
        keep_losses_before(out / "loss.jsonl", start)   # a resumed run logs each step once
    log = (out / "loss.jsonl").open("a") if d.main else None
    total, bs = ts.steps, ts.batch_size
    model.train()
    loss_val, t0, done_samples = float("nan"), time.perf_counter(), 0
    bar = tqdm(range(start, total), initial=start, total=total, disable=not (progress and d.main),
               desc=desc or f"train {rv.variant.name}", unit="step", dynamic_ncols=True)
    loader = batches(StepBatches(sampler, ts.seed, bs, shards, mine), start, total, d.loader_workers,
                     pin=device.type == "cuda")

    def save(step):
        if d.active:
            d.save_sharded(out, step, model, opt, meta)
        else:
            checkpoint.save(last, model, {**meta, "step": step}, opt)

    step = finished = start  # finished: steps whose update is in the weights (what an interrupt saves)
    try:
        for step, micro in zip(bar, loader):
            lr = lr_at(step, total, ts.lr, ts.warmup_frac)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            parts = torch.zeros(3, device=device)  # loss, video, action: mean over this step's shards
            for j, (m, b) in enumerate(micro):
                with d.sync_grads(net, last=j == len(micro) - 1):
                    with autocast:
                        losses = net(to_torch(b, device), noise_generator(ts.seed, step, m, device))
                    (losses["loss"] / len(micro)).backward()
                parts += torch.stack([losses["loss"].detach().float(), losses["loss_video"].float(),
                                      losses["loss_action"].float()]) / len(micro)
            parts = d.mean(parts)  # a NaN on any rank reaches every rank: all stop on the same step
            loss_val = parts[0].item()
            if not math.isfinite(loss_val):
                good = [p for _, p in complete_checkpoints(out)] + ([last] if last.exists() else [])
                raise UserError(f"training {rv.variant.name} diverged: loss is {loss_val} at step {step}; "
                                f"the last good checkpoint is {good[-1] if good else 'none'}; lower train.lr")
            torch.nn.utils.clip_grad_norm_(model.parameters(), ts.grad_clip)
            opt.step()
            finished = step + 1
            done_samples += bs
            if d.main and (step % ts.log_every == 0 or step == total - 1):
                wall = time.perf_counter() - t0  # seconds since this start's first step began
                rate = done_samples / wall
                log.write(json.dumps({"step": step, "loss": loss_val, "loss_video": parts[1].item(),
                                      "loss_action": parts[2].item(), "lr": lr, "samples_per_s": rate,
                                      "wall_s": wall}) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{loss_val:.3f}", sps=f"{rate:.0f}")
            if (step + 1) % ts.checkpoint_every == 0 and step + 1 < total:
                save(step + 1)
        step = total
    except KeyboardInterrupt:
        if not d.active:  # a distributed run resumes from its last sharded checkpoint
            save(finished)  # not `step`: after opt.step() the weights already hold that step's update
        raise
    finally:
        bar.close()
        if log:
            log.close()
    if start < total or not last.exists():
        model_sd, optim_sd = d.full_state(model, opt, names)
        if d.main:
            checkpoint.save(last, _State(model_sd), {**meta, "step": total}, _State(optim_sd))
        d.finish(out)
    elapsed = time.perf_counter() - t0
    result = TrainResult(last, total, loss_val, done_samples / elapsed if elapsed > 0 else 0.0, start)
    if d.main:
        from harness.results.store import atomic_write_json
        atomic_write_json(out / "train.json", {"step": total, "final_loss": loss_val, "samples_per_s": result.samples_per_s,
                                               "resumed_from": start, "config_hash": rv.hash, "wall_s": elapsed,
                                               "suites": td.suites, "frame": td.frame.describe(),
                                               "workers": d.world, "shards": shards, "datasets": meta["datasets"]})
    d.barrier()
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
