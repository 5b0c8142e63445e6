"""TensorRT: a strongly typed engine built from the shared graph, served by
Triton's tensorrt backend.

The graph carries the precision (ModelOpt AutoCast for fp16/bf16, ModelOpt
Q/DQ for int8/fp8), is gated on ONNX Runtime first (a bad quantization is
caught without a GPU), then the engine is built with Polygraphy in a child
process and gated on TensorRT itself. Needs TensorRT, Polygraphy, ModelOpt and
an NVIDIA GPU: where any is missing the target is SKIPPED, naming it, before
any of its passes runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from mscompile.passes.autocast import AutoCast, AutoCastConfig
from mscompile.passes.build_tensorrt import BuildTensorRT, ProfileConfig, TensorRTConfig, TrtBuildConfig
from mscompile.passes.check_accuracy_trt import CheckAccuracyTrt
from mscompile.passes.quantize_modelopt import ModelOptConfig, QuantizeModelOpt
from pydantic import Field

from ..artifacts import Artifact
from ..device import gpu_fingerprint, tensorrt_status
from ..pipeline import Step
from ..runtimes import onnxruntime_session, tensorrt_session
from ..sections import RangeConfig, TargetBase, is_dynamic
from ..tritonrepo.config import base_model_config
from .base import Backend, Gate, Recipe, RecipeInputs, Requirement, ServedModel, parity_step

if TYPE_CHECKING:
    from ..config import ModelConfig


QUANT_KEYS = ("calibration_method", "exclude_nodes", "exclude_op_types", "high_precision_dtype")


class TensorRTTarget(TargetBase):
    backend: Literal["tensorrt"]
    precision: Literal["fp32", "tf32", "fp16", "bf16", "int8", "fp8"] = "fp32"
    keep_io_types: bool = Field(default=True, description="fp16/bf16: keep graph inputs/outputs fp32")
    calibration_method: Literal["minmax", "entropy"] = Field(
        default="minmax", description="int8/fp8: ModelOpt's max or entropy calibration"
    )
    exclude_nodes: list[str] = Field(default_factory=list, description="int8/fp8: node names kept in float")
    exclude_op_types: list[str] = Field(default_factory=list, description="int8/fp8: op types kept in float")
    high_precision_dtype: Literal["fp32", "fp16"] = Field(
        default="fp32", description="int8/fp8: dtype of the layers ModelOpt leaves unquantized"
    )
    tensorrt: TensorRTConfig = Field(default_factory=TensorRTConfig)
    gpus: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]] = Field(
        default_factory=list,
        description="on a build farm (--ray): the GPU kinds to build an engine for, as Ray accelerator types "
        "(H100, A100, L4, ...); each engine is built and gated on a node of that kind",
    )


def trt_profiles(cfg: ModelConfig, t: TensorRTTarget) -> list[ProfileConfig]:
    """The target's optimization profiles: given, or one built from inputs[].range."""
    if t.tensorrt.profiles:
        return list(t.tensorrt.profiles)
    shapes = {}
    for inp in cfg.inputs:
        if inp.range is not None:
            shapes[inp.name] = inp.range
        else:
            fixed = [int(d) for d in inp.shape]  # validated: no dynamic dims without a range
            shapes[inp.name] = RangeConfig(min=fixed, opt=fixed, max=fixed)
    return [ProfileConfig(name="default", shapes=shapes)]


class TensorRTBackend(Backend):
    name = "tensorrt"
    Target = TensorRTTarget
    description = "TensorRT engines (Triton tensorrt backend); fp32, tf32, fp16, bf16, int8, fp8 (strongly typed)"

    def problems(self, cfg: ModelConfig, t: TensorRTTarget, key: str) -> list[str]:
        out = []
        quantized = t.precision in ("int8", "fp8")
        if quantized and cfg.calibration is None:
            out.append(
                f"{key}.precision: {t.precision} needs a calibration: section (data the quantizer measures ranges on)"
            )
        if not quantized:
            for k in QUANT_KEYS:
                if k in t.model_fields_set:
                    out.append(f"{key}.{k}: only applies to precision int8 or fp8 (this target is {t.precision})")
        out.extend(_profile_problems(cfg, t, key))
        profs = t.tensorrt.profiles
        if cfg.has_batch_axis() and profs and all(cfg.inputs[0].name in p.shapes for p in profs):
            prof_max = max(p.shapes[cfg.inputs[0].name].max[0] for p in profs)
            if cfg.max_batch_size() > prof_max:
                where = key.split(": ")[0]
                index = key.rsplit("[", 1)[-1].rstrip("]")
                out.append(
                    f"{where}: triton.max_batch_size: {cfg.max_batch_size()} exceeds the largest batch of "
                    f"targets[{index}].tensorrt.profiles ({prof_max}); Triton would send batches the engine rejects"
                )
        return out

    def resources(self, t: TensorRTTarget) -> dict[str, Any]:
        return {"num_cpus": 1, "num_gpus": 1}

    def requirements(self, t: TensorRTTarget) -> list[Requirement]:
        reqs = [
            Requirement("tensorrt", "comes with NVIDIA's TensorRT (the Dockerfile's base image)"),
            Requirement("polygraphy", "pip install 'mscompile[tensorrt]'"),
        ]
        if t.precision not in ("fp32", "tf32"):
            reqs.append(Requirement("modelopt", "pip install 'mscompile[tensorrt]' (nvidia-modelopt)"))
        return reqs

    def available(self, t: TensorRTTarget) -> tuple[bool, str]:
        ok, why = super().available(t)
        if not ok:
            return ok, why

        return tensorrt_status()  # the rule the engine build and its gate check again when they run

    def fingerprint(self, t: TensorRTTarget) -> dict[str, Any]:
        return gpu_fingerprint()

    def session(self, t: TensorRTTarget) -> Any:
        return tensorrt_session

    def recipe(self, cfg: ModelConfig, t: TensorRTTarget, inputs: RecipeInputs) -> Recipe:
        prepare: list[Step] = []
        if t.precision in ("fp16", "bf16"):
            # strongly typed network: the graph carries the precision
            prepare.append(
                Step(
                    f"{t.name}/autocast",
                    AutoCast,
                    AutoCastConfig(low_precision_type=t.precision, keep_io_types=t.keep_io_types),
                )
            )
        if t.precision in ("int8", "fp8"):
            prepare.append(
                Step(
                    f"{t.name}/quantize_modelopt",
                    QuantizeModelOpt,
                    ModelOptConfig(
                        precision=t.precision,
                        calibration_method="entropy" if t.calibration_method == "entropy" else "max",
                        high_precision_dtype=t.high_precision_dtype,
                        exclude_nodes=tuple(t.exclude_nodes),
                        exclude_op_types=tuple(t.exclude_op_types),
                        io=cfg.io,
                    ),
                    extras={"calibration": inputs.calibration},
                )
            )
        device = self.device(t, inputs)
        build = Step(
            f"{t.name}/build_tensorrt",
            BuildTensorRT,
            TrtBuildConfig(precision=t.precision, profiles=trt_profiles(cfg, t), settings=t.tensorrt, io=cfg.io),
            device=device,
        )
        gates = [
            Gate(
                parity_step(cfg, t, f"{t.name}/check_accuracy_onnx", inputs, session=onnxruntime_session),
                "onnxruntime",
                on="prepared",
                label="the ONNX graph for TensorRT misses the gate on ONNX Runtime",
                optional=True,  # ONNX Runtime's CPU kernels lack bf16/fp8: the engine's own gate decides
            ),
            Gate(
                parity_step(
                    cfg,
                    t,
                    f"{t.name}/check_accuracy_trt",
                    inputs,
                    pass_cls=CheckAccuracyTrt,
                    device=device,
                    runtime="tensorrt",
                    session=tensorrt_session,
                ),
                "tensorrt",
            ),
        ]
        # engines are profiled where they run (Triton's perf_analyzer on the GPU): no CPU profile here
        return Recipe(prepare=prepare, deployable=build, gates=gates, served_by="TensorRT")

    def serving(
        self,
        cfg: ModelConfig,
        t: TensorRTTarget,
        name: str,
        io_sig: dict[str, Any],
        artifact: Artifact | None,
        engines: dict[str, Artifact] | None = None,
    ) -> list[ServedModel]:
        """One engine (model.plan), or one per GPU kind (`engines`: compute capability ->
        engine, from a farm build): model.sm<cc>.plan each, mapped by cc_model_filenames."""
        mc = base_model_config(
            cfg,
            name,
            io_sig,
            platform="tensorrt_plan",
            backend="tensorrt",
            filename="model.plan",
            on_gpu=True,
        )
        profiles = trt_profiles(cfg, t)
        if len(profiles) > 1:
            for ig in mc.instance_group:
                # every instance may pick among all profiles; the server chooses by input shape
                ig.profile.extend(str(i) for i in range(len(profiles)))
        files = {"model.plan": artifact.path / "model.plan"} if artifact is not None else {}
        if engines:
            mc.ClearField("default_model_filename")  # a GPU of another capability finds no engine: said at load
            files = {}
            for cc, engine in sorted(engines.items()):
                fname = f"model.sm{cc.replace('.', '')}.plan"
                mc.cc_model_filenames[cc] = fname
                files[fname] = engine.path / "model.plan"
        return [ServedModel(name, mc, files)]

    def plan_details(self, cfg: ModelConfig, t: TensorRTTarget) -> dict[str, Any]:
        profiles = trt_profiles(cfg, t)
        lines = []
        for p in profiles:
            shapes = ", ".join(
                f"{k} min={tuple(v.min)} opt={tuple(v.opt)} max={tuple(v.max)}" for k, v in p.shapes.items()
            )
            lines.append(f"TensorRT profile {p.name!r}: {shapes}")
        return {"profiles": [p.model_dump() for p in profiles], "lines": lines}


def _profile_problems(cfg: ModelConfig, t: TensorRTTarget, key: str) -> list[str]:
    """TensorRT needs bounded dynamic dimensions: every profile is min/opt/max."""
    out = []
    where = key.split(": ")[0]
    if t.tensorrt.profiles is None:
        for i, inp in enumerate(cfg.inputs):
            if inp.range is None and any(is_dynamic(d) for d in inp.shape):
                out.append(
                    f"{where}: inputs[{i}].shape: dynamic dimension in {inp.shape} needs min/opt/max "
                    f"under inputs[{i}].range for TensorRT target {t.name!r} (or give {t.name}.tensorrt.profiles)"
                )
        return out
    names = [i.name for i in cfg.inputs]
    for j, prof in enumerate(t.tensorrt.profiles):
        pk = f"{key}.tensorrt.profiles[{j}]"
        absent = [n for n in names if n not in prof.shapes]
        extra = [n for n in prof.shapes if n not in names]
        if absent or extra:
            out.append(f"{pk}.shapes: needs exactly the inputs {names} (missing {absent}, unknown {extra})")
            continue
        for inp in cfg.inputs:
            r = prof.shapes[inp.name]
            if any(len(getattr(r, p)) != len(inp.shape) for p in ("min", "opt", "max")):
                out.append(
                    f"{pk}.shapes.{inp.name}: min/opt/max need {len(inp.shape)} dimensions each, like shape {inp.shape}"
                )
                continue
            for ax, d in enumerate(inp.shape):
                lo, opt, hi = r.min[ax], r.opt[ax], r.max[ax]
                if not (1 <= lo <= opt <= hi):
                    out.append(
                        f"{pk}.shapes.{inp.name}: dimension {ax} needs 1 <= min <= opt <= max, got min={lo} opt={opt} max={hi}"
                    )
                elif not is_dynamic(d) and not (lo == hi == d):
                    out.append(
                        f"{pk}.shapes.{inp.name}: dimension {ax} is fixed at {d} in shape, got min={lo} max={hi}"
                    )
    if len({p.name for p in t.tensorrt.profiles}) != len(t.tensorrt.profiles):
        out.append(f"{key}.tensorrt.profiles: profile names must be unique")
    return out


BACKEND = TensorRTBackend()
