"""model.yaml -> frozen pydantic models.

The shared sections live in mscompile.sections; each backend's target section
lives in its module under mscompile.backends, and `targets:` is their union,
selected by `backend:` (default onnxruntime). Unknown keys are rejected, also a
key that belongs to another backend. Every error names its key path in
model.yaml and what is allowed. Relative paths in model.yaml are resolved
against the current working directory (the directory `mscompile` is run from).
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, field_validator

from .backends import all_backends, backends_of, get
from .errors import ConfigError
from .sections import (  # noqa: F401  (re-exported: passes and tests import them from here)
    FACTORY_PATTERN,
    MAX_VALIDATION_SAMPLES,
    NAME_PATTERN,
    CalibrationConfig,
    DataSource,
    DynamicBatching,
    ExportConfig,
    InputSpec,
    InstanceGroup,
    IOSpec,
    MlflowConfig,
    OptimizeConfig,
    OutputSpec,
    PipelineConfig,
    ProfileSettings,
    RangeConfig,
    RayServeConfig,
    RecoveryConfig,
    RetentionConfig,
    Section,
    SourceConfig,
    TargetBase,
    Tolerance,
    TritonConfig,
    ValidationConfig,
    VersionPolicy,
    _check_name,
    is_dynamic,
    resolve_path,
)

DEFAULT_BACKEND = "onnxruntime"


def _backend_of(value: Any) -> str | None:
    if isinstance(value, dict):
        b = value.get("backend", DEFAULT_BACKEND)
        return b if isinstance(b, str) else None
    return getattr(value, "backend", None)


def _target_union() -> Any:
    members = tuple(Annotated[b.Target, Tag(name)] for name, b in backends_of("tensor").items())
    return Annotated[Union[members], Discriminator(_backend_of)]  # noqa: UP007 - built at run time


TargetConfig = _target_union()


class ModelConfig(Section):
    name: str
    task: Literal["tensor"] = Field(
        default="tensor", description="tensor (the default) or text-generation (a language model)"
    )
    source: SourceConfig
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[OutputSpec] = Field(min_length=1)
    export: ExportConfig = Field(default_factory=ExportConfig)
    optimize: OptimizeConfig = Field(default_factory=OptimizeConfig)
    validation: ValidationConfig
    calibration: CalibrationConfig | None = None
    targets: list[TargetConfig] = Field(min_length=1)  # type: ignore[valid-type]
    triton: TritonConfig = Field(default_factory=TritonConfig)
    profile: ProfileSettings = Field(default_factory=ProfileSettings)
    mlflow: MlflowConfig | None = None
    pipeline: PipelineConfig | None = Field(
        default=None, description="serve as a Triton ensemble with Python pre/postprocessing, gated end to end"
    )
    rayserve: RayServeConfig | None = Field(
        default=None,
        description="also write a Ray Serve application (app.py, serve_config.yaml) for the deployed variant",
    )

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

    def padding_mask(self) -> str | None:
        """The input whose zeros mark padded positions (validation.padding_mask resolved):
        the gates compare token-level outputs where it is not 0."""
        setting = self.validation.padding_mask
        if setting == "none":
            return None
        if setting == "auto":
            spec = next((i for i in self.inputs if i.name == "attention_mask"), None)
            return "attention_mask" if spec is not None and holds_integers(spec.dtype) else None
        return setting

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


def ensemble_name(cfg: ModelConfig) -> str:
    assert cfg.pipeline is not None
    return cfg.pipeline.name or f"{cfg.name}_pipeline"


def step_names(cfg: ModelConfig) -> dict[str, str]:
    pc = cfg.pipeline
    assert pc is not None
    base = ensemble_name(cfg)
    out = {}
    if pc.preprocess is not None:
        out["preprocess"] = f"{base}_preprocess"
    if pc.postprocess is not None:
        out["postprocess"] = f"{base}_postprocess"
    return out


def unit_names(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(role, Triton model name) of every model the unit publishes: the model, its steps
    and the ensemble, with the roles each version's build_manifest.json records."""
    return [
        ("model", cfg.name),
        *(("pipeline step", n) for n in step_names(cfg).values()),
        ("ensemble", ensemble_name(cfg)),
    ]


def _pipeline_problems(cfg: ModelConfig, where: str) -> list[str]:
    pc = cfg.pipeline
    assert pc is not None
    out = []
    key = f"{where}: pipeline"
    if pc.preprocess is None and pc.postprocess is None:
        out.append(
            f"{key}: give a preprocess or a postprocess step (or both); an ensemble of the model alone adds nothing"
        )
    if cfg.triton.deploy == "all":
        out.append(f"{key}: needs one deployed model; triton.deploy: all publishes one model per variant")
    if not cfg.io.has_batch_axis() or cfg.max_batch_size() == 0:
        out.append(
            f"{key}: the ensemble batches requests; the model needs a dynamic batch dimension (inputs[].shape[0]: -1)"
        )
    if pc.postprocess is not None and pc.postprocess.inputs is not None:
        known = {o.name for o in cfg.outputs} | {i.name for i in cfg.inputs}
        for j, n in enumerate(pc.postprocess.inputs):
            if n not in known:
                out.append(
                    f"{key}.postprocess.inputs[{j}]: {n!r} is neither a model output nor a model input "
                    f"(known: {sorted(known)})"
                )
    if pc.validation.endswith(".txt"):
        pre = pc.preprocess
        if pre is None or len(pre.inputs) != 1 or pre.inputs[0].dtype != "string":
            out.append(
                f"{key}.validation: a .txt file feeds one string input; preprocess.inputs must be one string tensor"
            )
    elif resolve_path(pc.validation).is_dir():
        pre = pc.preprocess
        if pre is None or len(pre.inputs) != 1 or pre.inputs[0].dtype != "uint8" or pre.inputs[0].shape[-1:] != [3]:
            out.append(
                f"{key}.validation: a folder of images feeds one uint8 [h, w, 3] input; preprocess.inputs must be "
                "one such tensor"
            )
    elif not pc.validation.endswith(".npz"):
        out.append(f"{key}.validation: {pc.validation!r} must be a .txt or .npz file, or a folder of images")
    if pc.name is not None and not re.fullmatch(NAME_PATTERN, pc.name):
        out.append(f"{key}.name: {pc.name!r} is not a valid model name")
    # every model the unit publishes has its own folder: one name may not stand for two
    seen: dict[str, str] = {}
    for role, name in unit_names(cfg):
        if name in seen:
            out.append(
                f"{key}.name: the {role} would be published as {name!r}, the name of the {seen[name]}; "
                "give the pipeline another name"
            )
        seen.setdefault(name, role)
    return out


def semantic_problems(cfg: ModelConfig, where: str) -> list[str]:
    """Cross-field checks pydantic cannot express per field; each names its key."""
    out: list[str] = []
    names = [t.name for t in cfg.targets]
    declared = [o.name for o in cfg.outputs]
    for i, t in enumerate(cfg.targets):
        if names.index(t.name) != i:
            out.append(f"{where}: targets[{i}].name: {t.name!r} is used twice; target names must be unique")
        tol = getattr(t, "tolerance", None)
        for key, named in (
            ("outputs", (tol.outputs or []) if tol else []),
            ("per_output", tol.per_output if tol else {}),
        ):
            for n in named:
                if n not in declared:
                    out.append(
                        f"{where}: targets[{i}].tolerance.{key}: {n!r} is not an output; the outputs are {declared}"
                    )
        if tol is not None and tol.per_output:
            shared = [
                k
                for k in ("max_abs", "max_rel", "cosine", "cosine_min", "top1_agreement")
                if getattr(tol, k) is not None
            ]
            if shared and all(tol.for_output(n) is not tol for n in declared):
                out.append(
                    f"{where}: targets[{i}].tolerance.{shared[0]}: gates no output (each has its own per_output "
                    "gate, or is not in tolerance.outputs); move it into per_output or remove it"
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
                out.append(f"{key}.range: dimension {ax} needs 1 <= min <= opt <= max, got min={lo} opt={opt} max={hi}")
            if not is_dynamic(d) and not (lo == opt == hi == d):
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
            if not is_dynamic(inp.shape[0]):
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
    batch_lo = max((i.range.min[0] for i in cfg.inputs if i.range is not None and cfg.has_batch_axis()), default=1)
    batch_hi = min((i.range.max[0] for i in cfg.inputs if i.range is not None and cfg.has_batch_axis()), default=None)
    for j, b in enumerate(cfg.profile.batch_sizes or []):
        if not cfg.has_batch_axis() and b != 1:
            out.append(f"{where}: profile.batch_sizes[{j}]: {b}; the inputs have no batch axis, so only 1 applies")
        elif b < batch_lo or (batch_hi is not None and b > batch_hi):
            out.append(
                f"{where}: profile.batch_sizes[{j}]: {b} is outside the batch range {batch_lo}..{batch_hi} "
                "of inputs[].range; the model is only built for that range"
            )
    if cfg.triton.deploy == "all":
        for i, t in enumerate(cfg.targets):
            if len(f"{cfg.name}_{t.name}".encode()) > 255:
                out.append(
                    f"{where}: targets[{i}].name: the Triton model {cfg.name}_{t.name!r} (deploy: all) would be a "
                    "folder name over 255 bytes; shorten the model or target name"
                )
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

    for i, t in enumerate(cfg.targets):
        out.extend(get(t.backend).problems(cfg, t, f"{where}: targets[{i}]"))
    mask = cfg.validation.padding_mask
    if mask not in ("auto", "none"):
        spec = next((i for i in cfg.inputs if i.name == mask), None)
        if spec is None:
            out.append(
                f"{where}: validation.padding_mask: {mask!r} is not an input (inputs: "
                f"{', '.join(i.name for i in cfg.inputs)}); name the mask input, or write auto or none"
            )
        elif not holds_integers(spec.dtype):
            out.append(
                f"{where}: validation.padding_mask: input {mask!r} is {spec.dtype}; a padding mask holds "
                "integers or booleans (0 at padded positions)"
            )
    if cfg.validation.labels is not None and cfg.validation.labels in seen_inputs:
        out.append(f"{where}: validation.labels: {cfg.validation.labels!r} is also an input name")
    if cfg.pipeline is not None:
        out += _pipeline_problems(cfg, where)
    return out


def _split_tags(loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], str | None]:
    """pydantic puts the union tag (the backend) after targets[i]; take it out of the
    key path, and return it."""
    if len(loc) >= 3 and loc[0] == "targets" and isinstance(loc[1], int) and loc[2] in all_backends():
        return (loc[0], loc[1], *loc[3:]), str(loc[2])
    return loc, None


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _section_at(loc: tuple[Any, ...], backend: str | None) -> type[BaseModel] | None:
    """The pydantic model class that holds the last key of `loc` (tags removed)."""
    cls: Any = ModelConfig
    items = loc[:-1]
    if backend is not None:
        cls, items = get(backend).Target, loc[2:-1]
    for item in items:
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
    loc, backend = _split_tags(tuple(err["loc"]))
    path = _loc_to_path(loc)
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        tag = (err.get("ctx") or {}).get("tag")
        return f"{where}: {path}.backend: {tag!r} is not a backend here; use one of {', '.join(all_backends())}"
    if err["type"] == "extra_forbidden":
        section = _section_at(loc, backend)
        allowed = sorted(section.model_fields) if section else []
        key = str(loc[-1])
        hint = difflib.get_close_matches(key, allowed, n=1)
        msg = f"{where}: {path}: unknown key"
        if backend is not None and len(loc) == 3:  # a key of the target itself
            msg += f" for backend {backend}"
            owners = [n for n, b in all_backends().items() if n != backend and key in b.Target.model_fields]
            if owners:
                msg += f" (it is an option of backend {', '.join(owners)})"
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
    if backend is not None and len(loc) == 3:  # a key of the target: its allowed values depend on the backend
        msg += f" for backend {backend}"
    return f"{where}: {path}: {msg}{shown}"


def validated(model: Any, data: dict[str, Any], where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # pydantic reports each failed union member; keep one line per key path
        problems = list(dict.fromkeys(_describe(e, where) for e in exc.errors()))
        raise ConfigError(problems[0], problems=problems) from None


def llm_problems(cfg: Any, where: str) -> list[str]:
    """Cross-field checks of a text-generation config; each names its key."""
    problems = []
    names = [t.name for t in cfg.targets]
    for i, t in enumerate(cfg.targets):
        if names.index(t.name) != i:
            problems.append(f"{where}: targets[{i}].name: {t.name!r} is used twice; target names must be unique")
        problems += get(t.backend).problems(cfg, t, f"{where}: targets[{i}]")
    if cfg.triton.deploy not in (None, "fastest") and cfg.triton.deploy not in names:
        problems.append(
            f"{where}: triton.deploy: {cfg.triton.deploy!r} is neither fastest nor a target ({', '.join(names)})"
        )
    return problems


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
MAX_YAML_NODES = 100_000  # after alias expansion; a real model.yaml has a few hundred
MAX_YAML_DEPTH = 64


def _check_expansion(node: Any, where: str) -> None:
    """Bound the document as the constructor would expand it (aliases repeat their
    anchor's whole subtree), without expanding it: an alias bomb of 1 KB can stand
    for 10^9 nodes. Iterative, so a deeply nested file cannot overflow the stack."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(node, False)]
    active: set[int] = set()
    while stack:
        n, done = stack.pop()
        key = id(n)
        if done:
            active.discard(key)
            kids = _children(n)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > MAX_YAML_NODES:
                raise ConfigError(
                    f"{where}: the YAML expands to more than {MAX_YAML_NODES} values (aliases repeat their anchors); "
                    "a model config is far smaller: remove the repeated aliases"
                )
            if depth[key] > MAX_YAML_DEPTH:
                raise ConfigError(f"{where}: the YAML nests deeper than {MAX_YAML_DEPTH} levels; flatten it")
            continue
        if key in size:
            continue
        if key in active:
            raise ConfigError(f"{where}: the YAML has an alias inside its own anchor (a recursive structure)")
        active.add(key)
        stack.append((n, True))
        stack.extend((k, False) for k in _children(n) if id(k) not in size)


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _load_yaml(text: str, where: str) -> Any:
    loader = _NoDuplicatesLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_model_yaml(path: str | Path) -> Any:
    """A model.yaml's document, read safely (size, aliases, depth, duplicate keys), not yet
    validated: `mscompile.tasks.load_config` parses it with its task."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: model config not found; pass the path of your model.yaml")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: {p.stat().st_size} bytes is too large for a model config (max 1 MiB)")
    try:
        data = _load_yaml(p.read_text(encoding="utf-8"), str(p))
    except RecursionError:
        raise ConfigError(f"{p}: the YAML nests too deep to read; flatten it") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None
    return data


def holds_integers(dtype: str) -> bool:
    """An integer or boolean dtype: what a padding mask (validation.padding_mask) holds."""
    return dtype.startswith(("int", "uint")) or dtype == "bool"
