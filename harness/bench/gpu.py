"""`wam-bench bench gpu`: one training step and the inference latency of every variant at the
mid-size preset (`wan22-mid`), bf16 autocast, on a CUDA GPU.

Where there is no GPU it says so and reports nothing (exit 0): CPU numbers at this size would
mean nothing. `WAM_BENCH_GPU_DEVICE=cpu WAM_BENCH_GPU_BACKBONE=tiny` runs the same code on the
CPU at the tiny preset, which is how the tests check it. Timings are device-synchronised,
warm-up excluded; a variant that fails records its error in its row instead of stopping the rest.

It also checks the evaluation path on the GPU (`policy_on_device`): a checkpoint built with
`build_policy` on the device and on the CPU, one `infer` each on the same observation and noise
seed, actions equal within tolerance (figure `policy_device_max_abs_diff`).
"""
from __future__ import annotations

import gc
import os
import time

import numpy as np

ACTION, STATE = 7, 8  # LIBERO's action and state sizes


def measure(args) -> dict:
    import torch

    device = os.environ.get("WAM_BENCH_GPU_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        return {"figures": {"gpu_available": 0}, "rows": [],
                "notes": ["no CUDA GPU on this machine: `bench gpu` measures nothing here; "
                          "run it where torch.cuda.is_available() (`make bench-gpu` on a GPU node)"]}
    from harness.config import Registry

    reg = Registry(getattr(args, "include_path", None) or [])
    backbone = os.environ.get("WAM_BENCH_GPU_BACKBONE") or "wan22-mid"
    names = [n for n in (getattr(args, "variants", None) or "").split(",") if n] or reg.names("variant")
    quick = bool(getattr(args, "quick", False))
    rows = [_one(torch, reg, name, backbone, device, quick) for name in names]
    figures: dict = {"gpu_available": int(device.startswith("cuda"))}
    for r in rows:
        if r["error"] is None:
            figures[f"train_step_ms_{r['variant']}"] = r["train_step_ms"]
            figures[f"infer_ms_{r['variant']}"] = r["infer_ms_p50"]
    check = policy_on_device(device)
    rows.append(check)
    if check["error"] is None:
        figures["policy_device_max_abs_diff"] = check["max_abs_diff"]
        figures["policy_device_ok"] = int(check["ok"])
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    notes = [f"{backbone} on {gpu}, {'bf16 autocast' if device.startswith('cuda') else 'fp32'}, "
             f"batch {rows[0].get('batch', '-')}; inference: one call, default steps, K/V cache on"]
    return {"figures": figures, "rows": rows, "notes": notes}


def _sync(torch, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _one(torch, reg, name, backbone, device, quick) -> dict:
    from harness.config import resolve_variant
    from harness.model.wam import InferOptions, WorldActionModel

    cuda = device.startswith("cuda")
    batch_size = 8 if cuda else 2
    row = {"variant": name, "backbone": backbone, "device": device, "dtype": "bf16" if cuda else "fp32",
           "batch": batch_size, "params_M": None, "train_step_ms": None, "samples_per_s": None,
           "peak_mem_GB": None, "infer_ms_p50": None, "infer_ms_mean": None, "error": None}
    model = opt = None
    try:
        rv = resolve_variant(name, reg, backbone)
        # factory calls inside the WAM (noise, σ, positions) land on the device; generators are left
        # None for the same reason (a CPU generator cannot draw CUDA noise)
        with torch.device(device), torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=cuda):
            torch.manual_seed(0)
            model = WorldActionModel(rv, ACTION, STATE).to(device)
            row["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
            batch = model.layout.fake_batch(rv, batch_size, ACTION, STATE, device)
            warm, n = (1, 1) if quick else (2, 5)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            for i in range(warm + n):
                if i == warm:
                    _sync(torch, device)
                    t0 = time.perf_counter()
                loss = model.loss(batch)["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            _sync(torch, device)
            step = (time.perf_counter() - t0) / n
            row["train_step_ms"] = 1000 * step
            row["samples_per_s"] = batch_size / step
            if cuda:
                row["peak_mem_GB"] = torch.cuda.max_memory_allocated() / 2**30
            model.eval()
            lat = model.codec.encode(batch["frames"][:1, :1])
            ch = rv.variant.chunk
            blocks = None
            if model.layout.needs_history:
                blocks = [model.codec.encode(batch["frames"][:1, 1:1 + ch.latent_frames]).flatten(1, 2)]
            times = []
            for i in range(1 + (2 if quick else 10)):
                _sync(torch, device)
                t0 = time.perf_counter()
                model.sample(lat, batch["state"][:1], batch["task"][:1], InferOptions(kv_cache=True), blocks=blocks)
                _sync(torch, device)
                if i:  # the first call is warm-up
                    times.append(time.perf_counter() - t0)
            row["infer_ms_p50"] = 1000 * float(np.median(times))
            row["infer_ms_mean"] = 1000 * float(np.mean(times))
    except Exception as e:  # noqa: BLE001 - one variant's failure is a result, not the end of the bench
        row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        del model, opt
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return row


def policy_on_device(device: str, variants=("fastwam", "dreamzero"), level: str = "O1-kvcache") -> dict:
    """A policy built on `device` gives the CPU policy's actions: tiny random checkpoints of each
    variant, `build_policy` on both devices at `level` (fp32), one `infer` on the same observation
    and noise seed. The tolerance covers fp32 kernel differences, not a wrong device path."""
    import tempfile

    import torch

    from harness.config import Registry, resolve_variant
    from harness.model.wam import WorldActionModel
    from harness.policy import checkpoint
    from harness.policy.policy import build_policy
    from harness.suites.base import Observation

    row = {"variant": ",".join(variants), "check": f"policy on {device} vs cpu at {level}", "device": device,
           "max_abs_diff": None, "ok": None, "error": None}
    try:
        reg, diffs = Registry(), []
        with tempfile.TemporaryDirectory() as tmp:
            for name in variants:
                rv = resolve_variant(name, reg, "tiny")
                torch.manual_seed(0)
                model = WorldActionModel(rv, ACTION, STATE)
                for p in model.parameters():  # output heads start at zero: give them values
                    if p.dim() > 1 and p.abs().sum() == 0:
                        torch.nn.init.normal_(p, std=0.1)
                meta = {"config": rv.to_dict(), "config_hash": rv.hash, "stats": None, "action_size": ACTION,
                        "state_size": STATE, "camera": "front", "step": 0}
                path = checkpoint.save(f"{tmp}/{name}.safetensors", model, meta)
                s = rv.backbone.codec.image_size
                img = np.random.default_rng(0).integers(0, 256, (s, s, 3), dtype=np.uint8)
                obs = Observation(images={"front": img}, state=np.zeros(STATE, np.float32), instruction="stack the cubes")
                out = {}
                for dev in ("cpu", device):
                    policy = build_policy(path, level, registry=reg, device=dev)
                    out[dev] = policy.infer(obs, noise_seed=0)
                    assert isinstance(out[dev], np.ndarray) and str(policy.device).startswith(dev.split(":")[0])
                diffs.append(float(np.abs(out[device] - out["cpu"]).max()))
        row["max_abs_diff"] = max(diffs)
        row["ok"] = row["max_abs_diff"] < 1e-3
    except Exception as e:  # noqa: BLE001 - a failing check is a result of the bench
        row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return row
