"""Text in, embedding out: the MiniLM ensemble's steps, run by Triton's python backend.

preprocess: sentences (a [batch, 1] array of str) -> input_ids, attention_mask,
token_type_ids with the model's own WordPiece tokenizer (tokenizer.json, shipped
beside this file in the step's version folder; the `tokenizers` package).
postprocess: the encoder's mean-pooled embeddings -> L2-normalized, as
sentence-transformers returns them.

Self-contained on purpose: Triton copies only this file and its `files`.
"""

from __future__ import annotations

import os

import numpy as np

_tokenizer = None


def setup(folder: str) -> None:
    """Called once by each step model with its version folder; only preprocess ships the tokenizer."""
    global _tokenizer
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        return
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    tok.enable_truncation(max_length=128)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    _tokenizer = tok


def preprocess(batch: dict) -> dict:
    texts = [str(t) for t in np.asarray(batch["text"]).reshape(-1)]
    enc = _tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
    }


def postprocess(batch: dict) -> dict:
    e = np.asarray(batch["embeddings"], dtype=np.float32)
    return {"embedding": e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)}
