"""The sections of model.yaml that every backend shares, as frozen pydantic
models (unknown keys rejected). Each backend's own target section lives in its
module under mscompile.backends; mscompile.config assembles the whole file."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Triton model names become folder names: keep them to a portable, path-safe set.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
_NAME_RE = re.compile(NAME_PATTERN)
FACTORY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*$"

DType = Literal["float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool"]

MAX_VALIDATION_SAMPLES = 100_000


def redact_url(url: str) -> str:
    """A URL as it may be recorded or printed: the user and password of `user:pw@host`
    and the values of its query (tokens) replaced by ***."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" not in netloc and not parts.query:
        return url
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(f"{k}=***" for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# Triton's config fields are int32 (batch sizes, version counts) and int64 (version numbers)
INT32_MAX = 2**31 - 1
MAX_VERSION = 2**63 - 2


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str, what: str) -> str:
    if not _NAME_RE.fullmatch(value) or value in {".", ".."}:
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
    huggingface: str | None = Field(
        default=None,
        description="a local Hugging Face model folder (config.json, model.safetensors, tokenizer or "
        "image processor files) instead of checkpoint + factory: with `task`, the inputs, outputs, "
        "checkpoint, factory and (when not given) validation/calibration data are derived from it",
    )
    task: str | None = Field(
        default=None,
        description="with huggingface: feature-extraction, text-classification, token-classification, "
        "image-classification, semantic-segmentation, object-detection (DETR-style: logits, pred_boxes), "
        "automatic-speech-recognition (a CTC model's logits, or an encoder-decoder's encoder) or "
        "text-generation (the LLM task)",
    )
    torchvision: str | None = Field(
        default=None,
        description="a torchvision.models name (get_model) whose weights are `checkpoint`: the factory, input "
        "(images at the model's preset size), outputs and (when not given) data are derived",
    )
    timm: str | None = Field(
        default=None, description="a timm model name (create_model) whose weights are `checkpoint`; as torchvision"
    )
    model_args: dict[str, Any] = Field(
        default_factory=dict, description="with torchvision/timm: the constructor's arguments, e.g. num_classes"
    )
    image_size: int | list[int] | None = Field(
        default=None, description="with torchvision/timm: the input size (or [height, width]) instead of the preset's"
    )


class RangeConfig(Section):
    """min/opt/max shapes of one input: the optimization profile of TensorRT, the
    warm-up shape of Triton and the bounds of dynamic dimensions."""

    min: list[int]
    opt: list[int]
    max: list[int]


_TENSOR_NAME_RE = re.compile(r"^[^\s\"'\\]{1,256}$")


def _check_tensor_name(value: str) -> str:
    """A tensor name goes verbatim into config.pbtxt and every client's request: no
    whitespace, quotes or backslashes, and no template placeholder (${...}, {{...}})."""
    if not _TENSOR_NAME_RE.fullmatch(value) or "${" in value or "{{" in value or "}}" in value:
        raise ValueError(
            f"tensor name {value!r} must be 1-256 characters without whitespace, quotes, backslashes or a "
            "template placeholder (${...}, {{...}}); use the name the model's graph gives the tensor"
        )
    return value


class InputSpec(Section):
    name: str = Field(min_length=1)

    _name = field_validator("name")(classmethod(lambda cls, v: _check_tensor_name(v)))
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
            if isinstance(d, str) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", d):
                raise ValueError(f"dimension name {d!r} must be an identifier")
        return v


class OutputSpec(Section):
    name: str = Field(min_length=1)

    _name = field_validator("name")(classmethod(lambda cls, v: _check_tensor_name(v)))


class IOSpec(Section):
    """The model's inputs and outputs, as declared (the part several passes need)."""

    inputs: list[InputSpec]
    outputs: list[OutputSpec]

    def has_batch_axis(self) -> bool:
        return all(is_dynamic(i.shape[0]) for i in self.inputs)

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
    shapes: Literal["report", "generate", "strict"] = Field(
        default="report",
        description="report: the summary, --json, the manifest and the report name every declared size "
        "(range min/opt/max) of a dynamic non-batch dimension that the validation data never exercised, "
        "so no gate figure covers it; generate: each such size gets its own gate bucket, made from the "
        "first 32 validation samples cropped or tiled to it along that dimension (each sample continued "
        "by the next ones), with its own reference and figures, and every bucket must pass; "
        "strict: a build with such a size fails (exit 3) and publishes nothing",
    )

    padding_mask: str = Field(
        default="auto",
        description="the input whose zeros mark padding (a tokenizer's attention mask): an output whose "
        "leading dims are that input's (a token-level output, e.g. last_hidden_state [batch, sequence, "
        "hidden]) is compared only where the mask is not 0, since padded positions carry no answer; "
        "auto: the input named attention_mask, if the model has an integer one; none: compare every "
        "position; or an input's name",
    )

    def gate_shapes(self) -> str:
        """What the reference and the gates run (their steps' setting): the data as given
        ("report"; `strict` only changes the verdict after the gates), or also the
        generated shape buckets ("generate")."""
        return "generate" if self.shapes == "generate" else "report"


class CalibrationConfig(DataSource):
    """Calibration set for INT8/FP8: kept apart from the validation set."""

    seed: int = Field(default=0, description="seed of the random subset when `samples` is below the set's size")
    batch_size: int = Field(default=16, ge=1, le=4096)


class OutputTolerance(Section):
    """One output's own gate (tolerance.per_output.<name>)."""

    max_abs: float | None = Field(default=None, ge=0, description="max |variant - reference|")
    max_rel: float | None = Field(default=None, ge=0, description="max |variant - reference| / max |reference|")
    cosine: float | None = Field(default=None, ge=-1, le=1, description="mean cosine similarity over samples")
    cosine_min: float | None = Field(default=None, ge=-1, le=1, description="minimum cosine similarity over samples")
    top1_agreement: float | None = Field(
        default=None, ge=0, le=1, description="fraction of samples with the same argmax"
    )


class Tolerance(Section):
    """Accuracy gate of a variant against the PyTorch reference. Every key set
    here must hold for the variant to pass; unset keys are not checked. The keys
    apply to every output, or to those `outputs` names; `per_output` gives an output
    its own keys instead."""

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
    outputs: list[str] | None = Field(
        default=None,
        min_length=1,
        description="the outputs the keys above gate (default: every output); the others are measured "
        "and reported, not judged, unless per_output names them",
    )
    per_output: dict[str, OutputTolerance] = Field(
        default_factory=dict, description="output name -> its own gate, instead of the keys above"
    )

    def for_output(self, name: str) -> Any:
        """The gate that judges output `name`: its per_output entry, these keys, or None
        (measured, not judged)."""
        if name in self.per_output:
            return self.per_output[name]
        return self if self.outputs is None or name in self.outputs else None


def recovery_budget() -> Any:
    """recovery.budget_s of every INT8 search (ONNX Runtime's, NNCF's)."""
    return Field(
        default=1800.0,
        ge=0,
        le=86_400,
        description="seconds of work the INT8 search may spend (steps served from the cache cost nothing); "
        "when spent it stops before its next try and says which tries it did not run",
    )


class RecoveryConfig(Section):
    """What to do when an INT8 variant misses its gate: rank tensors by quantization
    noise (SQNR), keep the worst nodes in float, re-quantize, re-check."""

    enabled: bool = True
    equalize: bool = Field(
        default=True,
        description="first try cross-layer equalization and SmoothQuant-style smoothing "
        "(float-exact rescaling: Linear/Conv pairs joined by ReLU, MatMul inputs with outlier channels)",
    )
    bias_correction: bool = Field(
        default=True, description="then try bias correction (cancel the mean output shift weight quantization causes)"
    )
    max_tries: int = Field(default=4, ge=1, le=20, description="quantization attempts in all, the first included")
    max_excluded_fraction: float = Field(
        default=0.3, gt=0, le=1, description="most quantizable nodes that may be left in float"
    )
    budget_s: float = recovery_budget()


class ProfileSettings(Section):
    """How variants are profiled (latency and throughput per batch size)."""

    enabled: bool = True
    batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] | None = Field(
        default=None, description="default: 1 and the batch range's opt"
    )
    window: int = Field(default=10, ge=3, le=10_000, description="calls per timing window")
    max_windows: int = Field(default=8, ge=2, le=100)
    agreement: float = Field(default=0.05, gt=0, le=1, description="p50 of two windows must agree within this")
    budget_s: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="seconds a variant's profile may take, shared by its batch sizes: a batch size whose "
        "windows have not agreed when its share is spent is reported unsettled (stable: false)",
    )


class DynamicBatching(Section):
    preferred_batch_size: list[Annotated[int, Field(ge=1, le=INT32_MAX)]] = Field(default_factory=list)
    max_queue_delay_microseconds: int = Field(default=0, ge=0, le=3_600_000_000)


class InstanceGroup(Section):
    kind: Literal["KIND_CPU", "KIND_GPU", "KIND_AUTO"] = "KIND_CPU"
    count: int = Field(default=1, ge=1, le=1024)
    gpus: list[Annotated[int, Field(ge=0, le=1024)]] | None = None


class VersionPolicy(Section):
    latest: int | None = Field(default=None, ge=1, le=INT32_MAX)
    all: bool | None = None
    specific: list[Annotated[int, Field(ge=1, le=MAX_VERSION)]] | None = None


class RetentionConfig(Section):
    """Prune old version folders after a successful publish; versions the
    version_policy serves are never pruned."""

    keep_last: int = Field(ge=1, le=INT32_MAX)


class RayServeAutoscaling(Section):
    min_replicas: int = Field(default=1, ge=0, le=4096)
    max_replicas: int = Field(default=1, ge=1, le=4096)
    target_ongoing_requests: float = Field(default=2.0, gt=0)


class RayServeConfig(Section):
    """A Ray Serve application for the deployed variant, beside the Triton repository."""

    folder: str = Field(default="rayserve", min_length=1, description="apps go to <folder>/<name>/<version>/")
    replicas: int = Field(default=1, ge=1, le=4096)
    autoscaling: RayServeAutoscaling | None = Field(default=None, description="instead of a fixed replica count")
    num_cpus: float = Field(default=1.0, gt=0, le=1024, description="CPUs per replica (ray_actor_options)")
    max_ongoing_requests: int = Field(default=16, ge=1, le=100_000)
    host: str = Field(default="127.0.0.1", description="HTTP host of the Serve proxy (0.0.0.0 to listen on all)")
    port: int = Field(default=8000, ge=1, le=65535)
    route_prefix: str | None = Field(default=None, pattern=r"^/[A-Za-z0-9_./-]*$", description="default /<name>")


class TritonConfig(Section):
    repository: str = Field(default="model_repository", min_length=1)
    max_batch_size: int | None = Field(
        default=None,
        ge=0,
        le=INT32_MAX,
        description="defaults to the batch dimension's range max (0 when inputs have no batch axis)",
    )
    dynamic_batching: DynamicBatching | None = None
    instance_group: list[InstanceGroup] = Field(default_factory=lambda: [InstanceGroup()])
    version_policy: VersionPolicy | None = None
    warmup: bool = Field(
        default=False,
        description="a model_warmup sample Triton runs at load: one request (batch 1) of zeros at the "
        "inputs' opt shape",
    )
    retention: RetentionConfig | None = None
    lock_timeout_s: float = Field(
        default=600, gt=0, description="how long to wait for another build's lock on the model"
    )
    deploy: str | None = Field(
        default=None,
        description="fastest | smallest (among variants that passed) | a target name, published as <name>; "
        "or all: each variant as <name>_<target>; default: the first target that passes its gate",
    )


class PipelineTensor(Section):
    """A tensor a pipeline step reads or writes, per request, without the batch dimension."""

    name: str = Field(min_length=1)
    dtype: Literal["string", "float32", "float16", "int64", "int32", "int8", "uint8", "bool"] = "float32"
    shape: list[int] = Field(default_factory=lambda: [1], description="dims after the batch one; -1: any size")


class PipelineStep(Section):
    """Python code run by Triton's python backend beside the model: `function` takes a
    dict of batched numpy arrays (strings as str objects) and returns one. Its module
    is copied into the step's version folder with `files`; a module-level
    setup(folder) is called once with that folder (where `files` lie)."""

    function: Annotated[str, Field(pattern=FACTORY_PATTERN)]
    files: list[str] = Field(
        default_factory=list, description="files copied beside the module (pkg:<package>/<path> too)"
    )


class PreprocessStep(PipelineStep):
    inputs: list[PipelineTensor] = Field(min_length=1, description="what the client sends")


class PostprocessStep(PipelineStep):
    inputs: list[str] | None = Field(
        default=None, description="model outputs and preprocess outputs it reads (default: every model output)"
    )
    outputs: list[PipelineTensor] = Field(min_length=1, description="what the client gets")


class PipelineConfig(Section):
    """A Triton ensemble: preprocess -> the deployed model -> postprocess, gated end to end."""

    name: str | None = Field(default=None, description="the ensemble's model name (default <name>_pipeline)")
    preprocess: PreprocessStep | None = None
    postprocess: PostprocessStep | None = None
    validation: str = Field(
        min_length=1,
        description="raw inputs for the end-to-end gate: a .txt (one string per line, for a single string "
        "input), an .npz with one array per preprocess input, or a folder of images (uint8 RGB [h, w, 3] for a "
        "single input; every image resized to the first one's size)",
    )
    samples: int | None = Field(default=None, ge=1, le=100_000)
    tolerance: Tolerance = Field(default_factory=lambda: Tolerance(cosine=0.99))
    python_path: list[str] = Field(
        default_factory=list,
        description="folders the step models put on sys.path on the server (where the python backend's "
        "environment lacks a package the steps import)",
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


class TargetBase(Section):
    """What every target has, whatever its backend. A backend's Target subclasses
    this with `backend: Literal["<name>"]`, its precisions and its own options."""

    name: str
    backend: str
    precision: str = "fp32"
    tolerance: Tolerance = Field(default_factory=Tolerance)
    on_fail: Literal["error", "skip"] = Field(
        default="error",
        description="error: a missed gate fails the build (exit 3); skip: leave the variant out",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "target name")


def is_dynamic(d: int | str) -> bool:
    return isinstance(d, str) or d == -1


def resolve_path(p: str) -> Path:
    """Relative paths in model.yaml are relative to the working directory."""
    return Path(p).expanduser().resolve()
