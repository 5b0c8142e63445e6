"""model.yaml -> frozen pydantic models, one section per pass.

Unknown keys are rejected. Every error names its key path in model.yaml and
what is allowed. Relative paths in model.yaml are resolved against the current
working directory (the directory `mscompile` is run from), like the examples in
the README.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

# Triton model names become folder names: keep them to a portable, path-safe set.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
_NAME_RE = re.compile(NAME_PATTERN)
FACTORY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*$"

DType = Literal["float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool"]
Precision = Literal["fp32", "tf32", "fp16", "bf16", "int8", "fp8"]
Backend = Literal["onnxruntime", "tensorrt"]

MAX_VALIDATION_SAMPLES = 100_000


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value) or value in {".", ".."}:
        raise ValueError(
            f"{what} {value!r} must be 1-128 characters of letters, digits, '_', '.', '-' "
            "and must not start with '.' or '-' (it becomes a folder name in the Triton repository)"
        )
    return value


class SourceConfig(Section):
    """Where the PyTorch model comes from."""

    checkpoint: str = Field(
        description="state_dict (.pt/.pth), .safetensors, TorchScript (.pt) or torch.export (.pt2) file; "
        "'pkg:<package>/<path>' names a file shipped inside an installed Python package"
    )
    factory: Annotated[str, Field(pattern=FACTORY_PATTERN)] | None = Field(
        default=None,
        description="module:callable returning the nn.Module (needed for state dicts and safetensors)",
    )
    factory_args: dict[str, Any] = Field(default_factory=dict)
    state_dict_key: str | None = Field(
        default=None, description="key of the state dict inside a checkpoint dict, e.g. 'model'"
    )
    trust_pickle: bool = Field(
        default=False,
        description="allow full pickles (arbitrary code runs on load); only for checkpoints you trust",
    )


class RangeConfig(Section):
    """min/opt/max shapes of one input: the optimization profile of TensorRT, the
    warm-up shape of Triton and the bounds of dynamic dimensions."""

    min: list[int]
    opt: list[int]
    max: list[int]


class InputSpec(Section):
    name: str = Field(min_length=1)
    dtype: DType = "float32"
    shape: list[int | str] = Field(
        min_length=1,
        description="-1 or a name marks a dynamic dimension; inputs sharing a name share the dimension",
    )
    range: RangeConfig | None = None

    @field_validator("shape")
    @classmethod
    def _dims(cls, v: list[int | str]) -> list[int | str]:
        for d in v:
            if isinstance(d, int) and d != -1 and d < 1:
                raise ValueError(f"dimension {d} must be a positive size, -1 (dynamic) or a name")
            if isinstance(d, str) and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", d):
                raise ValueError(f"dimension name {d!r} must be an identifier")
        return v


class OutputSpec(Section):
    name: str = Field(min_length=1)


class IOSpec(Section):
    """The model's inputs and outputs, as declared (the part several passes need)."""

    inputs: list[InputSpec]
    outputs: list[OutputSpec]

    def has_batch_axis(self) -> bool:
        return all(_is_dynamic(i.shape[0]) for i in self.inputs)

    def dim_name(self, inp: InputSpec, axis: int) -> str | None:
        """Symbolic name of a dynamic dimension (None for a fixed one)."""
        d = inp.shape[axis]
        if isinstance(d, str):
            return d
        if d == -1:
            return "batch" if axis == 0 and self.has_batch_axis() else f"{inp.name}_dim{axis}"
        return None


class ExportConfig(Section):
    opset: int = Field(default=18, ge=13, le=23)
    exporter: Literal["auto", "dynamo", "torchscript"] = Field(
        default="auto",
        description="auto tries torch.export (dynamo) first and falls back to the TorchScript exporter, recording why",
    )


class OptimizeConfig(Section):
    level: Literal["none", "basic", "slim"] = Field(
        default="basic",
        description="none: shape inference only; basic: ONNX Runtime's basic offline rewrites "
        "(constant folding, redundant nodes; standard ONNX ops only, safe for every target); "
        "slim: onnxslim, then basic",
    )


class DataSource(Section):
    """Where model inputs come from: exactly one of `data` (a file or folder) or
    `generator` (module:callable yielding feed dicts)."""

    data: str | None = Field(
        default=None,
        description=".npz (one array per input, samples on axis 0), a folder of .npz/.npy files, "
        "or a .txt file of lines turned into inputs by `tokenizer`",
    )
    generator: Annotated[str, Field(pattern=FACTORY_PATTERN)] | None = Field(
        default=None, description="module:callable returning an iterable of {input name: array} batches"
    )
    generator_args: dict[str, Any] = Field(default_factory=dict)
    tokenizer: Annotated[str, Field(pattern=FACTORY_PATTERN)] | None = Field(
        default=None, description="module:callable taking a list of strings, returning {input name: array}"
    )
    tokenizer_args: dict[str, Any] = Field(default_factory=dict)
    samples: int | None = Field(default=None, ge=1, le=MAX_VALIDATION_SAMPLES)


class ValidationConfig(DataSource):
    labels: str | None = Field(default=None, description="name of the array in `data` holding integer class labels")
    batch_size: int = Field(default=32, ge=1, le=4096)


class CalibrationConfig(DataSource):
    """Calibration set for INT8/FP8: kept apart from the validation set."""

    seed: int = Field(default=0, description="seed of the random subset when `samples` is below the set's size")
    batch_size: int = Field(default=16, ge=1, le=4096)


class Tolerance(Section):
    """Accuracy gate of a variant against the PyTorch reference. Every key set
    here must hold for the variant to pass; unset keys are not checked."""

    max_abs: float | None = Field(default=None, ge=0, description="max |variant - reference|")
    max_rel: float | None = Field(
        default=None, ge=0, description="max |variant - reference| / max |reference|, per output"
    )
    cosine: float | None = Field(default=None, ge=-1, le=1, description="mean cosine similarity over samples")
    cosine_min: float | None = Field(default=None, ge=-1, le=1, description="minimum cosine similarity over samples")
    top1_agreement: float | None = Field(
        default=None, ge=0, le=1, description="fraction of samples with the same argmax"
    )
    accuracy_drop: float | None = Field(
        default=None, ge=0, description="task accuracy lost vs PyTorch, in percentage points"
    )


class RecoveryConfig(Section):
    """What to do when an INT8 variant misses its gate: rank tensors by quantization
    noise (SQNR), keep the worst nodes in float, re-quantize, re-check."""

    enabled: bool = True
    max_tries: int = Field(default=4, ge=1, le=20, description="quantization attempts in all, the first included")
    max_excluded_fraction: float = Field(
        default=0.3, gt=0, le=1, description="most quantizable nodes that may be left in float"
    )


class ProfileConfig(Section):
    """One TensorRT optimization profile: min/opt/max per input."""

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    shapes: dict[str, RangeConfig]


class TensorRTConfig(Section):
    """Engine build settings (backend: tensorrt)."""

    profiles: list[ProfileConfig] | None = Field(
        default=None, description="optimization profiles; default: one profile from inputs[].range"
    )
    workspace_mb: int = Field(default=4096, ge=16)
    builder_optimization_level: int = Field(default=3, ge=0, le=5)
    hardware_compatibility_level: Literal["none", "ampere_plus", "same_compute_capability"] = "none"
    version_compatible: bool = False
    refittable: bool = False
    timing_cache: bool = Field(default=True, description="reuse a timing cache kept per GPU kind in the state folder")


class OrtGpuConfig(Section):
    """ONNX Runtime on GPU without an engine build: written into config.pbtxt."""

    accelerator: Literal["cuda", "tensorrt"] = "cuda"
    precision_mode: Literal["FP32", "FP16", "INT8"] = "FP16"
    max_workspace_size_bytes: int = Field(default=1 << 30, ge=1 << 20)
    trt_engine_cache_enable: bool = True
    trt_engine_cache_path: str | None = None


class CpuServingConfig(Section):
    """ONNX Runtime on CPU in Triton: execution accelerator and threads (config.pbtxt)."""

    accelerator: Literal["none", "openvino"] = "none"
    intra_op_threads: int = Field(default=0, ge=0, description="0: ONNX Runtime's default")
    inter_op_threads: int = Field(default=0, ge=0)


class ProfileSettings(Section):
    """How variants are profiled (latency and throughput per batch size)."""

    enabled: bool = True
    batch_sizes: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None, description="default: 1 and the batch range's opt"
    )
    window: int = Field(default=10, ge=3, le=10_000, description="calls per timing window")
    max_windows: int = Field(default=8, ge=2, le=100)
    agreement: float = Field(default=0.05, gt=0, le=1, description="p50 of two windows must agree within this")


class TargetConfig(Section):
    name: str
    backend: Backend = "onnxruntime"
    precision: Precision = "fp32"
    keep_io_types: bool = Field(default=True, description="fp16: keep graph inputs/outputs fp32")
    graph_fusion: Literal["none", "bert"] = Field(
        default="none",
        description="onnxruntime only: ONNX Runtime's transformer fusion (Attention, SkipLayerNorm, "
        "BiasGelu contrib ops) before precision conversion",
    )
    mode: Literal["static", "dynamic", "auto"] = Field(
        default="static",
        description="onnxruntime int8: static QDQ (calibrated), dynamic (weights only; "
        "for transformer MatMuls), or auto (static with recovery, then dynamic; keeps the first that passes)",
    )
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    percentile: float = Field(default=99.999, gt=90, le=100, description="with calibration_method: percentile")
    num_bins: int = Field(default=2048, ge=128, le=65536, description="histogram bins for percentile/entropy")
    per_channel: bool = True
    exclude_nodes: list[str] = Field(default_factory=list, description="node names kept in float")
    exclude_op_types: list[str] = Field(default_factory=list, description="op types kept in float")
    high_precision_dtype: Literal["fp32", "fp16"] = Field(
        default="fp32", description="tensorrt int8/fp8: dtype of the layers ModelOpt leaves unquantized"
    )
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    tensorrt: TensorRTConfig | None = Field(default=None, description="backend: tensorrt only")
    cpu: CpuServingConfig | None = Field(default=None, description="backend: onnxruntime only: CPU serving options")
    gpu: OrtGpuConfig | None = Field(
        default=None, description="backend: onnxruntime only: serve on GPU through ORT's CUDA or TensorRT provider"
    )
    tolerance: Tolerance = Field(default_factory=Tolerance)

    def trt(self) -> TensorRTConfig:
        return self.tensorrt or TensorRTConfig()

    on_fail: Literal["error", "skip"] = Field(
        default="error",
        description="error: a missed gate fails the build (exit 3); skip: leave the variant out",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "target name")


class DynamicBatching(Section):
    preferred_batch_size: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    max_queue_delay_microseconds: int = Field(default=0, ge=0)


class InstanceGroup(Section):
    kind: Literal["KIND_CPU", "KIND_GPU", "KIND_AUTO"] = "KIND_CPU"
    count: int = Field(default=1, ge=1)
    gpus: list[int] | None = None


class VersionPolicy(Section):
    latest: int | None = Field(default=None, ge=1)
    all: bool | None = None
    specific: list[Annotated[int, Field(ge=1)]] | None = None


class RetentionConfig(Section):
    """Prune old version folders after a successful publish; versions the
    version_policy serves are never pruned."""

    keep_last: int = Field(ge=1)


class TritonConfig(Section):
    repository: str = "model_repository"
    max_batch_size: int | None = Field(
        default=None,
        ge=0,
        description="defaults to the batch dimension's range max (0 when inputs have no batch axis)",
    )
    dynamic_batching: DynamicBatching | None = None
    instance_group: list[InstanceGroup] = Field(default_factory=lambda: [InstanceGroup()])
    version_policy: VersionPolicy | None = None
    warmup: bool = False
    retention: RetentionConfig | None = None
    lock_timeout_s: float = Field(
        default=600, gt=0, description="how long to wait for another build's lock on the model"
    )
    deploy: str | None = Field(
        default=None,
        description="fastest | smallest (among variants that passed) | a target name, published as <name>; "
        "or all: each variant as <name>_<target>; default: the first target that passes its gate",
    )


class MlflowConfig(Section):
    """Build tracking (not part of any pass's cache key). Key `register` in model.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    tracking_uri: str | None = Field(
        default=None, description="default: $MLFLOW_TRACKING_URI, else .mscompile/mlflow.db"
    )
    experiment: str | None = Field(default=None, description="default: mscompile/<name>")
    log_models: bool = Field(default=False, description="also log every variant's model files as artifacts")
    register_model: bool = Field(
        default=False, alias="register", description="register the published Triton model in the Model Registry"
    )
    registered_model_name: str | None = None


class ModelConfig(Section):
    name: str
    source: SourceConfig
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[OutputSpec] = Field(min_length=1)
    export: ExportConfig = Field(default_factory=ExportConfig)
    optimize: OptimizeConfig = Field(default_factory=OptimizeConfig)
    validation: ValidationConfig
    calibration: CalibrationConfig | None = None
    targets: list[TargetConfig] = Field(min_length=1)
    triton: TritonConfig = Field(default_factory=TritonConfig)
    profile: ProfileSettings = Field(default_factory=ProfileSettings)
    mlflow: MlflowConfig | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "model name")

    # -- derived values -------------------------------------------------------
    @property
    def io(self) -> IOSpec:
        return IOSpec(inputs=self.inputs, outputs=self.outputs)

    def has_batch_axis(self) -> bool:
        return self.io.has_batch_axis()

    def max_batch_size(self) -> int:
        """Triton's max_batch_size: the configured one, else the batch range max."""
        if self.triton.max_batch_size is not None:
            return self.triton.max_batch_size
        if not self.has_batch_axis():
            return 0
        maxes = [i.range.max[0] for i in self.inputs if i.range is not None]
        return min(maxes) if maxes else 64

    def dim_name(self, inp: InputSpec, axis: int) -> str | None:
        return self.io.dim_name(inp, axis)

    def profile_batches(self) -> list[int]:
        if self.profile.batch_sizes:
            return sorted(set(self.profile.batch_sizes))
        if not self.has_batch_axis():
            return [1]
        opt = min((i.range.opt[0] for i in self.inputs if i.range is not None), default=8)
        return sorted({1, opt})

    def deployed_targets(self) -> list[str] | None:
        """None means 'the first passing target' (or a measured choice: fastest, smallest)."""
        if self.triton.deploy in (None, "fastest", "smallest"):
            return None
        if self.triton.deploy == "all":
            return [t.name for t in self.targets]
        return [self.triton.deploy]


def _is_dynamic(d: int | str) -> bool:
    return isinstance(d, str) or d == -1


def semantic_problems(cfg: ModelConfig, where: str) -> list[str]:
    """Cross-field checks pydantic cannot express per field; each names its key."""
    out: list[str] = []
    names = [t.name for t in cfg.targets]
    for i, t in enumerate(cfg.targets):
        if names.index(t.name) != i:
            out.append(f"{where}: targets[{i}].name: {t.name!r} is used twice; target names must be unique")
    seen_inputs: set[str] = set()
    dim_ranges: dict[str, tuple[int, int, str]] = {}
    for i, inp in enumerate(cfg.inputs):
        key = f"{where}: inputs[{i}]"
        if inp.name in seen_inputs:
            out.append(f"{key}.name: {inp.name!r} is declared twice")
        seen_inputs.add(inp.name)
        if inp.range is None:
            continue
        r = inp.range
        for part in ("min", "opt", "max"):
            if len(getattr(r, part)) != len(inp.shape):
                out.append(
                    f"{key}.range.{part}: has {len(getattr(r, part))} dimensions, "
                    f"shape {inp.shape} has {len(inp.shape)}"
                )
        if any(len(getattr(r, p)) != len(inp.shape) for p in ("min", "opt", "max")):
            continue
        for ax, d in enumerate(inp.shape):
            lo, opt, hi = r.min[ax], r.opt[ax], r.max[ax]
            if not (1 <= lo <= opt <= hi):
                out.append(f"{key}.range: dimension {ax} needs 1 <= min <= opt <= max, got min={lo} opt={opt} max={hi}")
            if not _is_dynamic(d) and not (lo == opt == hi == d):
                out.append(
                    f"{key}.range: dimension {ax} is fixed at {d} in shape, but the range gives "
                    f"min={lo} opt={opt} max={hi}; use {d} in all three or make the dimension dynamic"
                )
            name = cfg.dim_name(inp, ax)
            if name is not None:
                prev = dim_ranges.get(name)
                if prev is not None and prev[:2] != (lo, hi):
                    out.append(
                        f"{key}.range: dynamic dimension '{name}' has min..max {lo}..{hi} here "
                        f"but {prev[0]}..{prev[1]} in {prev[2]}; shared dimensions need one range"
                    )
                dim_ranges.setdefault(name, (lo, hi, f"inputs {inp.name!r}"))
    out_names = [o.name for o in cfg.outputs]
    for i, o in enumerate(cfg.outputs):
        if out_names.index(o.name) != i:
            out.append(f"{where}: outputs[{i}].name: {o.name!r} is declared twice")
        if o.name in seen_inputs:
            out.append(f"{where}: outputs[{i}].name: {o.name!r} is also an input name")
    mbs = cfg.triton.max_batch_size
    if mbs is not None and mbs > 0:
        for i, inp in enumerate(cfg.inputs):
            if not _is_dynamic(inp.shape[0]):
                out.append(
                    f"{where}: triton.max_batch_size: {mbs} needs a dynamic batch dimension, but "
                    f"inputs[{i}].shape[0] is {inp.shape[0]}; use -1 there or set max_batch_size: 0"
                )
            elif inp.range is not None and len(inp.range.max) == len(inp.shape):
                if inp.range.max[0] < mbs:
                    out.append(
                        f"{where}: triton.max_batch_size: {mbs} exceeds inputs[{i}].range.max[0] = "
                        f"{inp.range.max[0]}; the model is only built and checked up to that batch"
                    )
    if cfg.has_batch_axis():
        first = cfg.inputs[0].name
        for i, t in enumerate(cfg.targets):
            profs = t.trt().profiles if t.backend == "tensorrt" else None
            if profs and all(first in p.shapes for p in profs):
                prof_max = max(p.shapes[first].max[0] for p in profs)
                if cfg.max_batch_size() > prof_max:
                    out.append(
                        f"{where}: triton.max_batch_size: {cfg.max_batch_size()} exceeds the largest batch of "
                        f"targets[{i}].tensorrt.profiles ({prof_max}); Triton would send batches the engine rejects"
                    )
    if cfg.triton.dynamic_batching is not None:
        mb = cfg.max_batch_size()
        for j, b in enumerate(cfg.triton.dynamic_batching.preferred_batch_size):
            if mb and b > mb:
                out.append(
                    f"{where}: triton.dynamic_batching.preferred_batch_size[{j}]: {b} exceeds max_batch_size {mb}"
                )
    vp = cfg.triton.version_policy
    if vp is not None:
        set_keys = [k for k in ("latest", "all", "specific") if getattr(vp, k) not in (None, False)]
        if len(set_keys) != 1:
            out.append(
                f"{where}: triton.version_policy: set exactly one of latest, all, specific (got {set_keys or 'none'})"
            )
    if cfg.triton.retention is not None and vp is not None and vp.all:
        out.append(
            f"{where}: triton.retention: version_policy all serves every version, so retention could prune "
            "a served one; use version_policy latest or drop retention"
        )
    if cfg.triton.retention is not None and vp is not None and vp.latest and vp.latest > cfg.triton.retention.keep_last:
        out.append(
            f"{where}: triton.retention.keep_last: {cfg.triton.retention.keep_last} is below version_policy.latest "
            f"({vp.latest}); keep at least the versions Triton serves"
        )
    for i, t in enumerate(cfg.targets):
        if t.cpu is not None and t.backend != "onnxruntime":
            out.append(f"{where}: targets[{i}].cpu: only applies to backend: onnxruntime")
        if t.cpu is not None and t.gpu is not None:
            out.append(f"{where}: targets[{i}]: set cpu or gpu serving options, not both")
    dep = cfg.triton.deploy
    if dep in ("fastest", "smallest") and dep == "fastest" and not cfg.profile.enabled:
        out.append(f"{where}: triton.deploy: fastest needs profiling; remove profile.enabled: false")
    if dep is not None and dep not in ("all", "fastest", "smallest") and dep not in names:
        out.append(f"{where}: triton.deploy: {dep!r} is not a target; use one of {names} or 'all'")
    for key, src in (("validation", cfg.validation), ("calibration", cfg.calibration)):
        if src is None:
            continue
        if (src.data is None) == (src.generator is None):
            out.append(f"{where}: {key}: set exactly one of data (a file or folder) or generator (module:callable)")
        if src.data is not None and src.data.endswith(".txt") and src.tokenizer is None:
            out.append(
                f"{where}: {key}.tokenizer: {src.data} is a text file; name the module:callable that turns lines into inputs"
            )
        if src.tokenizer is not None and not (src.data or "").endswith(".txt"):
            out.append(f"{where}: {key}.tokenizer: only used with a .txt data file")
    if cfg.calibration is not None and cfg.calibration.data is not None and cfg.calibration.data == cfg.validation.data:
        out.append(
            f"{where}: calibration.data: the calibration set must differ from validation.data (the gate must see unseen data)"
        )
    defaults = TargetConfig(name="x")
    for i, t in enumerate(cfg.targets):
        key = f"{where}: targets[{i}]"
        quantized = t.precision in ("int8", "fp8")
        if quantized and cfg.calibration is None:
            out.append(
                f"{key}.precision: {t.precision} needs a calibration: section (data the quantizer measures ranges on)"
            )
        if t.precision in ("fp8", "tf32", "bf16") and t.backend != "tensorrt":
            out.append(
                f"{key}.precision: {t.precision} needs backend: tensorrt (ONNX Runtime's CPU kernels have no {t.precision})"
            )
        if t.tensorrt is not None and t.backend != "tensorrt":
            out.append(f"{key}.tensorrt: only applies to backend: tensorrt")
        if t.gpu is not None and t.backend != "onnxruntime":
            out.append(f"{key}.gpu: only applies to backend: onnxruntime (a tensorrt target builds its own engine)")
        if t.backend == "tensorrt":
            out.extend(_trt_problems(cfg, t, key))
        if t.backend == "tensorrt" and t.graph_fusion != "none":
            out.append(
                f"{key}.graph_fusion: {t.graph_fusion} writes ONNX Runtime contrib ops, which TensorRT cannot read"
            )
        int8_keys = ["mode", "calibration_method", "percentile", "num_bins", "per_channel", "recovery"]
        if t.precision != "int8" or t.backend != "onnxruntime":
            for k in int8_keys:
                if getattr(t, k) != getattr(defaults, k):
                    out.append(f"{key}.{k}: only applies to backend: onnxruntime with precision: int8")
        if not quantized:
            for k in ("exclude_nodes", "exclude_op_types", "high_precision_dtype"):
                if getattr(t, k) != getattr(defaults, k):
                    out.append(f"{key}.{k}: only applies to precision int8 or fp8")
        if t.backend == "onnxruntime" and t.high_precision_dtype != "fp32":
            out.append(f"{key}.high_precision_dtype: only applies to backend: tensorrt")
    if cfg.validation.labels is not None and cfg.validation.labels in seen_inputs:
        out.append(f"{where}: validation.labels: {cfg.validation.labels!r} is also an input name")
    return out


def _trt_problems(cfg: ModelConfig, t: TargetConfig, key: str) -> list[str]:
    """TensorRT needs bounded dynamic dimensions: every profile is min/opt/max."""
    out = []
    trt = t.trt()
    if trt.profiles is None:
        for i, inp in enumerate(cfg.inputs):
            if inp.range is None and any(_is_dynamic(d) for d in inp.shape):
                out.append(
                    f"{key.split(': ')[0]}: inputs[{i}].shape: dynamic dimension in {inp.shape} needs min/opt/max "
                    f"under inputs[{i}].range for TensorRT target {t.name!r} (or give {t.name}.tensorrt.profiles)"
                )
        return out
    names = [i.name for i in cfg.inputs]
    for j, prof in enumerate(trt.profiles):
        pk = f"{key}.tensorrt.profiles[{j}]"
        missing = [n for n in names if n not in prof.shapes]
        extra = [n for n in prof.shapes if n not in names]
        if missing or extra:
            out.append(f"{pk}.shapes: needs exactly the inputs {names} (missing {missing}, unknown {extra})")
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
                elif not _is_dynamic(d) and not (lo == hi == d):
                    out.append(
                        f"{pk}.shapes.{inp.name}: dimension {ax} is fixed at {d} in shape, got min={lo} max={hi}"
                    )
    if len({p.name for p in trt.profiles}) != len(trt.profiles):
        out.append(f"{key}.tensorrt.profiles: profile names must be unique")
    return out


def trt_profiles(cfg: ModelConfig, t: TargetConfig) -> list[ProfileConfig]:
    """The target's optimization profiles: given, or one built from inputs[].range."""
    if t.trt().profiles:
        return list(t.trt().profiles)  # type: ignore[arg-type]
    shapes = {}
    for inp in cfg.inputs:
        if inp.range is not None:
            shapes[inp.name] = inp.range
        else:
            fixed = [int(d) for d in inp.shape]  # validated: no dynamic dims without a range
            shapes[inp.name] = RangeConfig(min=fixed, opt=fixed, max=fixed)
    return [ProfileConfig(name="default", shapes=shapes)]


# -- loading and error reporting ------------------------------------------------


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that holds the last key of `loc`."""
    cls: Any = ModelConfig
    for item in loc[:-1]:
        if isinstance(item, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        field = cls.model_fields.get(str(item))
        if field is None:
            return None
        cls = _inner_model(field.annotation)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (list, Union, typing.Annotated) or str(origin) == "types.UnionType":
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if isinstance(found, type) and issubclass(found, BaseModel):
                return found
        return None
    return annotation


def _describe(err: dict[str, Any], where: str) -> str:
    loc = tuple(err["loc"])
    path = _loc_to_path(loc)
    if err["type"] == "extra_forbidden":
        section = _section_at(loc)
        allowed = sorted(section.model_fields) if section else []
        key = str(loc[-1])
        hint = difflib.get_close_matches(key, allowed, n=1)
        msg = f"{where}: {path}: unknown key"
        if hint:
            msg += f"; did you mean '{hint[0]}'?"
        if allowed:
            msg += f" (allowed here: {', '.join(allowed)})"
        return msg
    if err["type"] == "missing":
        return f"{where}: {path}: required key is missing"
    value = err.get("input")
    shown = f" (got {value!r})" if not isinstance(value, (dict, list)) else ""
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{where}: {path}: {msg}{shown}"


def parse_config(data: Any, where: str = "model.yaml") -> ModelConfig:
    """Validate a parsed YAML document; raise ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of keys (name, source, ...)")
    try:
        cfg = ModelConfig.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(e, where) for e in exc.errors()]
        # pydantic reports each failed union member; keep one line per key path
        unique = list(dict.fromkeys(problems))
        raise ConfigError(unique[0], problems=unique) from None
    problems = semantic_problems(cfg, where)
    if problems:
        raise ConfigError(problems[0], problems=problems)
    return cfg


class _NoDuplicatesLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no Python tags) that also refuses duplicate keys."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    keys: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in keys:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        keys.add(key)
    return loader.construct_mapping(node, deep=deep)


_NoDuplicatesLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

MAX_CONFIG_BYTES = 1 << 20


def load_config(path: str | Path) -> ModelConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: model config not found; pass the path of your model.yaml")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: {p.stat().st_size} bytes is too large for a model config (max 1 MiB)")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_NoDuplicatesLoader)  # noqa: S506 - safe loader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None
    return parse_config(data, where=str(p))


def json_schema() -> dict[str, Any]:
    schema = ModelConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mscompile model.yaml"
    return schema


def resolve_path(p: str) -> Path:
    """Relative paths in model.yaml are relative to the working directory."""
    return Path(p).expanduser().resolve()
