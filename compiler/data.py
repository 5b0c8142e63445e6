"""Validation (and later calibration) data: .npz files of named arrays, checked
against the declared model inputs before any work is done."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .artifacts import Dataset, sha256_file
from .config import IOSpec, ValidationConfig, resolve_path
from .errors import ConfigError, InputDataError

MAX_DATA_BYTES = 2 << 30


def describe_dataset(path_spec: str, key: str) -> Dataset:
    path = resolve_path(path_spec)
    if not path.is_file():
        raise ConfigError(
            f"{key}: data file {path} not found; check the path (relative paths start at the working directory)"
        )
    if path.stat().st_size > MAX_DATA_BYTES:
        raise InputDataError(f"{key}: {path} is larger than the 2 GiB limit for data files")
    if path.suffix != ".npz":
        raise InputDataError(f"{key}: {path} must be an .npz file with one array per model input")
    return Dataset(path=path, digest=sha256_file(path), meta={"file": str(path)})


def load_arrays(path: Path, key: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputDataError(
            f"{key}: cannot read {path} as .npz ({exc}); save it with numpy.savez"
        ) from None


def check_arrays(
    cfg: IOSpec, arrays: dict[str, np.ndarray], path: Path, key: str, labels: str | None
) -> int:
    """Names, dtypes and shapes against cfg.inputs; returns the sample count."""
    wanted = [i.name for i in cfg.inputs] + ([labels] if labels else [])
    missing = [n for n in wanted if n not in arrays]
    if missing:
        raise InputDataError(
            f"{path}: no array named {missing[0]!r} (key {key}); the file has {sorted(arrays)}, "
            f"the model needs {wanted}"
        )
    counts = set()
    for inp in cfg.inputs:
        a = arrays[inp.name]
        if str(a.dtype) != inp.dtype:
            raise InputDataError(
                f"{path}: array {inp.name!r} has dtype {a.dtype}; model input {inp.name!r} expects {inp.dtype}"
            )
        expect = _expected_shape(cfg, inp)
        ok = a.ndim == len(expect) and all(
            e is None or e == d for e, d in zip(expect, a.shape, strict=False)
        )
        if not ok:
            shown = "(" + ", ".join("N" if e is None else str(e) for e in expect) + ")"
            raise InputDataError(
                f"{path}: array {inp.name!r} has shape {tuple(a.shape)}; model input {inp.name!r} expects {shown}"
            )
        if inp.range is not None:
            for ax in range(1, a.ndim):
                lo, hi = inp.range.min[ax], inp.range.max[ax]
                if not lo <= a.shape[ax] <= hi:
                    raise InputDataError(
                        f"{path}: array {inp.name!r} dimension {ax} is {a.shape[ax]}, outside "
                        f"inputs[{inp.name}].range {lo}..{hi}"
                    )
        counts.add(a.shape[0] if cfg.has_batch_axis() else 1)
    if labels:
        lab = arrays[labels]
        if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
            raise InputDataError(
                f"{path}: labels array {labels!r} must be 1-D integers, got {lab.dtype} {lab.shape}"
            )
        counts.add(lab.shape[0])
    if len(counts) != 1:
        raise InputDataError(
            f"{path}: arrays have different sample counts {sorted(counts)}; every array's first axis is the sample axis"
        )
    n = counts.pop()
    if n < 1:
        raise InputDataError(f"{path}: holds no samples")
    return n


def _expected_shape(cfg: IOSpec, inp) -> list[int | None]:
    """The array shape a data file must have: samples first, then the dims."""
    dims = [None if (isinstance(d, str) or d == -1) else d for d in inp.shape]
    if cfg.has_batch_axis():
        return [None] + dims[1:]
    return dims


def load_validation(
    io: IOSpec, v: ValidationConfig, path: Path
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs (limited to validation.samples) and labels, after checking them."""
    arrays = load_arrays(path, "validation.data")
    n = check_arrays(io, arrays, path, "validation.data", v.labels)
    k = min(n, v.samples) if v.samples else n
    feeds = {i.name: arrays[i.name][:k] for i in io.inputs}
    labels = arrays[v.labels][:k] if v.labels else None
    return feeds, labels


def batches(feeds: dict[str, np.ndarray], size: int):
    n = next(iter(feeds.values())).shape[0]
    for s in range(0, n, size):
        yield {k: v[s : s + size] for k, v in feeds.items()}
