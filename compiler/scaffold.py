"""What one forward pass tells about a model, for `mscompile init` and
`mscompile.optimize`: its inputs (names, dtypes, shapes, which dimensions take other
sizes), its outputs (one name per returned tensor), and the targets this machine can
build; `init` writes them as a commented model.yaml that builds unchanged."""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .backends import get
from .errors import ConfigError
from .hf import expand as expand_hf
from .loading import as_output_list, flatten_outputs, load_module, resolve_checkpoint
from .sections import SourceConfig
from .tasks import parse_config

DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")

# what a target named only by its precision is gated with
DEFAULT_TOLERANCE = {
    "fp32": {"max_rel": 1e-4},
    "fp16": {"max_rel": 1e-2},
    "int8": {"cosine": 0.99},
}


def input_names(module: Any, n: int, given: Sequence[str] | None, example: Any) -> list[str]:
    """`given`, a dict's keys, or forward()'s leading parameter names (input_<i> when
    it takes *args)."""
    if given is not None:
        if len(given) != n:
            raise ConfigError(f"input_names: {len(given)} name(s) for {n} example input(s)")
        return list(given)
    if isinstance(example, Mapping):
        return list(example)
    try:
        params = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return params[:n] if len(params) >= n else [f"input_{i}" for i in range(n)]


def output_names(result: Any, given: Sequence[str] | None) -> list[str]:
    """One name per returned tensor, in the exporters' order: `output` for one tensor,
    dict/ModelOutput keys, `output_<i>` for tuple entries, nested ones joined by '_'."""
    import torch

    if isinstance(result, torch.Tensor):
        found = ["output"]
    else:
        paths = [p for p, _ in flatten_outputs(result)]
        found = [(f"output_{p}" if p[0].isdigit() else p).replace(".", "_") for p in paths]
    if given is None:
        return found
    if len(given) != len(found):
        raise ConfigError(f"output_names: {len(given)} name(s), but forward() returned {len(found)} tensor(s)")
    return list(given)


def forward(module: Any, names: list[str], arrays: dict[str, np.ndarray]) -> Any:
    """One forward pass in eval mode (the module's mode is restored)."""
    import torch

    was = module.training
    module.eval()
    try:
        with torch.inference_mode():
            return module(*(torch.from_numpy(np.ascontiguousarray(arrays[n])) for n in names))
    finally:
        module.train(was)


def trace(
    module: Any, names: list[str], examples: dict[str, np.ndarray], outputs: Sequence[str] | None = None
) -> list[str]:
    """The output names of one forward pass on `examples` (ConfigError naming the
    example inputs when the model refuses them)."""
    for n, a in examples.items():
        if a.dtype.name not in DTYPES:
            raise ConfigError(f"example inputs: {n!r} has dtype {a.dtype.name}; give one of {', '.join(DTYPES)}")
    try:
        result = forward(module, names, examples)
    except Exception as exc:
        shapes = ", ".join(f"{n}{list(examples[n].shape)}" for n in names)
        raise ConfigError(
            f"example inputs: forward() raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            f"on [{shapes}]; give inputs it takes, in forward()'s order"
        ) from None
    found = output_names(result, outputs)
    as_output_list(result, len(found), "example inputs")  # every returned value is a tensor
    return found


def varying_dims(module: Any, names: list[str], examples: dict[str, np.ndarray]) -> set[tuple[str, int]]:
    """The non-batch dimensions the model also takes at other sizes: each group of
    inputs sharing an axis and a size is tried at half and at twice that size (a
    sequence length, a fully convolutional net's height and width)."""
    groups: dict[tuple[int, int], list[str]] = {}
    for n in names:
        for axis in range(1, examples[n].ndim):
            groups.setdefault((axis, int(examples[n].shape[axis])), []).append(n)
    found: set[tuple[str, int]] = set()
    for (axis, size), members in groups.items():
        ok = True
        for want in {max(1, size // 2), size * 2} - {size}:
            feeds = dict(examples)
            for n in members:
                reps = -(-want // size)
                feeds[n] = np.take(np.concatenate([examples[n]] * reps, axis=axis), np.arange(want), axis=axis)
            try:
                forward(module, names, feeds)
            except Exception:  # noqa: BLE001 - the model refusing a size is the answer
                ok = False
                break
        if ok:
            found |= {(n, axis) for n in members}
    return found


def input_specs(
    names: list[str],
    examples: dict[str, np.ndarray],
    dynamic_batch: bool = True,
    max_batch_size: int = 64,
    varying: set[tuple[str, int]] | None = None,
) -> list[dict[str, Any]]:
    """inputs: entries. Axis 0 is a dynamic batch up to max_batch_size (opt: the
    example's); the `varying` dims are dynamic from 1 to twice the example's size,
    named `<axis>` after the first input that has them (shared by the others)."""
    dim_names: dict[tuple[int, int], str] = {}
    specs = []
    for n in names:
        a = examples[n]
        shape: list[Any] = list(a.shape)
        lo, opt, hi = list(a.shape), list(a.shape), list(a.shape)
        if dynamic_batch:
            shape[0], lo[0], hi[0] = -1, 1, max(max_batch_size, int(a.shape[0]))
        for axis in range(1, a.ndim):
            if varying and (n, axis) in varying:
                shape[axis] = dim_names.setdefault((axis, int(a.shape[axis])), f"{n}_dim{axis}")
                lo[axis], hi[axis] = 1, 2 * int(a.shape[axis])
        spec: dict[str, Any] = {"name": n, "dtype": a.dtype.name, "shape": shape}
        if dynamic_batch or any(isinstance(d, str) for d in shape):
            spec["range"] = {"min": lo, "opt": opt, "max": hi}
        specs.append(spec)
    return specs


def default_targets(draft: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The targets this machine can build (each backend's own availability rule, as
    `doctor` shows it), and one line per candidate left out with the reason."""
    candidates = [
        {"name": "fp32", "backend": "onnxruntime", "precision": "fp32"},
        {"name": "fp16", "backend": "onnxruntime", "precision": "fp16"},
        {"name": "int8", "backend": "onnxruntime", "precision": "int8", "mode": "auto", "on_fail": "skip"},
        {"name": "openvino_int8", "backend": "openvino", "precision": "int8", "on_fail": "skip"},
        {"name": "tensorrt_fp16", "backend": "tensorrt", "precision": "fp16", "on_fail": "skip"},
    ]
    kept, left = [], []
    for c in candidates:
        if c["precision"] == "int8" and "calibration" not in draft:
            left.append(f"{c['name']}: INT8 needs calibration samples apart from validation's (--calibration FILE.npz)")
            continue
        t = dict(c, tolerance=dict(DEFAULT_TOLERANCE[c["precision"]]))
        try:
            cfg = parse_config(dict(draft, targets=[t]), where="draft")
            ok, why = get(c["backend"]).available(cfg.targets[0])
        except ConfigError as exc:
            ok, why = False, str(exc).splitlines()[0]
        if ok:
            kept.append(t)
        else:
            left.append(f"{c['name']}: {why}")
    return kept, left


def example_arrays(specs: Sequence[str], seed: int = 0) -> dict[str, np.ndarray]:
    """`--input name:2x3x224x224[:dtype]` as seeded arrays (normal floats; integers in
    [0, 100), ones for an input whose name says mask)."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        parts = s.split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            raise ConfigError(f"--input {s!r}: write name:SHAPE[:dtype], e.g. images:8x3x224x224:float32")
        name, dims, dtype = parts[0], parts[1], parts[2] if len(parts) == 3 else "float32"
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--input {s!r}: the shape is sizes joined by x, e.g. 8x3x224x224") from None
        if dtype not in DTYPES or any(d < 1 for d in shape):
            raise ConfigError(f"--input {s!r}: sizes >= 1 and a dtype of {', '.join(DTYPES)}")
        if dtype.startswith("float"):
            out[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool" or "mask" in name:
            out[name] = np.ones(shape, dtype)
        else:
            out[name] = rng.integers(0, 100, shape).astype(dtype)
    return out


def _flow(value: Any) -> str:
    return json.dumps(value)  # JSON is YAML's flow style


def init_yaml(
    *,
    name: str,
    checkpoint: str,
    factory: str | None,
    factory_args: dict[str, Any],
    data: str | None,
    calibration: str | None,
    inputs: Sequence[str],
    out_dir: Path,
) -> tuple[str, list[str]]:
    """A commented model.yaml for a checkpoint (+ factory), traced on the examples in
    `data` (.npz) or made from `inputs` specs (then written beside it as
    <name>_validation.npz and <name>_calibration.npz, other seeds); and notes for the
    user. The text is parsed before anything is written."""
    src = SourceConfig(checkpoint=checkpoint, factory=factory, factory_args=factory_args)
    module = load_module(src, resolve_checkpoint(checkpoint))
    notes: list[str] = []
    made: dict[str, dict[str, np.ndarray]] = {}
    if data:
        with np.load(data) as z:
            examples = {k: z[k] for k in z.files}
        names = input_names(module, len(examples), list(examples), examples)
        val_file, cal_file = data, calibration
    elif inputs:
        examples = example_arrays(inputs)
        names = list(examples)
        val_file = str(out_dir / f"{name}_validation.npz")
        cal_file = calibration or str(out_dir / f"{name}_calibration.npz")
        made[val_file] = examples
        if not calibration:
            made[cal_file] = example_arrays(inputs, seed=1)
        notes.append(
            f"{', '.join(made)}: seeded random inputs from --input: the gates run on them until you "
            "point validation.data and calibration.data at real held-out samples"
        )
    else:
        raise ConfigError("init: give --data FILE.npz (one array per input) or --input name:SHAPE[:dtype]")
    outputs = trace(module, names, examples)
    varying = varying_dims(module, names, examples)
    specs = input_specs(names, examples, True, 64, varying)
    draft: dict[str, Any] = {
        "name": name,
        "source": {
            "checkpoint": checkpoint,
            **({"factory": factory} if factory else {}),
            **({"factory_args": factory_args} if factory_args else {}),
        },
        "inputs": specs,
        "outputs": [{"name": o} for o in outputs],
        "validation": {"data": val_file, "shapes": "generate"},
    }
    if cal_file:
        draft["calibration"] = {"data": cal_file}
    targets, left = default_targets(draft)
    notes += [f"target {line}" for line in left]
    lines = [
        f"# model.yaml written by `mscompile init` from one forward pass of {factory or checkpoint}.",
        "# Check every line, then: mscompile build <this file>. Reference: docs/model-yaml.md",
        f"name: {name}",
        f"source: {_flow(draft['source'])}",
        "# From the example inputs: axis 0 is a dynamic batch (up to 64, opt at the example's).",
    ]
    if varying:
        lines.append(
            "# The model also took other sizes on the dims named here (tried at half and twice the "
            "example's): their range is 1 to twice the example's; narrow it to what you serve."
        )
    lines.append("inputs:")
    lines += [f"  - {_flow(s)}" for s in specs]
    lines.append("# One name per tensor forward() returns, in order (rename freely).")
    lines.append("outputs:")
    lines += [f"  - {_flow({'name': o})}" for o in outputs]
    lines += [
        "# Held-out samples every variant is gated on; `shapes: generate` also gates each declared",
        "# min/opt/max size the data lacks.",
        f"validation: {_flow(draft['validation'])}",
    ]
    if cal_file:
        lines += ["# INT8 calibration samples, apart from validation's.", f"calibration: {_flow(draft['calibration'])}"]
    lines += ["# What this machine can build (`mscompile doctor`); each tolerance is a gate.", "targets:"]
    lines += [f"  - {_flow(t)}" for t in targets]
    lines += [f"  # not here: {line}" for line in left]
    lines += [
        "triton:",
        "  repository: model_repository",
        "  max_batch_size: 64",
        "  deploy: fastest  # the fastest variant that passes its gate",
        "",
    ]
    text = "\n".join(lines)
    if not targets:
        raise ConfigError(f"init: no target can be built here: {'; '.join(left)}")
    parse_config(yaml.safe_load(text), where="the written model.yaml")  # what is written parses
    for path, arrays in made.items():
        np.savez(path, **arrays)
    return text, notes


def init_hf_yaml(*, name: str, folder: str, task: str) -> tuple[str, list[str]]:
    """The short form for a Hugging Face folder: source {huggingface, task} and the
    targets this machine can build; what it derives is shown as comments."""
    short = {"name": name, "source": {"huggingface": folder, "task": task}}
    full = expand_hf(dict(short, targets=[{"name": "int8", "precision": "int8"}]), "init")  # with calibration
    targets, left = default_targets({k: v for k, v in full.items() if k != "targets"})
    lines = [
        f"# model.yaml written by `mscompile init` for the Hugging Face folder {folder} ({task}).",
        "# Derived from the folder when the build reads it (declare a key to override it):",
        *(f"#   inputs: {_flow(i)}" for i in full["inputs"]),
        *(f"#   outputs: {_flow(o)}" for o in full["outputs"]),
        "#   validation/calibration: seeded synthetic inputs through its tokenizer/processor unless",
        "#   you set validation: {data: texts.txt or an image folder} (and calibration: the same way)",
        f"name: {name}",
        f"source: {_flow(short['source'])}",
        "targets:",
        *(f"  - {_flow(t)}" for t in targets),
        *(f"  # not here: {line}" for line in left),
        "",
    ]
    text = "\n".join(lines)
    if not targets:
        raise ConfigError(f"init: no target can be built here: {'; '.join(left)}")
    parse_config(yaml.safe_load(text), where="the written model.yaml")
    return text, [f"target {line}" for line in left]
