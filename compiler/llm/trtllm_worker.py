"""Run a TensorRT-LLM engine for mscompile: the gate and the profile, in a child
process (TensorRT-LLM holds the GPU and its MPI state; a crash fails the step).

  python trtllm_worker.py request.json result.json

Self-contained; written against TensorRT-LLM's Python runtime
(tensorrt_llm.runtime.ModelRunner). The engine is built with
--gather_context_logits so the prompt's logits give the perplexity."""

from __future__ import annotations

import json
import sys
import time
import traceback


def _runner(req):
    import tensorrt_llm
    from tensorrt_llm.runtime import ModelRunner

    return ModelRunner.from_dir(engine_dir=req["engine"], rank=tensorrt_llm.mpi_rank())


def _ids(batch):
    import torch

    return [torch.tensor(ids, dtype=torch.int32) for ids in batch]


def gate(req):
    import torch

    runner = _runner(req)
    nll = []
    for ids in req["texts"]:
        out = runner.generate(
            _ids([ids]), max_new_tokens=1, end_id=-1, pad_id=0, top_k=1, return_dict=True, output_sequence_lengths=True
        )
        logits = out["context_logits"][0].float()  # [len(ids), vocab]
        logp = torch.log_softmax(logits[:-1], dim=-1)
        target = torch.tensor(ids[1:])
        nll.append([float(-logp[torch.arange(len(ids) - 1), target].sum()), len(ids) - 1])
    greedy = []
    for ids in req["prompts"]:
        # end_id -1: no end token, greedy continues past end-of-sequence as the reference does
        out = runner.generate(
            _ids([ids]),
            max_new_tokens=req["new_tokens"],
            end_id=-1,
            pad_id=0,
            top_k=1,
            return_dict=True,
            output_sequence_lengths=True,
        )
        seq = out["output_ids"][0][0].tolist()
        length = int(out["sequence_lengths"][0][0])
        greedy.append(seq[len(ids) : length])
    return {"nll": nll, "greedy": greedy}


def profile(req):
    import torch

    runner = _runner(req)
    prompts = req["prompts"]
    runner.generate(_ids(prompts[:1]), max_new_tokens=4, end_id=-1, pad_id=0, top_k=1)  # warm-up
    rows = {}
    for b in req["batches"]:
        batch = [prompts[i % len(prompts)] for i in range(b)]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        runner.generate(_ids(batch), max_new_tokens=req["new_tokens"], end_id=-1, pad_id=0, top_k=1)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tokens = b * req["new_tokens"]
        rows[str(b)] = {"tokens_per_s": round(tokens / dt, 2), "seconds": round(dt, 4), "tokens": tokens}
    return {"profile": rows}


def main() -> int:
    req = json.loads(open(sys.argv[1]).read())
    try:
        result = dict({"gate": gate, "profile": profile}[req["mode"]](req), ok=True)
    except Exception as exc:  # reported to mscompile, which names the step
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
