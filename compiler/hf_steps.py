"""The steps of a Hugging Face text model's Triton ensemble (`pipeline: auto` with a
`source: {huggingface: ...}`), run by Triton's python backend: text in, the folder's
own tokenizer (tokenizer.json, with tokenizer_config.json and config.json shipped
beside it) to the model's inputs; class logits to probabilities.

Self-contained on purpose (numpy and `tokenizers` only): Triton copies exactly this
file and its files into each step's version folder."""

from __future__ import annotations

import json
import os

import numpy as np

_tokenizer = None


def _json(folder: str, name: str) -> dict:
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def setup(folder: str) -> None:
    """Once per step model with its version folder; only the preprocess step ships the
    tokenizer. Truncation at the model's limit (its positions, the tokenizer's
    model_max_length), padding with its pad token."""
    global _tokenizer
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        return
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    tcfg, mcfg = _json(folder, "tokenizer_config.json"), _json(folder, "config.json")
    limit = min(int(min(tcfg.get("model_max_length") or 512, 1 << 20)), int(mcfg.get("max_position_embeddings") or 512))
    pad = tcfg.get("pad_token") or "[PAD]"
    pad = pad.get("content", "[PAD]") if isinstance(pad, dict) else pad
    tok.enable_truncation(max_length=limit)
    tok.enable_padding(pad_id=tok.token_to_id(pad) or 0, pad_token=pad)
    _tokenizer = tok


def text_preprocess(batch: dict) -> dict:
    """[batch, 1] strings -> input_ids, attention_mask, token_type_ids (int64; the
    ensemble passes on the ones the model takes)."""
    texts = [t.decode() if isinstance(t, bytes) else str(t) for t in np.asarray(batch["text"]).reshape(-1)]
    enc = _tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
    }


def softmax_postprocess(batch: dict) -> dict:
    """Class logits (last axis) -> probabilities."""
    x = np.asarray(batch["logits"], dtype=np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return {"probabilities": (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)}
