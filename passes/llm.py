"""LLM passes: the reference (Hugging Face transformers on CPU), the gate and the
profile in vLLM itself (a child process under a Python that has vLLM).

load_llm copies the checkpoint folder in, tokenizes the validation passages and
prompts once (every variant sees the same token ids), and records the
reference: per passage the negative log-likelihood of its tokens, per prompt the
greedy continuation. check_llm_vllm runs the variant in vLLM's offline engine and
gates relative perplexity increase and greedy-token agreement (exact matches and
mean first-divergence position). profile_llm_vllm measures generated tokens/s at
batch 1 and at a batch of concurrent prompts."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from mscompile.accuracy import compare_llm
from mscompile.artifacts import HfModel, HfSource, ParityReport, ProfileReport
from mscompile.data import read_lines
from mscompile.errors import ConfigError
from mscompile.llm.runner import LLMC_WORKER, run_llmcompressor, run_worker
from mscompile.llm.sections import LlmTolerance
from mscompile.pipeline import Pass, PassContext, PassResult, Status
from mscompile.sections import Section

CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "added_tokens.json",
    # transformers 5 writes a tokenizer's chat template here, not in tokenizer_config.json
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
)
TEMPLATES_DIR = "additional_chat_templates"  # named chat templates, one .jinja file each


def copy_checkpoint(src: Path, dst: Path) -> None:
    """The weights and every file a tokenizer or processor reads (chat templates
    included); never the checkpoint's own code."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and (
            f.name in CHECKPOINT_FILES or f.suffix == ".safetensors" or f.name.endswith(".safetensors.index.json")
        ):
            shutil.copyfile(f, dst / f.name)
    templates = src / TEMPLATES_DIR
    if templates.is_dir():
        (dst / TEMPLATES_DIR).mkdir(exist_ok=True)
        for f in sorted(templates.glob("*.jinja")):
            if f.is_file():
                shutil.copyfile(f, dst / TEMPLATES_DIR / f.name)


def score(model: Any, texts: list[list[int]], prompts: list[list[int]], new_tokens: int) -> tuple[list, list]:
    """A transformers causal LM on token ids: per passage [NLL of its tokens, count], per
    prompt its greedy continuation (plain argmax, end-of-sequence included and not
    stopping there: what vLLM's greedy sampling with ignore_eos does; generate()'s
    min_new_tokens would suppress the end token instead)."""
    import torch

    nll: list[list[float]] = []
    greedy: list[list[int]] = []
    with torch.inference_mode():
        for ids in texts:
            x = torch.tensor([ids])
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), dim=-1)
            nll.append([float(-logp[torch.arange(len(ids) - 1), x[0, 1:]].sum()), len(ids) - 1])
        for ids in prompts:
            past, x, out = None, torch.tensor([ids]), []
            for _ in range(new_tokens):
                o = model(input_ids=x, past_key_values=past, use_cache=True)
                past = o.past_key_values
                nxt = int(o.logits[0, -1].argmax())
                out.append(nxt)
                x = torch.tensor([[nxt]])
            greedy.append(out)
    return nll, greedy


class LoadLlmConfig(Section):
    texts: str  # "" (both): seeded synthetic token ids instead of files
    prompts: str
    texts_sha256: str  # the files' contents are part of the cache key
    prompts_sha256: str
    max_texts: int
    max_prompts: int
    max_tokens: int
    new_tokens: int


class LoadLlm(Pass[HfSource, HfModel]):
    name = "load_llm"
    version = 4
    input_type = HfSource
    output_type = HfModel
    Config = LoadLlmConfig
    libraries = ("torch", "transformers", "tokenizers")

    def run(self, inp: HfSource, cfg: LoadLlmConfig, ctx: PassContext) -> PassResult[HfModel]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = ctx.workdir / "model"
        copy_checkpoint(inp.path, model_dir)
        try:  # never the checkpoint's own code (transformers would otherwise ask on a terminal)
            tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(
                str(model_dir), dtype=torch.float32, trust_remote_code=False
            ).eval()
        except (ValueError, OSError, KeyError, ImportError) as exc:
            raise ConfigError(
                f"source.checkpoint: {inp.meta.get('checkpoint') or inp.path} does not load as a Hugging Face causal "
                f"LM with its tokenizer ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); mscompile runs no "
                "remote code: give a folder transformers knows (config.json model_type, tokenizer files)"
            ) from None
        context = getattr(model.config, "max_position_embeddings", None)
        if cfg.texts:
            texts = [tok(t)["input_ids"][: cfg.max_tokens] for t in read_lines(cfg.texts)[: cfg.max_texts]]
            texts = [t for t in texts if len(t) >= 2]
            prompts = [tok(p)["input_ids"] for p in read_lines(cfg.prompts)[: cfg.max_prompts]]
        else:
            texts, prompts = synthetic_ids(tok, cfg, context)
        too_long = next((i for i, p in enumerate(prompts) if context and len(p) + cfg.new_tokens > context), None)
        if too_long is not None:
            raise ConfigError(
                f"validation.prompts: prompt {too_long + 1} is {len(prompts[too_long])} tokens; with "
                f"validation.new_tokens {cfg.new_tokens} that exceeds the model's context of {context} tokens "
                "(max_position_embeddings); shorten the prompt or lower new_tokens"
            )
        ctx.note(f"transformers reference: {len(texts)} passages, {len(prompts)} prompts x {cfg.new_tokens} tokens")
        nll, greedy = score(model, texts, prompts, cfg.new_tokens)
        ppl = math.exp(sum(n for n, _ in nll) / max(1, sum(c for _, c in nll)))
        ref = {"texts": texts, "prompts": prompts, "nll": nll, "greedy": greedy, "perplexity": ppl}
        (ctx.workdir / "reference.json").write_text(json.dumps(ref))
        meta = {"format": "huggingface", "dtype": "float32", "reference_perplexity": ppl}
        return PassResult(path=ctx.workdir, meta=meta, metrics={"reference_perplexity": ppl})


SYNTHETIC_TEXTS = 16
SYNTHETIC_PROMPTS = 8


def synthetic_ids(tok: Any, cfg: LoadLlmConfig, context: int | None) -> tuple[list[list[int]], list[list[int]]]:
    """No validation text given: seeded token ids (no special tokens), passages of up to
    max_tokens and prompts of 8-16 tokens, sized to fit the model's context. A parity
    check of the variant against the reference on the same ids; the perplexities of
    random tokens are high, their relative increase is what the gate reads."""
    import numpy as np

    rng = np.random.default_rng(0)
    special = set(tok.all_special_ids)
    ids = np.array([i for i in range(len(tok)) if i not in special])
    room = (context or 2048) - cfg.new_tokens
    length = max(8, min(cfg.max_tokens, 128, (context or 2048)))
    texts = [ids[rng.integers(0, len(ids), length)].tolist() for _ in range(min(cfg.max_texts, SYNTHETIC_TEXTS))]
    prompts = [
        ids[rng.integers(0, len(ids), max(2, min(int(rng.integers(8, 17)), room)))].tolist()
        for _ in range(min(cfg.max_prompts, SYNTHETIC_PROMPTS))
    ]
    return texts, prompts


def reference(ctx: PassContext) -> dict[str, Any]:
    """The load_llm step's reference (token ids, log-likelihoods, greedy tokens), a side input."""
    return json.loads((ctx.extras["reference"].path / "reference.json").read_text())


def gate_result(
    runtime: str,
    ref: dict[str, Any],
    nll: list[list[float]],
    greedy: list[list[int]],
    tol: LlmTolerance,
    inp: Any,
    ctx: PassContext,
    **extra: Any,
) -> PassResult[ParityReport]:
    """The gate's report (report.json) and pass result for a variant run on `runtime`."""
    metrics, failures = compare_llm(ref, nll, greedy, tol)
    report = {
        "runtime": runtime,
        "metrics": metrics,
        "failures": failures,
        "passed": not failures,
        "tolerance": tol.model_dump(exclude_none=True),
        "greedy": greedy,
        **extra,
    }
    path = ctx.workdir / "report.json"
    path.write_text(json.dumps(report, indent=2))
    meta = {
        "passed": not failures,
        "failures": failures,
        "metrics": metrics,
        "runtime": runtime,
        "model_digest": inp.digest,
        **extra,
    }
    return PassResult(
        path=path,
        meta=meta,
        metrics=metrics,
        status=Status.OK if not failures else Status.FAIL,
        reason="; ".join(failures),
    )


class VllmConfig(Section):
    dtype: str = "float32"
    quantization: str | None = None
    max_model_len: int = 512
    # the engine arguments the published model.json carries, so the gate and the
    # profile run the engine the server runs
    enforce_eager: bool = True
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: int | None = None
    tolerance: LlmTolerance = LlmTolerance()
    new_tokens: int = 32
    batches: tuple[int, ...] = (1, 8)


def engine_request(mode: str, inp: HfModel, cfg: VllmConfig, **rest: Any) -> dict[str, Any]:
    """A vLLM worker request for the variant at `inp` with cfg's engine settings."""
    return {
        "mode": mode,
        "model": str(inp.path / "model"),
        "dtype": cfg.dtype,
        "quantization": cfg.quantization,
        "max_model_len": cfg.max_model_len,
        "enforce_eager": cfg.enforce_eager,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "kv_cache_memory_bytes": cfg.kv_cache_memory_bytes,
        **rest,
    }


class CheckLlmVllm(Pass[HfModel, ParityReport]):
    name = "check_llm_vllm"
    version = 1
    input_type = HfModel
    output_type = ParityReport
    Config = VllmConfig
    libraries = ("vllm",)
    extra_inputs = ("reference",)

    def run(self, inp: HfModel, cfg: VllmConfig, ctx: PassContext) -> PassResult[ParityReport]:
        ref = reference(ctx)
        ctx.note(
            f"vLLM ({cfg.dtype}{', ' + cfg.quantization if cfg.quantization else ''}): "
            f"{len(ref['texts'])} passages, {len(ref['prompts'])} prompts"
        )
        new_tokens = len(ref["greedy"][0]) if ref["greedy"] else cfg.new_tokens
        req = engine_request("gate", inp, cfg, texts=ref["texts"], prompts=ref["prompts"], new_tokens=new_tokens)
        res = run_worker(req, ctx)
        return gate_result("vllm", ref, res["nll"], res["greedy"], cfg.tolerance, inp, ctx)


class ProfileLlmVllm(Pass[HfModel, ProfileReport]):
    name = "profile_llm_vllm"
    version = 1
    input_type = HfModel
    output_type = ProfileReport
    Config = VllmConfig
    libraries = ("vllm",)
    extra_inputs = ("reference",)
    device_dependent = True

    def run(self, inp: HfModel, cfg: VllmConfig, ctx: PassContext) -> PassResult[ProfileReport]:
        ref = reference(ctx)
        ctx.note(f"vLLM tokens/s at batch {', '.join(map(str, cfg.batches))}")
        req = engine_request(
            "profile", inp, cfg, prompts=ref["prompts"], new_tokens=cfg.new_tokens, batches=list(cfg.batches)
        )
        res = run_worker(req, ctx)
        return profile_result("vllm", res, ctx)


def profile_result(runtime: str, res: dict[str, Any], ctx: PassContext) -> PassResult[ProfileReport]:
    """A worker's tokens/s per batch as the profile report (profile.json)."""
    batches = [
        {"batch": int(b), "tokens_per_s": r["tokens_per_s"], "seconds": r["seconds"], "tokens": r["tokens"]}
        for b, r in res["profile"].items()
    ]
    path = ctx.workdir / "profile.json"
    path.write_text(json.dumps({"runtime": runtime, "batches": batches}, indent=2))
    return PassResult(
        path=path,
        meta={"runtime": runtime, "batches": batches},
        metrics={f"tokens_per_s_b{b['batch']}": b["tokens_per_s"] for b in batches},
    )


def decoder_layers(model_dir: Path) -> tuple[list[str], list[str]]:
    """The architecture's own modules, found structurally (the model built from its
    config on the meta device, no weights read): (every torch Linear inside the decoder
    blocks, i.e. under a numbered block of a module list, the output head excluded;
    every transformers Conv1D there, GPT-2's layout)."""
    import re

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    head = model.get_output_embeddings()
    linears, conv1d = [], []
    for name, m in model.named_modules():
        if m is head or not re.search(r"\.\d+\.", f".{name}."):
            continue
        if isinstance(m, torch.nn.Linear):
            linears.append(name)
        elif type(m).__name__ == "Conv1D":
            conv1d.append(name)
    return linears, conv1d


def target_patterns(names: list[str]) -> list[str]:
    """compressed-tensors targets that match exactly `names`: one regex per position in
    a block (the block index as \\d+) when every block has that layer, else the names."""
    import re
    from collections import defaultdict

    by: dict[str, set[str]] = defaultdict(set)
    for n in names:
        by[re.sub(r"\.(\d+)\.", ".#.", n, count=1)].add(n)
    blocks = {re.search(r"\.(\d+)\.", n).group(1) for n in names}  # type: ignore[union-attr]
    out = []
    for shape, members in sorted(by.items()):
        if len(members) == len(blocks):
            out.append("re:^" + re.escape(shape).replace("\\#", "#").replace("#", r"\d+") + "$")
        else:
            out += sorted(members)
    return out


class W8A8Config(Section):
    scheme: str = "w8a8-int8-rtn"


class QuantizeW8A8(Pass[HfModel, HfModel]):
    """W8A8 INT8 in the compressed-tensors format vLLM loads (`int-quantized`):
    per-output-channel symmetric INT8 weights by round-to-nearest (weight_scale =
    max|row| / 127) for every Linear layer inside the decoder blocks (and every
    transformers Conv1D there, GPT-2's, kept in its [in, out] layout, which vLLM's
    GPT-2 loader transposes), found from the architecture itself (decoder_layers), activations quantized per token at run
    time (dynamic, so no calibration data); embeddings, norms and the output head
    stay in float, and the config's targets name exactly the layers written. The recipe is recorded in the artifact's meta (and the manifest)."""

    name = "quantize_w8a8"
    version = 3
    input_type = HfModel
    output_type = HfModel
    Config = W8A8Config
    libraries = ("torch", "safetensors")

    def run(self, inp: HfModel, cfg: W8A8Config, ctx: PassContext) -> PassResult[HfModel]:
        import torch
        from safetensors.torch import load_file, save_file

        src = inp.path / "model"
        dst = ctx.workdir / "model"
        copy_checkpoint(src, dst)
        files = sorted(src.glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(f"quantize_w8a8 handles a single-file checkpoint; found {len(files)} safetensors files")
        linears, conv1d = decoder_layers(dst)
        if not linears and not conv1d:
            raise ValueError("quantize_w8a8 found no Linear layers inside the model's decoder blocks to quantize")
        tensors = load_file(str(files[0]))
        missing = [n for n in linears + conv1d if f"{n}.weight" not in tensors]
        if missing:
            raise ValueError(
                f"quantize_w8a8: the checkpoint has no weight for the decoder's Linear layer {missing[0]} "
                f"(and {len(missing) - 1} more); are the checkpoint's names the architecture's?"
            )
        wanted = {f"{n}.weight" for n in linears}
        # transformers Conv1D (GPT-2) stores [in, out]; vLLM's loader transposes every such
        # `.weight` (not its `.weight_scale`), so the INT8 weight stays in that layout and
        # its per-output-channel scale is written [out, 1] as for a Linear
        transposed = {f"{n}.weight" for n in conv1d}
        out: dict[str, torch.Tensor] = {}
        layers, worst = 0, 0.0
        for name, w in tensors.items():
            base = name[: -len(".weight")] if name.endswith(".weight") else None
            if (name in wanted or name in transposed) and w.ndim == 2 and base is not None:
                wf = w.float().t() if name in transposed else w.float()  # [out, in]
                scale = (wf.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=1e-12)
                q = torch.round(wf / scale).clamp(-128, 127).to(torch.int8)
                worst = max(worst, float((q.float() * scale - wf).abs().max() / wf.abs().max().clamp(min=1e-12)))
                out[name] = (q.t() if name in transposed else q).contiguous()
                out[f"{base}.weight_scale"] = scale.to(w.dtype).contiguous()
                layers += 1
            else:
                out[name] = w.contiguous()
        (dst / files[0].name).unlink()
        save_file(out, str(dst / files[0].name), metadata={"format": "pt"})
        config = json.loads((dst / "config.json").read_text())
        recipe = {
            "quant_method": "compressed-tensors",
            "format": "int-quantized",
            "quantization_status": "compressed",
            "config_groups": {
                "group_0": {
                    "targets": target_patterns(linears + conv1d),  # exactly the layers written in INT8
                    "weights": {
                        "num_bits": 8,
                        "type": "int",
                        "symmetric": True,
                        "strategy": "channel",
                        "dynamic": False,
                    },
                    "input_activations": {
                        "num_bits": 8,
                        "type": "int",
                        "symmetric": True,
                        "strategy": "token",
                        "dynamic": True,
                    },
                    "output_activations": None,
                }
            },
            "ignore": [],
        }
        config["quantization_config"] = recipe
        (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        ctx.note(
            f"W8A8 INT8 (round-to-nearest weights, dynamic per-token activations): {layers} layers"
            + (f" ({len(conv1d)} transformers Conv1D, in their [in, out] layout)" if conv1d else "")
        )
        meta = dict(inp.meta, quantization={"scheme": cfg.scheme, "layers": layers, "recipe": recipe})
        return PassResult(path=ctx.workdir, meta=meta, metrics={"layers": layers, "max_weight_rel_err": worst})


class LlmCompressorConfig(Section):
    scheme: str = "w8a8-sq-gptq"
    calibration: str  # the calibration text file
    calibration_sha256: str  # its contents are part of the cache key
    samples: int = 64
    max_tokens: int = 256
    smoothing_strength: float = 0.8


def write_llmc_reproduce(folder: Path, req: dict[str, Any]) -> None:
    """reproduce/: the worker, its request and reproduce.sh, which reruns the quantization
    under a Python with llmcompressor ($PYTHON) into a folder of your choice."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(LLMC_WORKER, folder / "llmc_worker.py")
    (folder / "request.json").write_text(json.dumps(req, indent=2))
    (folder / "reproduce.sh").write_text(
        "#!/usr/bin/env bash\n"
        f"# Generated by mscompile: reruns llmcompressor {req['scheme']} with the same settings and data.\n"
        "#   PYTHON=<a python with llmcompressor> bash reproduce.sh [OUTPUT_DIR]\n"
        "set -euo pipefail\n"
        'here="$(cd "$(dirname "$0")" && pwd)"\n'
        'out="${1:-$PWD/model}"\n'
        '"${PYTHON:-python}" "$here/llmc_worker.py" "$here/request.json" "$out.result.json" "$out"\n'
    )


class QuantizeLlmCompressor(Pass[HfModel, HfModel]):
    """A llmcompressor recipe (SmoothQuant + GPTQ W8A8, GPTQ W4A16, or FP8 dynamic),
    calibrated on the calibration text where the scheme needs it, in llmcompressor's
    own environment (a child process); the checkpoint is saved in compressed-tensors
    format. The recipe and the library version go into the artifact's meta (and
    the manifest)."""

    name = "quantize_llmcompressor"
    version = 2  # 2: reproduce/ beside the model
    input_type = HfModel
    output_type = HfModel
    Config = LlmCompressorConfig
    libraries = ()

    def run(self, inp: HfModel, cfg: LlmCompressorConfig, ctx: PassContext) -> PassResult[HfModel]:
        texts = read_lines(cfg.calibration)[: cfg.samples] if cfg.calibration else []
        what = {"w8a8-sq-gptq": "SmoothQuant + GPTQ W8A8", "w4a16-gptq": "GPTQ W4A16", "fp8-dynamic": "FP8 dynamic"}
        ctx.note(
            f"llmcompressor {what.get(cfg.scheme, cfg.scheme)}"
            + (f" on {len(texts)} calibration passages" if texts else " (no calibration data)")
        )
        out = ctx.workdir / "model"
        req = {
            "scheme": cfg.scheme,
            "model": str(inp.path / "model"),
            "output": str(out),
            "calibration": texts,
            "max_tokens": cfg.max_tokens,
            "smoothing_strength": cfg.smoothing_strength,
        }
        write_llmc_reproduce(ctx.workdir / "reproduce", req)
        res = run_llmcompressor(req, ctx)
        recipe = {
            "tool": "llmcompressor",
            "version": res.get("llmcompressor"),
            "modifiers": res.get("recipe"),
            "calibration_samples": res.get("samples"),
        }
        meta = dict(inp.meta, quantization={"scheme": cfg.scheme, "recipe": recipe})
        return PassResult(path=ctx.workdir, meta=meta, metrics={"calibration_samples": res.get("samples", 0)})
