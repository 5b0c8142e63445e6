"""task: text-generation: a causal LM (Hugging Face folder) served by its engine
(vLLM, TensorRT-LLM), gated in that engine against transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifacts import HfModel, HfSource
from ..backends import RecipeInputs, get
from ..builder import Prepared
from ..cache import Cache
from ..config import llm_problems, resolve_path
from ..errors import ConfigError
from ..instruments import Instruments
from ..llm.build import describe_checkpoint, load_step, publish_served, validate_llm
from ..llm.config import LlmModelConfig
from ..llm.serve import serve_check_llm
from ..llm.trtllm_repo import check_wiring
from ..pipeline import Driver, Pipeline, Status
from ..publish import Deployment
from ..tritonrepo.config import to_text
from ..tritonrepo.writer import versions
from .base import Task


class TextGenerationTask(Task):
    name = "text-generation"
    description = "language models: vllm and tensorrtllm targets"
    backends_do = "builds language models"
    config_hint = "an LLM model.yaml: source.checkpoint a Hugging Face folder, validation text and prompts"

    def config_model(self) -> Any:
        return LlmModelConfig

    def problems(self, cfg: Any, where: str) -> list[str]:
        return llm_problems(cfg, where)

    def precision(self, target: Any) -> str:
        quantization = getattr(target, "quantization", "none")
        return quantization if quantization != "none" else str(getattr(target, "dtype", ""))

    def preflight(self, cfg: Any) -> None:
        repo = resolve_path(cfg.triton.repository)
        if repo.exists() and not repo.is_dir():
            raise ConfigError(f"triton.repository: {repo} is a file, not a folder")

    def prepare(self, cfg: Any, state: Any, devices: dict[str, Any]) -> Any:
        source = describe_checkpoint(cfg, state)
        step = load_step(cfg)
        inputs = RecipeInputs(None, None, reference=step.id, devices=devices)  # type: ignore[arg-type]
        recipes = {}
        for t in cfg.targets:  # every recipe is built and type-checked before anything runs
            recipes[t.name] = get(t.backend).recipe(cfg, t, inputs)
            recipes[t.name].typecheck(HfModel)
        shared = Pipeline([step], input_type=HfSource)
        sources = {"checkpoint": {"path": str(source.path), "digest": source.digest}}
        return Prepared(source, shared, recipes, inputs, None, {"sources": sources})

    def choose(self, cfg: Any, variants: list[Any]) -> tuple[list[str], str | None]:
        """A named target, or the fastest passing one by its backend's figure (tokens/s at
        its best batch), or the first that passed."""
        ok = [v for v in variants if v.status is Status.OK]
        want = cfg.triton.deploy
        if not ok:
            return [], None
        if want == "fastest":

            def rank(v: Any) -> float:
                speed = get(v.backend).speed
                return min((speed.rank(r) for r in (v.profile or {}).get("batches", [])), default=float("inf"))

            best = min(ok, key=rank)
            return [best.target], f"fastest passing variant is {best.target}"
        if want:
            return [v.target for v in ok if v.target == want], None
        return [ok[0].target], None

    def deployments(self, cfg: Any, chosen: list[Any]) -> list[Any]:
        v = chosen[0]
        return [Deployment(cfg.name, v.target, v.model)]

    def manifest_extras(self, cfg: Any, prep: Any, result: Any) -> dict[str, Any]:
        load = next((r for r in result.records if r.id == prep.shared.steps[0].id), None)
        meta = load.output.meta if load is not None and load.output is not None else {}
        return {"reference": {"runtime": "transformers (CPU, float32)", **(meta or {})}}

    def before_publish(self, cfg: Any, deployments: list[Any], result: Any, instruments: Any, prep: Any = None) -> None:
        if cfg.validation.text is None:
            instruments.warn(
                "validation: no text given, so the gates compared the variants with transformers on seeded "
                "synthetic token ids (perplexity increase and greedy agreement on random tokens); set "
                "validation.text and validation.prompts to text like what you serve"
            )

    def publish(self, cfg: Any, deployments: list[Any], manifest: dict, result: Any, instruments: Any) -> list:
        """What the deployed variant's backend serves (an ensemble last, its members.json
        recording the member versions published with it)."""
        d = deployments[0]
        target = next(t for t in cfg.targets if t.name == d.target)
        served = get(target.backend).serving(cfg, target, cfg.name, {}, d.model)
        repo = resolve_path(cfg.triton.repository)
        server_repo = cfg.triton.server_repository or str(repo)
        return publish_served(cfg, repo, server_repo, served, dict(manifest, deployed_variant=d.target))

    def plan_io(self, cfg: Any, base: Any) -> tuple[dict[str, Any], str]:
        return {}, "the backend's fixed text tensors"

    def plan_served(self, cfg: Any, target: Any, io_sig: dict[str, Any]) -> dict[str, Any]:
        """Each model's config as the next version would have it (configs and files that
        name their own version folder filled in), the files' text, and the wiring check."""
        repo = resolve_path(cfg.triton.repository)
        server_repo = cfg.triton.server_repository or str(repo)
        files, configs = {}, {}
        for m in get(target.backend).serving(cfg, target, cfg.name, io_sig, None):
            d = f"{server_repo.rstrip('/')}/{m.name}"
            nxt = (versions(repo / m.name) or [0])[-1] + 1
            configs[m.name] = m.configure(nxt, d) if m.configure is not None else m.config
            for k, f in m.templates.items():
                if k != "model.py":  # generated step code: shown by its name only
                    files[f"{m.name}/{nxt}/{k}"] = f(nxt, d)
        return {
            "lines": [f"{name}:\n  " + text.rstrip().replace("\n", "\n  ") for name, text in files.items()],
            "models": {name: to_text(mc) for name, mc in configs.items()},
            "wiring_problems": check_wiring(configs),
        }

    def validate(self, cfg: Any, config_path: Path) -> list[str]:
        return validate_llm(cfg, config_path)

    def shared_steps(self, cfg: Any, state: Any, stamp: str, force: bool) -> tuple[Any, Any, Any]:
        log_dir = state.build_logs(cfg.name, stamp)
        step = load_step(cfg)
        driver = Driver(
            Cache(state.cache), Instruments(log_dir / "events.jsonl", quiet=True), force=force, log_dir=log_dir
        )
        base = driver.run_step(step, describe_checkpoint(cfg, state)).output
        inputs = RecipeInputs(None, None, reference=step.id)  # type: ignore[arg-type]
        return driver, base, lambda t: get(t.backend).recipe(cfg, t, inputs)

    def serve_check(self, cfg: Any, state: Any, version: int | None, say: Any, server: dict[str, Any]) -> dict:
        if server.get("rayserve"):
            raise ConfigError(
                "serve-check --rayserve: Ray Serve apps are written for tensor models; a text-generation model "
                "is checked on vLLM's OpenAI server (serve-check without --rayserve)"
            )
        if server.get("perf"):
            raise ConfigError(
                "serve-check --perf: perf_analyzer capacity runs for tensor models on Triton; an LLM's profile "
                "(tokens/s) comes from the build"
            )
        if server.get("url") or server.get("grpc_url"):
            raise ConfigError(
                "serve-check --url: checking an LLM on a running Triton vllm backend is not built yet; "
                "without --url, serve-check serves the published checkpoint with vLLM's OpenAI server on loopback"
            )
        return serve_check_llm(
            cfg, state, version, server.get("concurrency", 8), say, load_timeout=server.get("load_timeout") or 300.0
        )

    def deploy(self, cfg: Any, state: Any, version: int | None, say: Any, server: dict[str, Any]) -> dict:
        raise ConfigError(
            f"{cfg.name}: deploy hands ONNX/OpenVINO/TensorRT models to Triton; for a text-generation model, "
            "publish with build and check it with serve-check (vLLM's OpenAI server on loopback)"
        )


TASK = TextGenerationTask()
