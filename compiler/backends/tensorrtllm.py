"""TensorRT-LLM: a causal LM quantized by NVIDIA ModelOpt into a TensorRT-LLM
checkpoint, built into engines by trtllm-build, served by Triton's tensorrtllm
backend behind the inflight_batcher_llm ensemble (preprocessing -> tensorrt_llm
-> postprocessing).

The steps that need no GPU run anywhere: the ModelOpt export (FP8, INT8
SmoothQuant, INT4 AWQ, or none) and, for quantized checkpoints, a simulated
gate (ModelOpt's fake quantization in PyTorch) that catches a ruinous recipe
early. The engine build, the gate on the engine and the profile need
TensorRT-LLM and an NVIDIA GPU: where either is missing they are SKIPPED with
the reason, and the target is SKIPPED; `plan` still shows every config and the
trtllm-build command."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from mscompile.passes.trtllm import (
    BuildTrtllmEngine,
    CheckLlmSimulated,
    CheckLlmTrtllm,
    ExportTrtllmCheckpoint,
    ProfileLlmTrtllm,
    SimulatedGateConfig,
    TrtllmBuildConfig,
    TrtllmExportConfig,
    TrtllmRunConfig,
    build_command,
    trtllm_status,
)
from pydantic import Field

from ..data import text_file
from ..device import gpu_fingerprint
from ..llm import trtllm_repo as r
from ..llm.sections import LlmTargetBase
from ..pipeline import Step
from ..sections import Section
from .base import TOKENS_PER_S, Backend, Gate, Recipe, RecipeInputs, Requirement, ServedModel

if TYPE_CHECKING:
    from ..artifacts import Artifact


class TrtLlmServing(Section):
    """The tensorrt_llm model's parameters (read by Triton's tensorrtllm backend)."""

    batching: Literal["inflight_fused_batching", "inflight_batching", "V1"] = Field(
        default="inflight_fused_batching", description="gpt_model_type"
    )
    batch_scheduler_policy: Literal["guaranteed_no_evict", "max_utilization"] = "guaranteed_no_evict"
    kv_cache_free_gpu_mem_fraction: float = Field(default=0.9, gt=0, le=1)
    max_tokens_in_paged_kv_cache: int | None = Field(default=None, ge=1)
    enable_kv_cache_reuse: bool = False
    enable_chunked_context: bool = Field(
        default=False, description="also builds the engine with --use_paged_context_fmha enable"
    )
    max_queue_delay_microseconds: int = Field(default=0, ge=0)
    streaming: bool = Field(default=False, description="decoupled: tokens stream back as they are generated")
    gpu_device_ids: list[int] = Field(default_factory=list)


class TrtLlmTarget(LlmTargetBase):
    backend: Literal["tensorrtllm"]
    dtype: Literal["float16", "bfloat16"] = "float16"
    quantization: Literal["none", "fp8", "int8_sq", "int4_awq"] = Field(
        default="none",
        description="ModelOpt recipe: fp8 (FP8 weights and activations, Ada/Hopper and newer), int8_sq "
        "(INT8 SmoothQuant), int4_awq (INT4 AWQ weights, 16-bit activations); calibrated on the calibration text",
    )
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    max_batch_size: int = Field(default=8, ge=1, le=4096, description="engine and Triton max batch size")
    max_input_len: int = Field(default=512, ge=1)
    max_seq_len: int = Field(default=1024, ge=2, description="prompt plus generated tokens")
    max_num_tokens: int | None = Field(default=None, ge=1)
    build_args: list[str] = Field(default_factory=list, description="more trtllm-build flags, as given")
    add_special_tokens: bool = True
    skip_special_tokens: bool = True
    step_instances: int = Field(default=1, ge=1, le=64, description="instances of the pre/postprocessing models")
    python_path: list[str] = Field(
        default_factory=list,
        description="folders the pre/postprocessing models add to sys.path in Triton's Python "
        "(for transformers or tokenizers)",
    )
    serving: TrtLlmServing = Field(default_factory=TrtLlmServing)


class TensorRTLLMBackend(Backend):
    name = "tensorrtllm"
    speed = TOKENS_PER_S
    task = "text-generation"
    Target = TrtLlmTarget
    description = (
        "TensorRT-LLM engines (Triton tensorrtllm backend, inflight_batcher_llm ensemble); ModelOpt quantization"
    )

    def problems(self, cfg: Any, t: TrtLlmTarget, key: str) -> list[str]:
        out = []
        if t.quantization != "none" and cfg.calibration is None:
            out.append(f"{key}.quantization: {t.quantization} is calibrated: add a calibration: {{text: FILE}} section")
        if t.max_input_len >= t.max_seq_len:
            out.append(
                f"{key}.max_input_len: {t.max_input_len} leaves no room to generate within max_seq_len "
                f"{t.max_seq_len}; raise max_seq_len"
            )
        if cfg.validation.max_tokens > t.max_input_len:
            out.append(
                f"{key}.max_input_len: {t.max_input_len} is shorter than validation.max_tokens "
                f"{cfg.validation.max_tokens}: the engine's gate could not read the validation passages"
            )
        if cfg.validation.new_tokens + cfg.validation.max_tokens > t.max_seq_len:
            out.append(
                f"{key}.max_seq_len: {t.max_seq_len} is shorter than validation.max_tokens + new_tokens "
                f"({cfg.validation.max_tokens + cfg.validation.new_tokens})"
            )
        return out

    def requirements(self, t: TrtLlmTarget) -> list[Requirement]:
        return [Requirement("modelopt", "pip install 'mscompile[tensorrt]' (nvidia-modelopt)")]

    def resources(self, t: TrtLlmTarget) -> dict[str, Any]:
        return {"num_cpus": 1, "num_gpus": t.tensor_parallel_size}

    def skip_point(self, t: TrtLlmTarget) -> tuple[str, str] | None:
        """The engine build and what follows it need TensorRT-LLM on a GPU that runs the format."""
        ok, why = trtllm_status(t.quantization)
        return None if ok else (f"{t.name}/build_trtllm_engine", why)

    def fingerprint(self, t: TrtLlmTarget) -> dict[str, Any]:
        import importlib.metadata

        try:
            version = importlib.metadata.version("tensorrt_llm")
        except importlib.metadata.PackageNotFoundError:
            version = None
        return dict(gpu_fingerprint(), tensorrt_llm=version)

    def export_settings(self, cfg: Any, t: TrtLlmTarget) -> Any:
        texts: list[str] = []
        max_tokens = 256
        if t.quantization != "none":
            texts = text_file("calibration.text", cfg.calibration.text)[1][: cfg.calibration.samples]
            max_tokens = cfg.calibration.max_tokens
        return TrtllmExportConfig(
            quantization=t.quantization,
            dtype=t.dtype,
            tp_size=t.tensor_parallel_size,
            calibration=texts,
            max_tokens=max_tokens,
        )

    def build_settings(self, cfg: Any, t: TrtLlmTarget) -> Any:
        extra = list(t.build_args)
        if t.serving.enable_chunked_context and "--use_paged_context_fmha" not in extra:
            extra += ["--use_paged_context_fmha", "enable"]
        return TrtllmBuildConfig(
            quantization=t.quantization,
            max_batch_size=t.max_batch_size,
            max_input_len=t.max_input_len,
            max_seq_len=t.max_seq_len,
            max_num_tokens=t.max_num_tokens,
            gather_context_logits=t.tolerance.perplexity_increase is not None,
            extra_args=extra,
        )

    def recipe(self, cfg: Any, t: TrtLlmTarget, inputs: RecipeInputs) -> Recipe:
        device = self.device(t, inputs)
        ref = {"reference": inputs.reference}
        export = Step(f"{t.name}/export_trtllm_checkpoint", ExportTrtllmCheckpoint, self.export_settings(cfg, t))
        gates = []
        if t.quantization != "none":
            sim = Step(
                f"{t.name}/check_llm_simulated",
                CheckLlmSimulated,
                SimulatedGateConfig(tolerance=t.tolerance),
                extras=ref,
            )
            gates.append(Gate(sim, "modelopt-simulated", on="prepared", label="simulated quantization (PyTorch)"))
        run_cfg = TrtllmRunConfig(
            tolerance=t.tolerance, new_tokens=cfg.profile.new_tokens, batches=tuple(cfg.profile.batches)
        )
        engine = Step(f"{t.name}/build_trtllm_engine", BuildTrtllmEngine, self.build_settings(cfg, t), device=device)
        gates.append(
            Gate(Step(f"{t.name}/check_llm_trtllm", CheckLlmTrtllm, run_cfg, extras=ref, device=device), "tensorrt-llm")
        )
        profile = (
            Step(f"{t.name}/profile_llm_trtllm", ProfileLlmTrtllm, run_cfg, extras=ref, device=device)
            if cfg.profile.enabled
            else None
        )
        return Recipe(
            prepare=[export],
            deployable=engine,
            gates=gates,
            profile=profile,
            served_by="TensorRT-LLM (Triton tensorrtllm backend)",
        )

    def serving(
        self,
        cfg: Any,
        t: TrtLlmTarget,
        name: str,
        io_sig: dict[str, Any],
        artifact: Artifact | None,
    ) -> list[ServedModel]:
        """The inflight_batcher_llm models; each config is made for the version being
        published (the engine and tokenizer paths name the version folder)."""
        n = r.names(name)
        tok_files: dict[str, Any] = {}
        engine_files: dict[str, Any] = {}
        if artifact is not None:
            tok_files = {f.name: f for f in sorted((artifact.path / "tokenizer").iterdir()) if f.is_file()}
            engine_files = {f.name: f for f in sorted((artifact.path / "engine").iterdir()) if f.is_file()}

        def at(version: int | str, model_dir: str) -> str:
            return f"{model_dir}/{version}"

        def step(role: str, build: Any) -> ServedModel:  # a python model beside its tokenizer files
            return ServedModel(
                getattr(n, role),
                build(n, t, "<version folder>"),
                dict(tok_files),
                templates={"model.py": lambda v, d: r.step_model_py(role, t.python_path)},
                configure=lambda v, d: build(n, t, at(v, d)),
            )

        return [
            step("preprocessing", r.preprocessing_config),
            ServedModel(
                n.tensorrt_llm,
                r.tensorrt_llm_config(n, t, "<version folder>"),
                dict(engine_files),
                configure=lambda v, d: r.tensorrt_llm_config(n, t, at(v, d)),
            ),
            step("postprocessing", r.postprocessing_config),
            ServedModel(n.ensemble, r.ensemble_config(n, t), {}),
        ]

    def plan_details(self, cfg: Any, t: TrtLlmTarget) -> dict[str, Any]:
        cmd = build_command("<checkpoint>", "<engine>", self.build_settings(cfg, t))
        stop = self.stops_at(t)
        lines = ["engine: " + " ".join(cmd)]
        if stop:
            lines.append(f"stops at: {stop}")
        return {"trtllm_build": cmd, "stops_at": stop, "lines": lines}


BACKEND = TensorRTLLMBackend()
