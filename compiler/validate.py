"""`mscompile validate`: every check a build would make before its first pass,
plus a forward pass of the model on the declared shapes; nothing is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mscompile.passes.load_checkpoint import reference_outputs

from .config import ensemble_name
from .data import describe_dataset, load_calibration, load_validation
from .ensemble import chain_reference
from .loading import describe_source, load_module

MAX_PROBE_BYTES = 1 << 30


def validate_all(cfg: Any, config_path: Path) -> list[str]:
    lines = [f"{config_path}: configuration is valid ({len(cfg.targets)} target(s))"]
    source = describe_source(cfg.source)
    lines.append(f"checkpoint: {source.path} (sha256 {source.meta['checkpoint_sha256'][:12]}...)")
    data = describe_dataset(cfg.validation, "validation")
    feeds, labels = load_validation(cfg.io, cfg.validation, data)
    n = next(iter(feeds.values())).shape[0]
    lines.append(
        f"validation data: {data.path}: {n} samples"
        + (f", labels {cfg.validation.labels!r}" if labels is not None else "")
    )
    if cfg.calibration is not None:
        cal = load_calibration(cfg.io, cfg.calibration, describe_dataset(cfg.calibration, "calibration"))
        lines.append(f"calibration data: {next(iter(cal.values())).shape[0]} samples")
    module = load_module(cfg.source, source.path)
    lines.append(f"model: {type(module).__module__}.{type(module).__qualname__}")
    k = min(n, cfg.validation.batch_size)
    out = reference_outputs(module, cfg.io, {name: a[:k] for name, a in feeds.items()}, k)
    lines.append(
        "forward pass on validation samples: " + ", ".join(f"{name}{tuple(a.shape)}" for name, a in out.items())
    )
    for bound in ("min", "max"):
        if all(i.range is not None for i in cfg.inputs):
            need = sum(
                int(np.prod(getattr(i.range, bound), dtype=np.float64)) * np.dtype(i.dtype).itemsize for i in cfg.inputs
            )
            if need > MAX_PROBE_BYTES:
                lines.append(
                    f"forward pass at range {bound}: not run (its inputs take {need / 2**30:.1f} GiB; "
                    f"the probe stops at {MAX_PROBE_BYTES / 2**30:.0f} GiB)"
                )
                continue
            synthetic = {i.name: np.zeros(getattr(i.range, bound), dtype=i.dtype) for i in cfg.inputs}
            reference_outputs(module, cfg.io, synthetic, 1 << 30)
            lines.append(f"forward pass at range {bound}: ok")
    if cfg.pipeline is not None:  # the chain build gates: its steps, on the raw validation set
        raw, outs = chain_reference(cfg)
        lines.append(
            f"pipeline {ensemble_name(cfg)}: {len(next(iter(raw.values())))} raw samples through the steps and the "
            "PyTorch model: " + ", ".join(f"{name}{tuple(a.shape)}" for name, a in outs.items())
        )
    lines.append("ok: nothing was written")
    return lines


def probe_io(cfg) -> dict:
    """The graph's inputs and outputs as the exporter would write them, from two
    forward passes of the PyTorch model (dimensions that change are dynamic)."""
    source = describe_source(cfg.source)
    module = load_module(cfg.source, source.path)
    feeds, _ = load_validation(cfg.io, cfg.validation)
    k = min(2, next(iter(feeds.values())).shape[0])
    first = reference_outputs(module, cfg.io, {n: a[:k] for n, a in feeds.items()}, k)
    alt = {}
    for inp in cfg.inputs:  # the smallest shape the ranges allow (or 1 for unbounded dims)
        lo = inp.range.min if inp.range else [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        alt[inp.name] = np.zeros(lo, dtype=inp.dtype)
    second = reference_outputs(module, cfg.io, alt, 1 << 30)
    inputs = [
        {"name": i.name, "dtype": i.dtype, "dims": [cfg.dim_name(i, ax) or d for ax, d in enumerate(i.shape)]}
        for i in cfg.inputs
    ]
    outputs = []
    for o in cfg.outputs:
        a, b = first[o.name], second[o.name]
        dims = []
        for ax, (x, y) in enumerate(zip(a.shape, b.shape, strict=False)):
            if ax == 0 and cfg.has_batch_axis():
                dims.append("batch")
            else:
                dims.append(f"{o.name}_dim{ax}" if x != y else int(x))
        outputs.append({"name": o.name, "dtype": str(a.dtype), "dims": dims})
    return {"inputs": inputs, "outputs": outputs}
