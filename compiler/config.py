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
Precision = Literal["fp32", "fp16"]
Backend = Literal["onnxruntime"]

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
        description="auto tries torch.export (dynamo) first and falls back to the TorchScript "
        "exporter, recording why",
    )


class OptimizeConfig(Section):
    level: Literal["none", "basic", "slim"] = Field(
        default="basic",
        description="none: shape inference only; basic: ONNX Runtime's basic offline rewrites "
        "(constant folding, redundant nodes; standard ONNX ops only, safe for every target); "
        "slim: onnxslim, then basic",
    )


class ValidationConfig(Section):
    data: str = Field(description=".npz file with one array per model input (first axis = samples)")
    labels: str | None = Field(
        default=None, description="name of the array in `data` holding integer class labels"
    )
    samples: int | None = Field(default=None, ge=1, le=MAX_VALIDATION_SAMPLES)
    batch_size: int = Field(default=32, ge=1, le=4096)


class Tolerance(Section):
    """Accuracy gate of a variant against the PyTorch reference. Every key set
    here must hold for the variant to pass; unset keys are not checked."""

    max_abs: float | None = Field(default=None, ge=0, description="max |variant - reference|")
    max_rel: float | None = Field(
        default=None, ge=0, description="max |variant - reference| / max |reference|, per output"
    )
    cosine: float | None = Field(
        default=None, ge=-1, le=1, description="mean cosine similarity over samples"
    )
    cosine_min: float | None = Field(
        default=None, ge=-1, le=1, description="minimum cosine similarity over samples"
    )
    top1_agreement: float | None = Field(
        default=None, ge=0, le=1, description="fraction of samples with the same argmax"
    )
    accuracy_drop: float | None = Field(
        default=None, ge=0, description="task accuracy lost vs PyTorch, in percentage points"
    )


class TargetConfig(Section):
    name: str
    backend: Backend = "onnxruntime"
    precision: Precision = "fp32"
    keep_io_types: bool = Field(default=True, description="fp16: keep graph inputs/outputs fp32")
    tolerance: Tolerance = Field(default_factory=Tolerance)
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
    deploy: str | None = Field(
        default=None,
        description="target name to publish as <name>, or 'all' to publish each variant as "
        "<name>_<target>; default: the first target that passes its gate",
    )


class ModelConfig(Section):
    name: str
    source: SourceConfig
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[OutputSpec] = Field(min_length=1)
    export: ExportConfig = Field(default_factory=ExportConfig)
    optimize: OptimizeConfig = Field(default_factory=OptimizeConfig)
    validation: ValidationConfig
    targets: list[TargetConfig] = Field(min_length=1)
    triton: TritonConfig = Field(default_factory=TritonConfig)

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

    def deployed_targets(self) -> list[str] | None:
        """None means 'the first passing target'."""
        if self.triton.deploy is None:
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
            out.append(
                f"{where}: targets[{i}].name: {t.name!r} is used twice; target names must be unique"
            )
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
                out.append(
                    f"{key}.range: dimension {ax} needs 1 <= min <= opt <= max, got "
                    f"min={lo} opt={opt} max={hi}"
                )
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
    if cfg.triton.dynamic_batching is not None:
        mb = cfg.max_batch_size()
        for j, b in enumerate(cfg.triton.dynamic_batching.preferred_batch_size):
            if mb and b > mb:
                out.append(
                    f"{where}: triton.dynamic_batching.preferred_batch_size[{j}]: {b} exceeds "
                    f"max_batch_size {mb}"
                )
    vp = cfg.triton.version_policy
    if vp is not None:
        set_keys = [k for k in ("latest", "all", "specific") if getattr(vp, k) not in (None, False)]
        if len(set_keys) != 1:
            out.append(
                f"{where}: triton.version_policy: set exactly one of latest, all, specific "
                f"(got {set_keys or 'none'})"
            )
    dep = cfg.triton.deploy
    if dep is not None and dep != "all" and dep not in names:
        out.append(f"{where}: triton.deploy: {dep!r} is not a target; use one of {names} or 'all'")
    if cfg.validation.labels is not None and cfg.validation.labels in seen_inputs:
        out.append(f"{where}: validation.labels: {cfg.validation.labels!r} is also an input name")
    return out


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
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        keys.add(key)
    return loader.construct_mapping(node, deep=deep)


_NoDuplicatesLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)

MAX_CONFIG_BYTES = 1 << 20


def load_config(path: str | Path) -> ModelConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: model config not found; pass the path of your model.yaml")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{p}: {p.stat().st_size} bytes is too large for a model config (max 1 MiB)"
        )
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
