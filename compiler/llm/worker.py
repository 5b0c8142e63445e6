"""Run vLLM for mscompile, in a child process, under a Python that has vLLM.

  python worker.py request.json result.json

Self-contained (it may run in an environment without mscompile). Modes:
- gate: per text, the sum of the prompt tokens' log-probabilities (perplexity);
  per prompt, the greedy continuation's token ids.
- profile: generated tokens per second at batch 1 and at a batch of prompts.
- engine_args: build vLLM's own AsyncEngineArgs from a Triton model.json and
  create its engine config (the check that the file is what vLLM accepts).
Token ids come in from mscompile (one tokenization for the reference and
every variant). The engine runs with the engine arguments of the published
model.json (eager or compiled, the KV cache size), which mscompile sends."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback


def _engine(req: dict):
    from vllm import LLM

    kw = dict(
        model=req["model"],
        dtype=req.get("dtype", "auto"),
        enforce_eager=req.get("enforce_eager", True),
        max_model_len=req.get("max_model_len", 512),
        seed=0,
        gpu_memory_utilization=req.get("gpu_memory_utilization", 0.9),
    )
    if req.get("kv_cache_memory_bytes") is not None:
        kw["kv_cache_memory_bytes"] = req["kv_cache_memory_bytes"]
    if req.get("quantization"):
        kw["quantization"] = req["quantization"]
    return LLM(**kw)


def gate(req: dict) -> dict:
    from vllm import SamplingParams

    llm = _engine(req)
    texts = [{"prompt_token_ids": ids} for ids in req["texts"]]
    scored = llm.generate(texts, SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0), use_tqdm=False)
    nll = []
    for ids, out in zip(req["texts"], scored, strict=True):
        total = 0.0
        for pos, lp in enumerate(out.prompt_logprobs or []):
            if pos == 0 or lp is None:
                continue
            total -= lp[ids[pos]].logprob
        nll.append([total, len(ids) - 1])
    prompts = [{"prompt_token_ids": ids} for ids in req["prompts"]]
    greedy = llm.generate(
        prompts,
        SamplingParams(max_tokens=req["new_tokens"], temperature=0.0, ignore_eos=True),
        use_tqdm=False,
    )
    return {"nll": nll, "greedy": [list(o.outputs[0].token_ids) for o in greedy]}


def profile(req: dict) -> dict:
    from vllm import SamplingParams

    llm = _engine(req)
    sp = SamplingParams(max_tokens=req["new_tokens"], temperature=0.0, ignore_eos=True)
    prompts = [{"prompt_token_ids": ids} for ids in req["prompts"]]
    llm.generate(prompts[:1], sp, use_tqdm=False)  # warm-up
    out = {}
    for batch in req["batches"]:
        chunk = (prompts * (batch // len(prompts) + 1))[:batch]
        times = []
        for _ in range(req.get("repeats", 3)):
            t0 = time.perf_counter()
            res = llm.generate(chunk, sp, use_tqdm=False)
            times.append(time.perf_counter() - t0)
        tokens = sum(len(r.outputs[0].token_ids) for r in res)
        best = sorted(times)[len(times) // 2]
        out[str(batch)] = {"tokens": tokens, "seconds": round(best, 4), "tokens_per_s": round(tokens / best, 2)}
    return {"profile": out}


def engine_args(req: dict) -> dict:
    from vllm.engine.arg_utils import AsyncEngineArgs

    args = AsyncEngineArgs(**req["model_json"])
    args.create_engine_config()
    return {"ok": True}


def main() -> int:
    req = json.loads(open(sys.argv[1]).read())
    # the KV cache size is the model.json's (kv_cache_memory_bytes); vLLM-CPU's legacy
    # variable would override it, and Triton's vllm backend does not see it
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    try:
        result = {"gate": gate, "profile": profile, "engine_args": engine_args}[req["mode"]](req)
        result["ok"] = True
    except Exception as exc:  # reported to mscompile, which names the step
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
