"""A World Action Model = the shared backbone + a variant spec. One class for every variant.

The variant's `layout` (harness/model/layouts.py) builds the training sequence — which token
groups it holds, their σ, what is scored —, `mask` says how they may attend, `sigma` how noise
is drawn, `loss` how the two losses combine, and `inference.procedure` how actions are sampled.

Inference options (`InferOptions`) carry the optimization level: K/V reuse of the clean
context, batched CFG, DiT caching, step count.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.model import flow
from harness.model.backbone import MoTDiT, Tokens, make_codec
from harness.config import ResolvedVariant
from harness.errors import UserError
from harness.model.layouts import layout
from harness.model.masks import Labels, build_mask


@dataclass
class InferOptions:
    """What an optimization level switches on for one inference call."""
    kv_cache: bool = True        # encode the clean context once per call and reuse its K/V
    cfg_batch: bool = False      # conditional + unconditional in one batched forward
    cfg_parallel: bool = False   # conditional and unconditional on two workers (threads) at once
    dit_cache: dict | None = None  # opt_levels.yaml's dit_cache_rule: {"always", "rules"} or {"schedule": "TTTFFF..."}
    steps: int | None = None     # override the variant's denoising steps
    autocast: str | None = None  # "bf16": run the network under torch.autocast (weights stay fp32)
    per_sample: bool = False     # run each sample of a batch through the network alone (int8: levels.infer_options)


class DitCache:
    """DreamZero's DiT caching, as its official `should_run_model`: one decision per step, for
    one sample (`sample` keeps one cache per sample, so a batch-mate never moves a decision).

    The first `always` (2) computed steps build a history; a pending skip countdown is honoured
    (the step after a skip is computed); otherwise the cosine similarity of the sample's last
    two computed CFG-combined video velocities picks the first rule it exceeds and
    skips that many steps starting now, reusing the last velocities. Loops shorter than
    `min_steps` (official: more than 4 steps) always compute. A static `schedule` (a "T/F"
    string or a list of step indices to compute) replaces the rule, like the official
    `dit_step_mask`.
    """

    def __init__(self, rule: dict | None, steps: int):
        rule = dict(rule or {})
        unknown = set(rule) - {"always", "rules", "min_steps", "schedule"}
        if unknown:
            raise ValueError(f"dit_cache: unknown keys {sorted(unknown)} (always, rules, min_steps, schedule)")
        self.always = int(rule.get("always", 2))
        self.rules = [(float(t), int(n)) for t, n in rule.get("rules", ())]  # from opt_levels.yaml
        self.enabled = bool(rule) and steps >= int(rule.get("min_steps", 5))
        self.schedule = None
        if "schedule" in rule and rule["schedule"] is not None:
            sch = rule["schedule"]
            mask = [c == "T" for c in sch] if isinstance(sch, str) else [i in set(sch) for i in range(steps)]
            if len(mask) != steps or not mask[0]:
                raise ValueError(f"dit_cache schedule {sch!r}: needs {steps} entries and step 0 computed")
            self.schedule = mask
        self.history: list[torch.Tensor] = []
        self.computed = 0
        self.countdown = 0
        self.similarities: list[float] = []

    def run(self, step: int) -> bool:
        """Whether step `step` calls the network (False: reuse the last velocities)."""
        if not self.enabled:
            return True
        if self.schedule is not None:
            return self.schedule[step]
        if self.computed < max(2, self.always):
            return True
        if self.countdown > 1:
            self.countdown -= 1
            return False
        if self.countdown == 1:
            self.countdown = 0
            return True
        cos = F.cosine_similarity(self.history[-1], self.history[-2], dim=1).mean().item()
        self.similarities.append(cos)
        for threshold, skip in self.rules:
            if cos > threshold:
                self.countdown = skip
                return False
        return True

    def record(self, v: torch.Tensor) -> None:
        """Keep a computed (CFG-combined) video velocity; the last two decide the next skip."""
        self.history = (self.history + [v.detach().flatten(1).float()])[-2:]
        self.computed += 1


_POOL: ThreadPoolExecutor | None = None


def _cfg_pool() -> ThreadPoolExecutor:
    """One extra worker thread for the unconditional pass (torch ops release the GIL)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(1, thread_name_prefix="cfg-uncond")
    return _POOL


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def normalizer(stats: dict, size: int, mode: str = "mean_std") -> tuple[list[float], list[float]]:
    """(center, scale) so that (x - center) / scale is the model's input: the mean and std
    (`mean_std`), or the midpoint and half-range, mapping [min, max] to [-1, 1] (`min_max`).
    Without stats: the identity."""
    if not stats:
        return [0.0] * size, [1.0] * size
    if mode == "min_max":
        if "min" not in stats or "max" not in stats:
            raise UserError("train.normalization min_max needs the datasets' min and max statistics; "
                            "this checkpoint or dataset has only mean and std (use mean_std)")
        lo, hi = (np.asarray(stats[k], dtype=np.float64).ravel() for k in ("min", "max"))
        return ((hi + lo) / 2).tolist(), ((hi - lo) / 2).tolist()
    return (np.asarray(stats["mean"], dtype=np.float64).ravel().tolist(),
            np.asarray(stats["std"], dtype=np.float64).ravel().tolist())


class WorldActionModel(nn.Module):
    def __init__(self, rv: ResolvedVariant, action_size: int, state_size: int, stats: dict | None = None,
                 frame_size: tuple[int, int] | None = None):
        """`frame_size`: (height, width) pixels of a video frame (`Frame.shape`, harness/model/frame.py:
        several camera tiles); None is one square camera tile of the codec's `image_size`."""
        super().__init__()
        self.rv, self.v, self.b = rv, rv.variant, rv.backbone
        self.layout = layout(self.v.layout)   # the training sequence, labels, cost (model/layouts.py)
        self.codec = make_codec(self.b, frame_size)
        self.net = MoTDiT(self.b, self.codec.channels, action_size, state_size)
        self.action_size, self.state_size = action_size, state_size
        stats = stats or {}
        for key, size in (("action", action_size), ("state", state_size)):
            center, scale = normalizer(stats.get(key, {}), size, self.v.train.normalization)
            # named mean/std since the first checkpoints; they hold the center and scale of `normalizer`
            self.register_buffer(f"{key}_mean", torch.tensor(center, dtype=torch.float32))
            self.register_buffer(f"{key}_std", torch.tensor(scale, dtype=torch.float32).clamp_min(1e-3))

    # ------------------------------------------------------------------ normalisation
    def norm_action(self, a):
        return (a - self.action_mean) / self.action_std

    def denorm_action(self, a):
        return a * self.action_std + self.action_mean

    def norm_state(self, s):
        return (s - self.state_mean) / self.state_std

    # ------------------------------------------------------------------ layout pieces
    @property
    def tokens_per_frame(self) -> int:
        """Latent tokens of one video frame (all its camera tiles): its grid's height x width."""
        return self.codec.tokens

    def video_labels(self, group: str, frames: list[int], chunk: int = 0) -> Labels:
        return Labels.frames(group, frames, self.tokens_per_frame, chunk)

    def action_labels(self, chunk: int = 0, n: int | None = None) -> Labels:
        return Labels.of("A", n or self.v.chunk.actions, chunk)

    def mask(self, q: Labels, k: Labels) -> torch.Tensor:
        return build_mask(q, k, self.v.mask, self.v.chunk.window)

    def context(self, prompts: list[str | None], state: torch.Tensor) -> torch.Tensor:
        ids = self.net.text.tokenize(prompts).to(state.device)
        return self.net.context(ids, self.norm_state(state))

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        """Flow-matching losses for one batch from `WindowSampler` (tensors), per the variant.
        Tensors made here land on the batch's device (the generator must live there too)."""
        with torch.device(batch["actions"].device):
            return self._loss(batch, generator)

    forward = loss  # so DDP/FSDP wrappers see the training computation

    def _loss(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        v = self.v
        lat = self.codec.encode(batch["frames"])               # (B, 1+F, g, C): g tokens a frame
        act = self.norm_action(batch["actions"])               # (B, K·H, A)
        prompts = [None if torch.rand((), generator=generator) < v.train.text_dropout else t for t in batch["task"]]
        ctx = self.context(prompts, batch["state"])
        eps_v = torch.randn(lat.shape, generator=generator)
        eps_a = torch.randn(act.shape, generator=generator)
        seq = self.layout.sequence(self, lat, eps_v, ~batch["frame_pad"], generator)
        if len(seq.labels) != seq.video.x.shape[1] + act.shape[1]:
            raise ValueError(f"{v.name}: batch holds {act.shape[1]} actions and {lat.shape[1]} frames; "
                             f"layout '{v.layout}' expects {len(seq.labels)} tokens in all")
        sa = seq.action_sigma
        noisy_a = flow.add_noise(act, sa[..., None], eps_a)
        out_v, out_a, _ = self.net(seq.video, Tokens(noisy_a, torch.arange(act.shape[1]), sa), ctx,
                                   self.mask(seq.labels, seq.labels))
        # the loss itself is the same for every layout: σ-weighted MSE on velocities over valid tokens
        w_a = flow.loss_weight(sa, v.loss.sigma_weighting) * (~batch["action_pad"]).float()
        loss_a = ((out_a - flow.velocity(act, eps_a)) ** 2).mean(-1).mul(w_a).sum() / w_a.sum().clamp_min(1)
        if seq.video_target.shape[1] and v.loss.video > 0:
            w_v = flow.loss_weight(seq.video_sigma, v.loss.sigma_weighting) * seq.video_ok
            loss_v = ((out_v[:, seq.video_scored] - seq.video_target) ** 2).mean(-1).mul(w_v).sum() / w_v.sum().clamp_min(1)
        else:
            loss_v = torch.zeros(())
        total = v.loss.video * loss_v + v.loss.action * loss_a
        return {"loss": total, "loss_video": loss_v.detach(), "loss_action": loss_a.detach()}

    # ------------------------------------------------------------------ inference
    def _net(self, video, action, ctx, q_labels, prefix, return_kv=False):
        """Forward on current tokens against an optional cached prefix (kv, labels)."""
        k_labels = Labels.cat([prefix[1], q_labels]) if prefix else q_labels
        mask = self.mask(q_labels, k_labels)
        return self.net(video, action, ctx, mask, prefix[0] if prefix else None, return_kv)

    def _guided(self, video, action, ctxs, q_labels, prefixes, cfg_scale, opts: InferOptions):
        """Velocities with classifier-free guidance on video only (actions use the conditional),
        and how many forward passes of the network that took (batched CFG: one)."""
        if cfg_scale == 1.0 or len(ctxs) == 1:
            return (*self._net(video, action, ctxs[0], q_labels, prefixes[0])[:2], 1)
        if opts.cfg_batch:
            cat = lambda t: None if t is None else Tokens(torch.cat([t.x, t.x]), t.pos, torch.cat([t.sigma, t.sigma]))  # noqa: E731
            pre = None
            if prefixes[0]:
                pre = ([(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(prefixes[0][0], prefixes[1][0])],
                       prefixes[0][1])
            ov, oa, _ = self._net(cat(video), cat(action), torch.cat(ctxs), q_labels, pre)
            n = ctxs[0].shape[0]
            vc, vu = ov[:n], ov[n:]
            oa = oa[:n] if oa is not None else None
            return vu + cfg_scale * (vc - vu), oa, 1
        if opts.cfg_parallel:  # CFG parallelism: the two passes on two workers at once
            fut = _cfg_pool().submit(self._worker_net, opts, video, action, ctxs[1], q_labels, prefixes[1])
            vc, oa, _ = self._net(video, action, ctxs[0], q_labels, prefixes[0])
            vu = fut.result()[0]
        else:  # O0/O1: two sequential passes
            vc, oa, _ = self._net(video, action, ctxs[0], q_labels, prefixes[0])
            vu, _, _ = self._net(video, action, ctxs[1], q_labels, prefixes[1])
        return vu + cfg_scale * (vc - vu), oa, 2

    def _prefill(self, video: Tokens, ctx, labels: Labels, opts: InferOptions):
        """K/V of a clean context that attends only to itself; None at O0 (recomputed every step)."""
        if not opts.kv_cache:
            return None
        n = ctx.shape[0] // video.x.shape[0]  # CFG-batched prefill: both contexts in one forward
        if n > 1:
            video = Tokens(video.x.repeat(n, 1, 1), video.pos, video.sigma.repeat(n, 1))
        _, _, kv = self._net(video, None, ctx, labels, None, return_kv=True)
        return (kv, labels)

    def _prefills(self, prefix_fn, ctxs: list, opts: InferOptions) -> list:
        """One prefix per context; with batched CFG both are encoded in one forward, then split."""
        if not (opts.cfg_batch and opts.kv_cache and len(ctxs) == 2):
            return [prefix_fn(c) for c in ctxs]
        kv, labels = prefix_fn(torch.cat(ctxs))
        b = ctxs[0].shape[0]
        return [([(k[:b], v[:b]) for k, v in kv], labels), ([(k[b:], v[b:]) for k, v in kv], labels)]

    def _worker_net(self, opts: InferOptions, *args):
        """`_net` on another thread: grad mode and autocast are per thread, so set them again."""
        with torch.no_grad(), self._autocast(opts, args[2].device.type):
            return self._net(*args)

    @staticmethod
    def _autocast(opts: InferOptions, device: str):
        if not opts.autocast:
            return nullcontext()
        if opts.autocast not in AUTOCAST:
            raise ValueError(f"autocast '{opts.autocast}': expected one of {sorted(AUTOCAST)}")
        return torch.autocast(device, dtype=AUTOCAST[opts.autocast])

    @torch.no_grad()
    def sample(self, latents: torch.Tensor, state: torch.Tensor, prompt: list[str], opts: InferOptions,
               noise_seed: int | list[int | None] | None = None, blocks: list | None = None) -> dict:
        """One inference call for a batch of B samples. `latents` (B, 1, g, C) is each sample's
        current/anchor frame. `noise_seed`: one seed per sample (a list), or one int for every
        sample; each sample draws its noise from its own generator, so its result never depends
        on its batch-mates. `blocks` (dreamzero): the observed clean chunks, either one list of
        (B, lf·g, C) tensors shared by all samples, or per sample a list of (1, lf·g, C) tensors (g tokens a frame);
        samples with different numbers of observed chunks are sampled in separate groups (the
        context length is a shape), and with `opts.per_sample` every sample alone. Returns
        normalized-space actions (fp32, (B, H, A)), generated video, and per sample
        `effective_steps` (denoising steps computed, loops summed) and `forward_passes` (network
        forwards the sample took part in: prefills, both CFG passes)."""
        B = latents.shape[0]
        seeds = list(noise_seed) if isinstance(noise_seed, (list, tuple)) else [noise_seed] * B
        if len(seeds) != B:
            raise ValueError(f"{len(seeds)} noise seeds for a batch of {B}")
        own_blocks = blocks is not None and len(blocks) == B and all(isinstance(b, (list, tuple)) for b in blocks)
        groups: dict = {}  # samples that share a forward: the same context length (a shape), or alone
        for j in range(B):
            groups.setdefault(j if opts.per_sample else len(blocks[j]) if own_blocks else 0, []).append(j)
        with self._autocast(opts, latents.device.type), torch.device(latents.device):
            if len(groups) == 1:
                blk = [torch.cat(c) for c in zip(*blocks)] if own_blocks else blocks
                out = self._sample(latents, state, prompt, opts, seeds, blk)
            else:
                outs = []
                for idx in groups.values():
                    if own_blocks:
                        blk = [torch.cat(c) for c in zip(*(blocks[j] for j in idx))]
                    else:
                        blk = None if blocks is None else [b[idx] for b in blocks]
                    outs.append((idx, self._sample(latents[idx], state[idx], [prompt[j] for j in idx], opts,
                                                   [seeds[j] for j in idx], blk)))
                out = _scatter(outs, B)
        out["actions"] = out["actions"].float()
        return out

    def _sample(self, latents, state, prompt, opts: InferOptions, seeds: list, blocks) -> dict:
        ch, inf = self.v.chunk, self.v.inference
        steps = opts.steps or inf.steps
        # noise drawn on the CPU and moved: a seed gives the same actions on every device
        gens = [None if s is None else torch.Generator("cpu").manual_seed(s) for s in seeds]
        B, g = latents.shape[0], self.tokens_per_frame
        H = ch.actions
        sig = flow.sigma_grid(steps, inf.shift)
        cond = self.context(prompt, state)
        use_cfg = inf.cfg_scale != 1.0
        ctxs = [cond, self.context([None] * B, state)] if use_cfg else [cond]
        computed = torch.zeros(B, dtype=torch.long, device="cpu")   # denoising steps computed, per sample
        passes = torch.zeros(B, dtype=torch.long, device="cpu")     # network forwards, per sample
        f0 = latents[:, 0]
        z = lambda shape: torch.cat([torch.randn((1, *shape[1:]), generator=gn, device="cpu")  # noqa: E731
                                     for gn in gens]).to(latents.device)
        proc = inf.procedure
        out: dict = {}

        def denoise(video_noisy, video_pre, video_pre_labels, video_lab, video_pos, act_lab, act_pos, ctxs_, prefix_fn):
            """Shared Euler loop over (optional) noisy video + (optional) noisy actions.

            The DiT cache decides per sample (its own velocity history), and a step runs the
            network on the samples that compute it only, so a skip never depends on batch-mates."""
            x_v, x_a = video_noisy, (z((B, act_pos.shape[0], self.action_size)) if act_lab is not None else None)
            prefixes = self._prefills(prefix_fn, ctxs_, opts)
            if opts.kv_cache and video_pre is not None:
                passes.add_(1 if (opts.cfg_batch and len(ctxs_) == 2) else len(ctxs_))
            caches = [DitCache(opts.dit_cache if video_noisy is not None else None, steps) for _ in range(B)]
            last_v = last_a = None
            cfg = inf.cfg_scale if x_v is not None else 1.0
            for i in range(steps):
                s0, s1 = sig[i].item(), sig[i + 1].item()
                run = [True] * B if i == 0 else [c.run(i) for c in caches]
                if any(run):
                    idx = None if all(run) else torch.tensor([j for j in range(B) if run[j]])
                    take = (lambda t: t) if idx is None else (lambda t: None if t is None else t[idx])  # noqa: E731
                    xv, xa = take(x_v), take(x_a)
                    n = B if idx is None else len(idx)
                    cs = [take(c) for c in ctxs_]
                    pres = [None if p is None else ([(take(k), take(v)) for k, v in p[0]], p[1]) for p in prefixes]
                    cur_v = [] if xv is None else [Tokens(xv, video_pos, torch.full(xv.shape[:2], s0))]
                    cur_a = None if xa is None else Tokens(xa, act_pos, torch.full(xa.shape[:2], s0))
                    q_lab = Labels.cat(([video_lab] if xv is not None else []) + ([act_lab] if xa is not None else []))
                    if prefixes[0] is None and video_pre is not None:   # O0: recompute the clean context
                        vid = Tokens(torch.cat([take(video_pre.x)] + [t.x for t in cur_v], 1),
                                     torch.cat([video_pre.pos] + [t.pos for t in cur_v]),
                                     torch.cat([video_pre.sigma[:n]] + [t.sigma for t in cur_v], 1))
                        q_full = Labels.cat([video_pre_labels, q_lab])
                        nv = video_pre.x.shape[1]
                        pv, pa, k = self._guided(vid, cur_a, cs, q_full, [None] * len(cs), cfg, opts)
                        pv = pv[:, nv:] if pv is not None else None
                    else:
                        vid = cur_v[0] if cur_v else None
                        pv, pa, k = self._guided(vid, cur_a, cs, q_lab, pres, cfg, opts)
                    sel = slice(None) if idx is None else idx.cpu()
                    computed[sel] += 1
                    passes[sel] += k
                    if idx is None:
                        last_v, last_a = pv, pa
                    else:
                        if pv is not None:
                            last_v = last_v.clone()
                            last_v[idx] = pv
                        if pa is not None:
                            last_a = last_a.clone()
                            last_a[idx] = pa
                    if x_v is not None:
                        for r, j in enumerate(range(B) if idx is None else idx.tolist()):
                            caches[j].record(pv[r:r + 1])
                x_v = flow.euler(x_v, last_v, s0, s1) if x_v is not None else None
                x_a = flow.euler(x_a, last_a, s0, s1) if x_a is not None else None
            return x_v, x_a

        apos = torch.arange(H)
        if proc in ("prefill_action", "joint"):
            f0_tok = Tokens(f0, self.codec.positions([0]), torch.zeros(B, g))
            f0_lab = self.video_labels("F0", [0])
            prefix_fn = lambda c: self._prefill(f0_tok, c, f0_lab, opts)  # noqa: E731
            if proc == "prefill_action":
                _, a = denoise(None, f0_tok, f0_lab, None, None, self.action_labels(0, H), apos, [cond], prefix_fn)
            else:
                nf = ch.latent_frames
                fut_lab = self.video_labels("F+", list(range(1, 1 + nf)))
                xv = z((B, nf * g, self.codec.channels))
                video, a = denoise(xv, f0_tok, f0_lab, fut_lab, self.codec.positions(list(range(1, 1 + nf))),
                                   self.action_labels(0, H), apos, ctxs, prefix_fn)
                out["video"] = video
        elif proc == "video_then_action":
            nf = ch.latent_frames
            frames = list(range(1 + nf))
            f0_tok = Tokens(f0, self.codec.positions([0]), torch.zeros(B, g))
            v0_lab = self.video_labels("V", [0])
            fut_lab = self.video_labels("V", frames[1:])
            video, _ = denoise(z((B, nf * g, self.codec.channels)), f0_tok, v0_lab, fut_lab,
                               self.codec.positions(frames[1:]), None, None, ctxs,
                               lambda c: self._prefill(f0_tok, c, v0_lab, opts))
            out["video"] = video
            w_tok = Tokens(torch.cat([f0, video], 1), self.codec.positions(frames), torch.zeros(B, g * len(frames)))
            w_lab = self.video_labels("W", frames)
            _, a = denoise(None, w_tok, w_lab, None, None, self.action_labels(0, H), apos, [cond],
                           lambda c: self._prefill(w_tok, c, w_lab, opts))
        elif proc == "chunk_autoregressive":
            lf = ch.latent_frames
            blocks = blocks or []
            n = len(blocks)
            ctx_lat = torch.cat([f0] + list(blocks), 1) if blocks else f0
            c_frames = lambda i: list(range(1 + (i - 1) * lf, 1 + i * lf))  # noqa: E731
            ctx_lab = Labels.cat([self.video_labels("F0", [0])] + [self.video_labels("C", c_frames(i), i) for i in range(1, n + 1)])
            ctx_pos = torch.cat([self.codec.positions([0])] + [self.codec.positions(c_frames(i)) for i in range(1, n + 1)])
            ctx_tok = Tokens(ctx_lat, ctx_pos, torch.zeros(B, ctx_lat.shape[1]))
            k = n + 1
            video, a = denoise(z((B, lf * g, self.codec.channels)), ctx_tok, ctx_lab, self.video_labels("N", c_frames(k), k),
                               self.codec.positions(c_frames(k)), self.action_labels(k, H), apos + (k - 1) * H, ctxs,
                               lambda c: self._prefill(ctx_tok, c, ctx_lab, opts))
            out["video"] = video
        else:
            raise ValueError(f"unknown inference procedure '{proc}'")
        out["actions"] = a
        out["effective_steps"] = computed.tolist()
        out["forward_passes"] = passes.tolist()
        return out


def _scatter(outs: list[tuple[list[int], dict]], B: int) -> dict:
    """Put the outputs of sample groups (index list, output) back in batch order."""
    first = outs[0][1]
    out: dict = {}
    for key, val in first.items():
        if torch.is_tensor(val):
            full = val.new_zeros((B, *val.shape[1:]))
            for idx, o in outs:
                full[idx] = o[key]
        else:
            full = [None] * B
            for idx, o in outs:
                for r, j in enumerate(idx):
                    full[j] = o[key][r]
        out[key] = full
    return out
