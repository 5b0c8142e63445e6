"""The steps of a Hugging Face model's Triton ensemble (`pipeline: auto` with a
`source: {huggingface: ...}`), run by Triton's python backend: text in, the folder's
own tokenizer (tokenizer.json, with tokenizer_config.json and config.json shipped
beside it) to the model's inputs; or RGB pixels in (uint8 [height, width, 3], any
size), the folder's image processor settings (preprocessor_config.json: resize,
center crop, rescale, normalize, done with Pillow as transformers' PIL processors do)
to pixel_values; class logits to probabilities.

Self-contained on purpose (numpy, and `tokenizers` or Pillow for the step that needs
it): Triton copies exactly this file and its files into each step's version folder."""

from __future__ import annotations

import json
import os

import numpy as np

_tokenizer = None
_image: dict = {}


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
    _image.clear()
    _image.update(_json(folder, "preprocessor_config.json"))
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


def _resize_target(h: int, w: int, size: dict) -> tuple[int, int]:
    """(height, width) a processor's `size` asks for an h x w image."""
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if "shortest_edge" in size:
        short, long_ = (h, w) if h <= w else (w, h)
        new_short = int(size["shortest_edge"])
        new_long = int(new_short * long_ / short)
        if size.get("longest_edge") and new_long > int(size["longest_edge"]):
            new_short, new_long = int(int(size["longest_edge"]) * new_short / new_long), int(size["longest_edge"])
        return (new_short, new_long) if h <= w else (new_long, new_short)
    raise ValueError(f"image processor size {size} is not supported by mscompile.hf_steps")


def pixels_for(images: list, cfg: dict) -> np.ndarray:
    """uint8 RGB images [h, w, 3] -> pixel_values float32 [n, 3, H, W], as the processor
    config `cfg` says: resize (its resample), center crop, rescale, normalize."""
    from PIL import Image

    out = []
    for arr in images:
        im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), "RGB")
        crop = cfg.get("crop_size") if cfg.get("do_center_crop") else None
        if cfg.get("do_resize", True) and cfg.get("size"):
            size = dict(cfg["size"])
            if cfg.get("crop_pct") and size.get("shortest_edge", 384) < 384:
                # ConvNeXt's rule: resize to shortest_edge / crop_pct, center-crop a shortest_edge square
                edge = int(size["shortest_edge"])
                crop, size = {"height": edge, "width": edge}, {"shortest_edge": int(edge / float(cfg["crop_pct"]))}
            elif cfg.get("crop_pct") and "shortest_edge" in size:  # ConvNeXt from 384 up: warped to a square
                size = {"height": int(size["shortest_edge"]), "width": int(size["shortest_edge"])}
            h, w = _resize_target(im.height, im.width, size)
            im = im.resize((w, h), resample=Image.Resampling(int(cfg.get("resample", 2))))
        x = np.asarray(im, dtype=np.float32)
        if crop:
            ch, cw = int(crop["height"]), int(crop["width"])
            top, left = max((x.shape[0] - ch) // 2, 0), max((x.shape[1] - cw) // 2, 0)
            x = x[top : top + ch, left : left + cw]
        if cfg.get("do_rescale", True):
            x = x * np.float32(cfg.get("rescale_factor", 1 / 255))
        if cfg.get("do_normalize", True):
            x = (x - np.asarray(cfg.get("image_mean", [0.5] * 3), np.float32)) / np.asarray(
                cfg.get("image_std", [0.5] * 3), np.float32
            )
        out.append(x.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def image_preprocess(batch: dict) -> dict:
    """[batch, height, width, 3] uint8 RGB pixels -> pixel_values (float32)."""
    return {"pixel_values": pixels_for(list(np.asarray(batch["image"], dtype=np.uint8)), _image)}
