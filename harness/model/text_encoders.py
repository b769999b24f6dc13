"""Frozen T5 text encoder (transformers) with an on-disk embedding cache.

Wan conditions on umT5-XXL: a 5.7B-parameter encoder that must not sit in the training graph, the
optimizer or a checkpoint, and must not run again for a prompt it has already encoded (a LIBERO
suite has a few dozen instructions; training sees them millions of times). So:

- `tokenize(prompts)` gives token ids padded to `max_tokens` (pad id: the tokenizer's); `None` or
  "" is the unconditional prompt (the empty string's embedding, as in Wan's pipelines);
- `forward(ids)` returns (B, max_tokens, d_model) embeddings as Wan's pipeline builds them: the
  encoder's last hidden state over the real tokens, zeros after them;
- each prompt's embedding is cached in memory and under `cache_dir` (default
  ~/.cache/wam-bench/text) by a hash of (encoder fingerprint, the prompt's token ids). The ids are
  the prompt as this encoder's tokenizer reads it, and the fingerprint covers the tokenizer and
  weights, so a new encoder never reads an old encoder's entry.

The encoder loads on first use, never at construction (a model built on the meta device to count
parameters needs no weights).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn as nn

from harness.errors import UserError

ENCODERS = {"umt5": "UMT5EncoderModel", "t5": "T5EncoderModel", "mt5": "MT5EncoderModel"}


def find_dirs(path: str | Path) -> tuple[Path, Path]:
    """(encoder folder, tokenizer folder): a pipeline folder's text_encoder/ + tokenizer/, or one
    folder holding both."""
    p = Path(path).expanduser()
    enc = p / "text_encoder" if (p / "text_encoder" / "config.json").is_file() else p
    tok = p / "tokenizer" if (p / "tokenizer").is_dir() else enc
    if not (enc / "config.json").is_file():
        raise UserError(f"t5 text encoder: {p} holds no transformers encoder (config.json here or in text_encoder/); "
                        f"set text.path to a local copy of e.g. Wan-AI/Wan2.2-TI2V-5B-Diffusers or google/umt5-xxl")
    return enc, tok


def fingerprint(enc: Path, tok: Path) -> str:
    """Config + tokenizer files + size and a byte sample of each weight file."""
    h = hashlib.sha256()
    for f in [enc / "config.json"] + sorted(x for x in tok.iterdir() if x.is_file() and x.suffix in (".json", ".model", ".txt")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    from harness.model.codecs import hash_weight_files
    hash_weight_files(h, enc)
    return h.hexdigest()[:16]


class T5Text(nn.Module):
    """The `t5` text kind. `spec`: TextSpec (path, max_tokens, cache_dir); `dim`: expected d_model."""

    def __init__(self, spec, dim: int):
        super().__init__()
        self.spec, self.dim, self.max_tokens = spec, dim, spec.max_tokens
        self.cache_dir = Path(spec.cache_dir or os.environ.get("WAM_TEXT_CACHE") or Path.home() / ".cache/wam-bench/text").expanduser()
        self.memory: dict[str, torch.Tensor] = {}
        self.encoder_calls = 0
        self.__dict__["_loaded"] = None  # (tokenizer, encoder): plain attribute, never a submodule

    # ------------------------------------------------------------------ loading
    def _load(self):
        """(tokenizer, transformers module); the encoder's weights load later, on a cache miss only."""
        if self._loaded is None:
            if not self.spec.path:
                raise UserError("t5 text encoder: text.path is not set; point it to a local encoder folder "
                                "(e.g. Wan-AI/Wan2.2-TI2V-5B-Diffusers, which holds text_encoder/ and tokenizer/)")
            try:
                import transformers
            except ImportError:
                raise UserError("t5 text encoder needs transformers: pip install -e '.[wan]'") from None
            enc_dir, tok_dir = find_dirs(self.spec.path)
            cfg = transformers.AutoConfig.from_pretrained(str(enc_dir))
            if cfg.model_type not in ENCODERS:
                raise UserError(f"t5 text encoder: {enc_dir} is a '{cfg.model_type}' model; expected one of {sorted(ENCODERS)}")
            if cfg.d_model != self.dim:
                raise UserError(f"t5 text encoder: d_model {cfg.d_model} but the backbone's text_dim is {self.dim}; "
                                f"set text_dim: {cfg.d_model} in the backbone preset")
            tok = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
            self.__dict__["_loaded"] = (tok, (transformers, cfg.model_type, enc_dir))
            self.__dict__["_enc"] = None
            self.fingerprint = fingerprint(enc_dir, tok_dir)
        return self._loaded

    def _encoder(self):
        """The frozen encoder (umT5-XXL: 5.7B parameters), loaded the first time a prompt misses the cache."""
        if self.__dict__.get("_enc") is None:
            transformers, kind, enc_dir = self._load()[1]
            enc = getattr(transformers, ENCODERS[kind]).from_pretrained(str(enc_dir))
            self.__dict__["_enc"] = enc.eval().requires_grad_(False)
        return self._enc

    @property
    def pad_id(self) -> int:
        return self._load()[0].pad_token_id or 0

    # ------------------------------------------------------------------ the interface
    def tokenize(self, prompts: list[str | None]) -> torch.Tensor:
        tok, _ = self._load()
        texts = [" ".join((p or "").split()) for p in prompts]  # Wan's prompt_clean: collapse whitespace
        return tok(texts, padding="max_length", max_length=self.max_tokens, truncation=True,
                   add_special_tokens=True, return_tensors="pt").input_ids

    def _key(self, ids: torch.Tensor) -> str:
        return hashlib.sha256(f"{self.fingerprint}:".encode() + ids.to(torch.int64).cpu().numpy().tobytes()).hexdigest()[:32]

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = self.pad_id
        lengths = (ids != pad).sum(1).tolist()
        keys = [self._key(row[:n]) for row, n in zip(ids, lengths)]
        rows: list[torch.Tensor | None] = [self._lookup(k) for k in keys]
        todo = [i for i, r in enumerate(rows) if r is None]
        if todo:
            enc = self._encoder()
            sub = ids[todo]
            mask = (sub != pad).long()
            dev = sub.device
            if next(enc.parameters()).device != dev:
                enc.to(device=dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
            hidden = enc(input_ids=sub, attention_mask=mask).last_hidden_state.float().cpu()
            self.encoder_calls += 1
            for j, i in enumerate(todo):
                rows[i] = hidden[j, : lengths[i]].clone()
                self._store(keys[i], rows[i])
        out = torch.zeros(len(rows), ids.shape[1], self.dim)
        for i, r in enumerate(rows):
            out[i, : r.shape[0]] = r
        return out.to(ids.device)

    def embed(self, prompts: list[str | None]) -> torch.Tensor:
        """Embeddings for prompts (tokenize + forward): precompute a suite's instructions with it."""
        return self(self.tokenize(prompts))

    # ------------------------------------------------------------------ cache
    def _path(self, key: str) -> Path:
        return self.cache_dir / self.fingerprint / f"{key}.pt"

    def _lookup(self, key: str) -> torch.Tensor | None:
        if key in self.memory:
            return self.memory[key]
        f = self._path(key)
        if f.is_file():
            self.memory[key] = torch.load(f, map_location="cpu", weights_only=True)
            return self.memory[key]
        return None

    def _store(self, key: str, t: torch.Tensor) -> None:
        self.memory[key] = t
        f = self._path(key)
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_suffix(f".{os.getpid()}.tmp")
            torch.save(t, tmp)
            os.replace(tmp, f)  # atomic: parallel workers never read half a file
        except OSError as e:
            raise UserError(f"t5 text encoder: cannot write the embedding cache {f.parent} ({e}); "
                            f"set text.cache_dir or WAM_TEXT_CACHE to a writable folder") from None
