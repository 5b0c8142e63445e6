"""The Python API: `mscompile.build(config)` and `mscompile.optimize(module, inputs)`.

Both run the build `mscompile build` runs (jobs.build_one, the same passes, cache,
gates and publishing) and return its BuildResult: the variants with their metrics,
the deployed variant, the published versions and the report. Errors are the CLI's
typed exceptions (ConfigError, AccuracyGateError, ... all MscompileError, each with
the exit code the CLI would give), never an exit."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import live, scaffold
from .builder import BuildOptions, BuildResult
from .errors import ConfigError
from .jobs import Tracking, build_one, tracking_settings
from .scaffold import DEFAULT_TOLERANCE
from .tasks import load_config, parse_config


def _stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def build(
    config: str | Path | Mapping[str, Any] | Any,
    *,
    force: bool = False,
    cache_dir: str | Path | None = None,
    quiet: bool = False,
    require_all_targets: bool = False,
    mlflow: bool | Tracking = False,
    warn: Callable[[str], None] | None = None,
) -> BuildResult:
    """Build a model.yaml (a path), a config as a dict (what the YAML would hold; relative
    paths start at the working directory) or a parsed config, as `mscompile build` does.
    Progress goes to stderr unless `quiet`. `mlflow`: True records the build in the
    store model.yaml or the environment names (a Tracking sets where); off by default.
    Raises the CLI's errors (mscompile.errors; `.exit_code` is the CLI's code, `.result`
    what ran before a failed gate)."""
    warn = warn or ((lambda _m: None) if quiet else _stderr)
    if isinstance(config, (str, Path)):
        path = Path(config)
        cfg = load_config(path)
    elif isinstance(config, Mapping):
        path = Path("<dict>")
        cfg = parse_config(dict(config), where="config")
    else:
        path, cfg = Path("<config>"), config
    opts = BuildOptions(
        cache_dir=Path(cache_dir).resolve() if cache_dir else None,
        force=force,
        quiet=quiet,
        require_all_targets=require_all_targets,
    )
    tracking = mlflow if isinstance(mlflow, Tracking) else (Tracking() if mlflow else None)
    settings = None if tracking is None else tracking_settings(cfg, opts.state.root, tracking, warn)
    sync = tracking is not None  # a Python caller gets its record before the call returns
    return build_one(cfg, path, opts, settings, sync, warn).result


# -- optimize: a module object in, the same build ------------------------------------------


def _arrays(value: Any, names: list[str], what: str) -> dict[str, np.ndarray]:
    """Tensors or arrays (one, a sequence in input order, or a dict by input name) as
    named numpy arrays."""
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        if missing:
            raise ConfigError(f"{what}: no array for input(s) {missing}; give one per input: {names}")
        items = [value[n] for n in names]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    if len(items) != len(names):
        raise ConfigError(f"{what}: {len(items)} array(s) for {len(names)} input(s) {names}")
    out = {}
    for n, v in zip(names, items, strict=True):
        try:
            a = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        except TypeError as exc:  # bfloat16 has no numpy type
            raise ConfigError(
                f"{what}: input {n!r}: {exc}; give float32 inputs (the build casts where it serves)"
            ) from None
        if a.ndim == 0:
            raise ConfigError(f"{what}: input {n!r} is a scalar; give samples along axis 0")
        out[n] = np.ascontiguousarray(a)
    return out


def _target(t: Any) -> dict[str, Any]:
    if isinstance(t, str):
        if t not in DEFAULT_TOLERANCE:
            raise ConfigError(f"targets: {t!r}: name a precision ({', '.join(DEFAULT_TOLERANCE)}) or give a dict")
        return {"name": t, "precision": t, "tolerance": dict(DEFAULT_TOLERANCE[t])}
    if isinstance(t, Mapping):
        return dict(t)
    raise ConfigError(f"targets: {t!r}: a precision name or a dict as in model.yaml's targets")


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def optimize(
    module: Any,
    example_inputs: Any,
    *,
    name: str = "model",
    targets: Sequence[str | Mapping[str, Any]] = ("fp32", "fp16", "int8"),
    validation: Any = None,
    labels: Any = None,
    calibration: Any = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    max_batch_size: int = 64,
    repository: str | Path = "model_repository",
    config: Mapping[str, Any] | None = None,
    **build_options: Any,
) -> BuildResult:
    """Build an nn.Module object: export, gate every target against it, publish the
    deployed variant to `repository`. Inputs, outputs, dtypes and shapes come from one
    forward pass on `example_inputs` (a tensor, a tuple in forward()'s order, or a dict
    by parameter name; axis 0 is the batch, dynamic up to `max_batch_size`, unless
    `dynamic_batch` is False). `validation`: held-out inputs the gates run (same forms;
    default: the example inputs, with a warning), `labels` their integer classes;
    `calibration`: INT8 calibration inputs (default: the example inputs when validation
    is given apart from them; with neither, INT8 targets are left out with a warning:
    the gate must see samples calibration did not). `targets`: precision names (gated by DEFAULT_TOLERANCE) or model.yaml
    target dicts. `config`: model.yaml keys merged over what is derived here (export,
    optimize, triton, ...). Other keywords go to build(). The module's weights, and the
    validation and calibration arrays, are written under the state folder
    (.mscompile/api/<name>/) so that the build is cached like any other: the same module
    (weights and code) under the same name runs no pass again, in this process or the
    next."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"module: {type(module).__name__} is not a torch.nn.Module")
    warn = build_options.get("warn") or ((lambda _m: None) if build_options.get("quiet") else _stderr)
    n_in = len(example_inputs) if isinstance(example_inputs, (list, tuple, Mapping)) else 1
    names = scaffold.input_names(module, n_in, input_names, example_inputs)
    examples = _arrays(example_inputs, names, "example_inputs")
    outs = scaffold.trace(module, names, examples, output_names)
    inputs = scaffold.input_specs(names, examples, dynamic_batch, max_batch_size)

    cache_dir = build_options.get("cache_dir")
    folder = BuildOptions(cache_dir=Path(cache_dir).resolve() if cache_dir else None).state.root / "api" / name
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "weights.pt"
    torch.save(module.state_dict(), checkpoint)
    live.register(name, module)  # the key names the model, not the object: cache keys stay the same across runs

    separate = validation is not None  # the example inputs are then samples the gates never see
    if validation is None:
        warn(
            "optimize: no validation inputs given: the gates run on the example inputs only; "
            "pass validation= with held-out samples at the shapes you serve"
        )
        validation = examples
    val = _arrays(validation, names, "validation")
    if labels is not None:
        val["labels"] = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels)
    np.savez(folder / "validation.npz", **val)
    target_dicts = [_target(t) for t in targets]
    if calibration is None and separate:
        calibration = examples
    if calibration is None and any(t.get("precision") == "int8" for t in target_dicts):
        # the gate must see samples calibration did not (the rule model.yaml has)
        left = [t["name"] for t in target_dicts if t.get("precision") == "int8"]
        warn(
            f"optimize: INT8 target(s) {left} left out: no calibration samples apart from the gate's; "
            "pass calibration= (or validation= apart from the example inputs)"
        )
        target_dicts = [t for t in target_dicts if t.get("precision") != "int8"]
        if not target_dicts:
            raise ConfigError("targets: only INT8 targets, and no calibration= samples apart from the gate's")
    doc: dict[str, Any] = {
        "name": name,
        "source": {
            "checkpoint": str(checkpoint),
            "factory": "mscompile.live:module",
            "factory_args": {"handle": name, "code": live.code_digest(module)},
        },
        "inputs": inputs,
        "outputs": [{"name": o} for o in outs],
        "validation": {"data": str(folder / "validation.npz"), **({"labels": "labels"} if labels is not None else {})},
        "targets": target_dicts,
        "triton": {
            "repository": str(Path(repository).resolve()),
            "max_batch_size": max_batch_size if dynamic_batch else 0,
        },
    }
    if any(t.get("precision") == "int8" for t in target_dicts):
        np.savez(folder / "calibration.npz", **_arrays(calibration, names, "calibration"))
        doc["calibration"] = {"data": str(folder / "calibration.npz")}
    doc = _merge(doc, config or {})
    return build(doc, **build_options)
