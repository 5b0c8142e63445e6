"""task: text-generation: a causal LM (Hugging Face folder) served by its engine
(vLLM, TensorRT-LLM), gated in that engine against transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import Task


class TextGenerationTask(Task):
    name = "text-generation"
    description = "language models: vllm and tensorrtllm targets"
    backends_do = "builds language models"

    def config_model(self) -> Any:
        from ..llm.config import LlmModelConfig

        return LlmModelConfig

    def parse(self, data: dict[str, Any], where: str) -> Any:
        from ..config import parse_llm

        return parse_llm(data, where)

    def precision(self, target: Any) -> str:
        quantization = getattr(target, "quantization", "none")
        return quantization if quantization != "none" else str(getattr(target, "dtype", ""))

    def build(self, cfg: Any, config_path: Path, opts: Any) -> Any:
        from ..llm.build import build_llm

        return build_llm(cfg, config_path, opts)

    def plan(self, cfg: Any, opts: Any) -> dict[str, Any]:
        from ..llm.build import plan_llm

        return plan_llm(cfg, opts)

    def validate(self, cfg: Any, config_path: Path) -> list[str]:
        from ..llm.build import validate_llm

        return validate_llm(cfg, config_path)

    def shared_steps(self, cfg: Any, state: Any, stamp: str, force: bool) -> tuple[Any, Any, Any]:
        from ..backends import RecipeInputs, get
        from ..cache import Cache
        from ..instruments import Instruments
        from ..llm.build import describe_checkpoint, load_step
        from ..pipeline import Driver

        log_dir = state.build_logs(cfg.name, stamp)
        step = load_step(cfg)
        driver = Driver(
            Cache(state.cache), Instruments(log_dir / "events.jsonl", quiet=True), force=force, log_dir=log_dir
        )
        base = driver.run_step(step, describe_checkpoint(cfg, state)).output
        inputs = RecipeInputs(None, None, reference=step.id)  # type: ignore[arg-type]
        return driver, base, lambda t: get(t.backend).recipe(cfg, t, inputs)

    def serve_check(self, cfg: Any, state: Any, version: int | None, say: Any, server: dict[str, Any]) -> dict:
        if server.get("url") or server.get("grpc_url"):
            raise ConfigError(
                "serve-check --url: checking an LLM on a running Triton vllm backend is not built yet; "
                "without --url, serve-check serves the published checkpoint with vLLM's OpenAI server on loopback"
            )
        from ..llm.serve import serve_check_llm

        return serve_check_llm(
            cfg, state, version, server.get("concurrency", 8), say, load_timeout=server.get("load_timeout", 300.0)
        )

    def deploy(self, cfg: Any, state: Any, version: int | None, say: Any, server: dict[str, Any]) -> dict:
        raise ConfigError(
            f"{cfg.name}: deploy hands ONNX/OpenVINO/TensorRT models to Triton; for a text-generation model, "
            "publish with build and check it with serve-check (vLLM's OpenAI server on loopback)"
        )


TASK = TextGenerationTask()
