"""Wan weights into our backbone: an explicit key map from the diffusers `WanTransformer3DModel`
layout (save_pretrained, safetensors) to the video expert, and the action expert's init.

Why a key map and not diffusers at run time: the MoT DiT must own its blocks to run joint
attention with the action expert, so Wan's weights are copied into our modules once. The map
is the full list of tensors; anything unmapped, missing or of the wrong shape is an error.

Layout facts the map relies on (checked against diffusers 0.42 `transformer_wan.py`):
- the patch embedding is a Conv3d with kernel = stride = (1, p, p); our codecs hand the DiT
  tokens already patchified in (channel, row, col) order, so the conv is a Linear on them;
- `proj_out` emits each token's patch in (row, col, channel) order before unpatchify; we reorder
  its rows to (channel, row, col) so the output is in the same token layout as the input;
- self-attention q/k/v are fused into one Linear; cross-attention k/v into another;
- Wan2.2-TI2V's per-token timesteps are ours: `timestep` is σ·1000 for every token.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.errors import UserError

WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"


# --------------------------------------------------------------------------- locating and reading

def find_transformer_dir(path: str | Path) -> Path:
    """The folder holding config.json + safetensors: `path` itself or its `transformer/` subfolder
    (a diffusers pipeline folder such as Wan2.2-TI2V-5B-Diffusers)."""
    p = Path(path).expanduser()
    for cand in (p, p / "transformer"):
        if (cand / "config.json").is_file() and ((cand / WEIGHTS).is_file() or (cand / INDEX).is_file()):
            return cand
    raise UserError(f"Wan weights: {p} holds no diffusers transformer (config.json + {WEIGHTS} or {INDEX}, "
                    f"here or in transformer/); point to a local copy of e.g. Wan-AI/Wan2.2-TI2V-5B-Diffusers")


def _tensor_files(d: Path) -> dict[str, Path]:
    """key -> shard file, from the index when sharded."""
    from safetensors import safe_open
    if (d / INDEX).is_file():
        wm = json.loads((d / INDEX).read_text())["weight_map"]
        return {k: d / f for k, f in wm.items()}
    with safe_open(str(d / WEIGHTS), "pt") as f:
        return {k: d / WEIGHTS for k in f.keys()}


class _Reader:
    """Reads tensors one at a time (a 5B checkpoint is never held twice in memory)."""

    def __init__(self, d: Path):
        self.files = _tensor_files(d)
        self.used: set[str] = set()
        self._open: dict[Path, object] = {}

    def __call__(self, key: str) -> torch.Tensor:
        from safetensors import safe_open
        if key not in self.files:
            raise UserError(f"Wan weights: tensor '{key}' is missing; is this a WanTransformer3DModel folder?")
        f = self.files[key]
        if f not in self._open:
            self._open[f] = safe_open(str(f), "pt")
        self.used.add(key)
        return self._open[f].get_tensor(key)


# --------------------------------------------------------------------------- config check

def check_config(cfg: dict, spec, latent_channels: int) -> None:
    """Every architectural setting the key map assumes, each named with what to change."""
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    pt, ph, pw = cfg.get("patch_size", [1, 2, 2])
    problems = []
    want = {
        "video_dim": (spec.video_dim, inner),
        "heads": (spec.heads, cfg["num_attention_heads"]),
        "layers": (spec.layers, cfg["num_layers"]),
        "text_dim": (spec.text_dim, cfg["text_dim"]),
        "round(video_dim * mlp_ratio)": (round(spec.video_dim * spec.mlp_ratio), cfg["ffn_dim"]),
        "latent channels per token (codec)": (latent_channels, cfg["in_channels"] * pt * ph * pw),
        "rope_theta": (spec.rope_theta, 10000.0),
    }
    for name, (ours, theirs) in want.items():
        if ours != theirs:
            problems.append(f"{name} is {ours}, the checkpoint needs {theirs}")
    if pt != 1 or ph != pw:
        problems.append(f"patch_size {cfg.get('patch_size')} is not (1, p, p)")
    if (cfg.get("out_channels") or cfg["in_channels"]) != cfg["in_channels"]:
        problems.append("out_channels differs from in_channels")
    if cfg.get("freq_dim", 256) != 256:
        problems.append(f"freq_dim {cfg.get('freq_dim')} (ours is 256)")
    if cfg.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads" or not cfg.get("cross_attn_norm", True):
        problems.append("qk_norm must be rms_norm_across_heads and cross_attn_norm true")
    if cfg.get("eps", 1e-6) != 1e-6:
        problems.append(f"eps {cfg.get('eps')} (ours is 1e-6)")
    if cfg.get("image_dim") or cfg.get("added_kv_proj_dim"):
        problems.append("image conditioning (Wan2.1 I2V's CLIP branch) has no counterpart in our backbone")
    if problems:
        raise UserError(f"Wan weights do not fit backbone '{spec.name}': " + "; ".join(problems)
                        + "; edit the backbone preset (variants/backbones/) to the checkpoint's sizes")


# --------------------------------------------------------------------------- the key map

def key_map(layers: int) -> list[tuple[str, list[str], str]]:
    """(our key, diffusers keys, how) for every tensor of the video expert and shared modules.

    how: `copy`, `cat` (concatenate along dim 0: fused projections), `squeeze` (drop a leading 1),
    `conv` (Conv3d (D, C, 1, p, p) -> Linear (D, C·p·p)), `rows` (proj_out rows reordered)."""
    m: list[tuple[str, list[str], str]] = []

    def lin(ours, theirs, how="copy"):
        m.append((f"{ours}.weight", [f"{t}.weight" for t in theirs], how))
        m.append((f"{ours}.bias", [f"{t}.bias" for t in theirs], how))

    m.append(("video_in.weight", ["patch_embedding.weight"], "conv"))
    m.append(("video_in.bias", ["patch_embedding.bias"], "copy"))
    lin("video_time.mlp.0", ["condition_embedder.time_embedder.linear_1"])
    lin("video_time.mlp.2", ["condition_embedder.time_embedder.linear_2"])
    lin("video_time.proj.1", ["condition_embedder.time_proj"])
    lin("text_proj.0", ["condition_embedder.text_embedder.linear_1"])
    lin("text_proj.2", ["condition_embedder.text_embedder.linear_2"])
    for i in range(layers):
        o, t = f"blocks.{i}.video", f"blocks.{i}"
        lin(f"{o}.qkv", [f"{t}.attn1.to_q", f"{t}.attn1.to_k", f"{t}.attn1.to_v"], "cat")
        m.append((f"{o}.q_norm.weight", [f"{t}.attn1.norm_q.weight"], "copy"))
        m.append((f"{o}.k_norm.weight", [f"{t}.attn1.norm_k.weight"], "copy"))
        lin(f"{o}.out", [f"{t}.attn1.to_out.0"])
        lin(f"{o}.norm_x", [f"{t}.norm2"])
        lin(f"{o}.cross_q", [f"{t}.attn2.to_q"])
        lin(f"{o}.cross_kv", [f"{t}.attn2.to_k", f"{t}.attn2.to_v"], "cat")
        m.append((f"{o}.cross_q_norm.weight", [f"{t}.attn2.norm_q.weight"], "copy"))
        m.append((f"{o}.cross_k_norm.weight", [f"{t}.attn2.norm_k.weight"], "copy"))
        lin(f"{o}.cross_out", [f"{t}.attn2.to_out.0"])
        lin(f"{o}.mlp.0", [f"{t}.ffn.net.0.proj"])
        lin(f"{o}.mlp.2", [f"{t}.ffn.net.2"])
        m.append((f"{o}.table", [f"{t}.scale_shift_table"], "squeeze"))
    m.append(("video_out_table", ["scale_shift_table"], "squeeze"))
    m.append(("video_out.weight", ["proj_out.weight"], "rows"))
    m.append(("video_out.bias", ["proj_out.bias"], "rows"))
    return m


def _rows_perm(channels: int, p: int) -> torch.Tensor:
    """Index into proj_out rows ((row, col, channel) order) giving (channel, row, col) order."""
    c, r, q = torch.meshgrid(torch.arange(channels), torch.arange(p), torch.arange(p), indexing="ij")
    return ((r * p + q) * channels + c).flatten()


def convert_state_dict(path: str | Path, spec, latent_channels: int) -> dict[str, torch.Tensor]:
    """Our state-dict entries (video expert + shared modules) from a diffusers Wan folder."""
    d = find_transformer_dir(path)
    cfg = json.loads((d / "config.json").read_text())
    check_config(cfg, spec, latent_channels)
    read = _Reader(d)
    p = cfg.get("patch_size", [1, 2, 2])[1]
    perm = _rows_perm(cfg["in_channels"], p)
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, how in key_map(cfg["num_layers"]):
        ts = [read(k) for k in theirs]
        if how == "cat":
            t = torch.cat(ts, 0)
        elif how == "squeeze":
            t = ts[0].reshape(ts[0].shape[1:])
        elif how == "conv":
            t = ts[0].flatten(1)
        elif how == "rows":
            t = ts[0][perm]
        else:
            t = ts[0]
        out[ours] = t
    ignorable = ("norm_added_q",)  # diffusers drops it on load too
    left = [k for k in read.files if k not in read.used and not any(s in k for s in ignorable)]
    if left:
        raise UserError(f"Wan weights: {len(left)} tensors have no place in our backbone (e.g. {left[:3]}); "
                        f"this checkpoint has parts the key map does not know")
    return out


@torch.no_grad()
def import_wan_transformer(net, path: str | Path) -> list[str]:
    """Load a diffusers WanTransformer3DModel folder into `net`'s video expert and shared modules
    (patch/time/text embedders, output head). Works on a meta-device model (tensors are assigned).
    Returns our keys left untouched (the action expert, state/text tokens, action heads)."""
    latent_channels = net.video_in.in_features
    sd = convert_state_dict(path, net.spec, latent_channels)
    own = net.state_dict()
    for k, t in sd.items():
        if k not in own:
            raise UserError(f"Wan import: our backbone has no '{k}' (harness/backbone.py changed?)")
        if own[k].shape != t.shape:
            raise UserError(f"Wan import: '{k}' is {tuple(own[k].shape)} here, {tuple(t.shape)} in the checkpoint")
    meta = any(p.is_meta for p in net.parameters())
    if meta:
        net.load_state_dict(sd, strict=False, assign=True)
    else:
        for k, t in sd.items():
            own[k].copy_(t)
    return [k for k in own if k not in sd]


# --------------------------------------------------------------------------- action expert init

def resize_like(src: torch.Tensor, shape: torch.Size | tuple) -> torch.Tensor:
    """Linearly interpolate `src` to `shape` along every dimension that differs (corners kept)."""
    if tuple(src.shape) == tuple(shape):
        return src.clone()
    if src.dim() > 2 or src.dim() != len(shape):
        raise ValueError(f"cannot interpolate a {tuple(src.shape)} tensor to {tuple(shape)}")
    x = src.float()
    if x.dim() == 1:
        x = F.interpolate(x[None, None], size=shape[0], mode="linear", align_corners=True)[0, 0]
    else:
        x = F.interpolate(x[None, None], size=tuple(shape), mode="bilinear", align_corners=True)[0, 0]
    return x.to(src.dtype)


@torch.no_grad()
def init_action_from_video(net) -> list[str]:
    """Fast-WAM's recipe: every action-expert weight starts as the matching video-expert weight
    interpolated to the action expert's (smaller) shape, so the action expert inherits the
    pretrained block's structure instead of noise. Blocks, time embedding and output modulation
    table are copied this way; the action input/output projections stay as initialised (they
    have no video counterpart). Returns the keys set."""
    done = []
    pairs = [(b.video, b.action, f"blocks.{i}") for i, b in enumerate(net.blocks)]
    pairs.append((net.video_time, net.action_time, "time"))
    for video, action, where in pairs:
        vp = dict(video.named_parameters())
        for name, p in action.named_parameters():
            p.copy_(resize_like(vp[name].to(p.device), p.shape))
            done.append(f"{where}.action.{name}")
    net.action_out_table.copy_(resize_like(net.video_out_table.to(net.action_out_table.device),
                                           net.action_out_table.shape))
    done.append("action_out_table")
    return done


def apply_init(net, weights: str | Path | None = None, action_init: str = "random") -> dict:
    """The backbone's starting point, for a fresh training run (never on resume): optionally the
    Wan video weights (a diffusers folder), then the action expert `random` (as built) or
    `interpolate` (from the video expert). Returns what was done, for the run's log."""
    if action_init not in ("random", "interpolate"):
        raise UserError(f"action_init '{action_init}': use 'random' or 'interpolate'")
    if action_init == "interpolate" and not weights:
        raise UserError("action_init 'interpolate' copies a pretrained video expert; set the Wan weights folder too")
    done: dict = {"weights": None, "action_init": action_init}
    if weights:
        import_wan_transformer(net, weights)
        done["weights"] = str(Path(weights).expanduser().resolve())
    if action_init == "interpolate":
        init_action_from_video(net)
    return done
