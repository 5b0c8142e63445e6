"""`mscompile validate`: every check a build would make before its first pass,
plus a forward pass of the model on the declared shapes; nothing is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import load_config
from .data import describe_dataset, load_validation
from .loading import describe_source, load_module


def validate_all(config_path: Path) -> list[str]:
    from mscompile.passes.load_checkpoint import reference_outputs

    cfg = load_config(config_path)
    lines = [f"{config_path}: configuration is valid ({len(cfg.targets)} target(s))"]
    source = describe_source(cfg.source)
    lines.append(f"checkpoint: {source.path} (sha256 {source.meta['checkpoint_sha256'][:12]}...)")
    data = describe_dataset(cfg.validation.data, "validation.data")
    feeds, labels = load_validation(cfg.io, cfg.validation, data.path)
    n = next(iter(feeds.values())).shape[0]
    lines.append(
        f"validation data: {data.path}: {n} samples"
        + (f", labels {cfg.validation.labels!r}" if labels is not None else "")
    )
    module = load_module(cfg.source, source.path)
    lines.append(f"model: {type(module).__module__}.{type(module).__qualname__}")
    k = min(n, cfg.validation.batch_size)
    out = reference_outputs(module, cfg.io, {name: a[:k] for name, a in feeds.items()}, k)
    lines.append(
        "forward pass on validation samples: "
        + ", ".join(f"{name}{tuple(a.shape)}" for name, a in out.items())
    )
    for bound in ("min", "max"):
        if all(i.range is not None for i in cfg.inputs):
            synthetic = {
                i.name: np.zeros(getattr(i.range, bound), dtype=i.dtype) for i in cfg.inputs
            }
            reference_outputs(module, cfg.io, synthetic, 1 << 30)
            lines.append(f"forward pass at range {bound}: ok")
    lines.append("ok: nothing was written")
    return lines
