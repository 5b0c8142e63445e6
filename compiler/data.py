"""Validation and calibration data: named arrays checked against the declared
model inputs before any work is done.

A data source is an .npz file (one array per input, samples on axis 0), a
folder of .npz batches or of <input>.npy files, a .txt file of lines turned
into inputs by a declared tokenizer, or a module:callable generator of feed
dicts."""

from __future__ import annotations

import hashlib
import io as _io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .artifacts import Dataset, folder_digest, sha256_path, size_of, walk_files
from .errors import ConfigError, InputDataError
from .loading import code_digest, factory_file, get_factory
from .sections import MAX_VALIDATION_SAMPLES, CalibrationConfig, DataSource, IOSpec, ValidationConfig, resolve_path


class Arrays(NamedTuple):
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None


class DataStore:
    """The arrays of each Dataset side input, loaded once per build (on first use)
    by the loader registered for its digest; passes get them through ctx.data()."""

    def __init__(self) -> None:
        self._loaders: dict[str, Callable[[], Any]] = {}
        self._loaded: dict[str, Arrays] = {}

    def register(self, dataset: Dataset, loader: Callable[[], Any]) -> None:
        self._loaders[dataset.digest] = loader

    def put(self, dataset: Dataset, arrays: Any) -> None:
        self._loaded[dataset.digest] = Arrays(*arrays)

    def get(self, dataset: Any) -> Arrays:
        if dataset.digest not in self._loaded:
            if dataset.digest not in self._loaders:
                raise KeyError(f"no loader for dataset {dataset.path} ({dataset.digest[:12]})")
            self._loaded[dataset.digest] = Arrays(*self._loaders[dataset.digest]())
        return self._loaded[dataset.digest]


MAX_DATA_BYTES = 2 << 30
MAX_TEXT_LINES = 100_000  # lines of a text file (data, prompts, passages)
MAX_TEXT_BYTES = 64 << 20  # bytes of a text file
MAX_LINE_CHARS = 100_000  # characters of one line: a passage, never a whole book


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def image_files(folder: Path, key: str) -> list[Path]:
    """The image files of a folder, sorted by name; a folder without any is an error
    naming `key`."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"{key}: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def describe_dataset(src: DataSource, key: str) -> Dataset:
    """The data source as an artifact whose digest covers everything that shapes the
    arrays: the file(s), the source of the tokenizer or generator (with the local
    modules it imports) and its args, and the section's settings (samples, seed,
    labels). meta['content'] is the digest of the file(s) alone: loading checks it."""
    h = hashlib.sha256()
    meta: dict = {}
    settings = src.model_dump(mode="json", exclude={"batch_size", "shapes"})  # neither changes the arrays
    h.update(json.dumps(settings, sort_keys=True).encode())
    if src.data is not None:
        path = resolve_path(src.data)
        if not path.exists():
            raise ConfigError(
                f"{key}.data: {path} not found; check the path (relative paths start at the working directory)"
            )
        _regular_files(path, key)
        if size_of(path) > MAX_DATA_BYTES:
            raise InputDataError(f"{key}.data: {path} is larger than the 2 GiB limit for data")
        if path.is_file() and path.suffix not in (".npz", ".txt"):
            raise InputDataError(
                f"{key}.data: {path} must be an .npz file, a folder of .npz/.npy files, or a .txt file with a tokenizer"
            )
        meta["content"] = sha256_path(path)
        h.update(meta["content"].encode())
        meta["data"] = str(path)
    else:
        path = factory_file(src.generator, f"{key}.generator")  # type: ignore[arg-type]
        meta["generator"] = src.generator
    for name in ("tokenizer", "generator"):
        spec = getattr(src, name)
        if spec:
            h.update(code_digest(spec, f"{key}.{name}").encode())
    return Dataset(path=path, digest=h.hexdigest(), meta=meta)


def _regular_files(path: Path, key: str) -> None:
    """Data is regular files: a FIFO would block the read forever, a link to a
    device (/dev/zero) would never end."""
    import stat

    items = [path] if not path.is_dir() else [Path(r) / n for r, _, names in os.walk(path) for n in names]
    for f in items:
        try:
            mode = os.stat(f).st_mode
        except OSError as exc:
            raise InputDataError(f"{key}.data: cannot read {f} ({exc.strerror})") from None
        if not stat.S_ISREG(mode):
            raise InputDataError(
                f"{key}.data: {f} is not a regular file (a pipe, device or socket); data must be files on disk"
            )


def _snapshot(path: Path, key: str, expect: str | None) -> dict[str, bytes]:
    """Every file of a data path read once into memory (relative name -> bytes),
    checked against the digest the build's cache keys were computed from."""
    if path.is_file():
        files = {"": path.read_bytes()}
        digest = hashlib.sha256(files[""]).hexdigest()
    else:
        files = {rel: f.read_bytes() for rel, f in walk_files(path)}
        digest = folder_digest((rel, hashlib.sha256(b).hexdigest()) for rel, b in files.items())
    if expect is not None and digest != expect:
        raise InputDataError(
            f"{key}.data: {path} changed while the build was running (its digest was {expect[:12]}... at the "
            f"start, {digest[:12]}... now); run the build again once the file is complete"
        )
    return files


def read_source(src: DataSource, key: str, expect: str | None = None) -> dict[str, np.ndarray]:
    """All arrays of a data source (inputs, and labels where present). `expect`: the
    digest of the data file(s) recorded when the build started (Dataset meta 'content')."""
    if src.generator is not None:
        gen = get_factory(src.generator, f"{key}.generator")
        # a generator need not end: take batches until `samples` (or the sample limit) is reached
        want = src.samples or MAX_VALIDATION_SAMPLES + 1
        parts, n = [], 0
        try:
            for part in gen(**src.generator_args):
                parts.append(part)
                first = next(iter(part.values()), None) if isinstance(part, dict) else None
                n += int(np.shape(first)[0]) if first is not None and np.ndim(first) > 0 else 1
                if n >= want:
                    break
        except Exception as exc:  # user code: report it as a data error
            raise InputDataError(f"{key}.generator: {src.generator} failed: {type(exc).__name__}: {exc}") from None
        return _concat(parts, f"{key}.generator {src.generator}")
    path = resolve_path(src.data)  # type: ignore[arg-type]
    snap = _snapshot(path, key, expect)
    if path.is_dir():
        files = sorted(r for r in snap if "/" not in r and Path(r).suffix in (".npz", ".npy"))
        if not files:
            raise InputDataError(f"{key}.data: folder {path} holds no .npz or .npy files")
        if all(r.endswith(".npy") for r in files):
            return {Path(r).stem: _load_npy(snap[r], path / r, key) for r in files}
        return _concat([load_arrays(snap[r], path / r, f"{key}.data") for r in files if r.endswith(".npz")], str(path))
    if path.suffix == ".txt":
        try:
            text = snap[""].decode("utf-8")
        except UnicodeDecodeError:
            raise InputDataError(f"{key}.data: {path} is not UTF-8 text") from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise InputDataError(f"{key}.data: {path} has no non-empty lines")
        try:
            check_text_lines(lines)
        except ValueError as exc:
            raise InputDataError(f"{key}.data: {path}: {exc}") from None
        tok = get_factory(src.tokenizer, f"{key}.tokenizer")  # type: ignore[arg-type]
        try:
            out = tok(lines, **src.tokenizer_args)
        except Exception as exc:  # user code: report it as a data error
            raise InputDataError(
                f"{key}.tokenizer: {src.tokenizer} failed on {path}: {type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(out, dict):
            raise InputDataError(
                f"{key}.tokenizer: {src.tokenizer} returned {type(out).__name__}; it must return {{input name: array}}"
            )
        return {k: np.asarray(v) for k, v in out.items()}
    return load_arrays(snap[""], path, f"{key}.data")


def _check_npy_header(f: Any, size: int) -> None:
    """An .npy header's shape against the bytes that follow it (`size` in all): numpy
    allocates what the header declares before reading, so 10**12 samples in a 200-byte
    file would be 10 TiB. ValueError when it declares more than the file holds."""
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(f)  # the header only: nothing allocated yet
    if int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > size:
        raise ValueError(f"its header declares {shape} {dtype}, more than the file's {size} bytes hold")


def _load_npy(data: bytes, p: Path, key: str) -> np.ndarray:
    try:
        _check_npy_header(_io.BytesIO(data), len(data))
    except (ValueError, OSError, EOFError) as exc:
        raise InputDataError(f"{key}.data: cannot read {p} ({exc})") from None
    try:
        return np.load(_io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputDataError(f"{key}.data: cannot read {p} ({exc})") from None


def _concat(parts: list, where: str) -> dict[str, np.ndarray]:
    if not parts or not all(isinstance(p, dict) for p in parts):
        raise InputDataError(f"{where}: expected one or more {{input name: array}} batches")
    keys = set(parts[0])
    for p in parts[1:]:
        if set(p) != keys:
            raise InputDataError(f"{where}: batches have different arrays ({sorted(keys)} vs {sorted(p)})")
    try:
        return {k: np.concatenate([np.asarray(p[k]) for p in parts], axis=0) for k in sorted(keys)}
    except ValueError as exc:
        raise InputDataError(f"{where}: batches do not stack along the sample axis: {exc}") from None


def _check_inflated(data: bytes | Path, path: Path, key: str) -> None:
    """The sizes an .npz declares, checked before anything is inflated (10 MB of
    zeros compress to a 9.5 GiB array), and each member's array header against its
    own size (a header claiming 10**12 samples)."""
    try:
        with zipfile.ZipFile(_io.BytesIO(data) if isinstance(data, bytes) else data) as z:
            total = sum(i.file_size for i in z.infolist())
            for info in z.infolist():
                if info.filename.endswith(".npy") and total <= MAX_DATA_BYTES:
                    with z.open(info) as member:
                        try:
                            _check_npy_header(member, info.file_size)
                        except ValueError as exc:
                            raise InputDataError(
                                f"{key}: cannot read {path}: member {info.filename} ({exc}); save it with numpy.savez"
                            ) from None
    except (zipfile.BadZipFile, OSError, EOFError):
        return  # np.load reports a bad file with its own message
    if total > MAX_DATA_BYTES:
        raise InputDataError(
            f"{key}: {path} inflates to {total / 2**30:.1f} GiB, above the 2 GiB limit for data; use fewer samples"
        )


def load_arrays(data: bytes | Path, path: Path, key: str) -> dict[str, np.ndarray]:
    _check_inflated(data, path, key)
    try:
        with np.load(_io.BytesIO(data) if isinstance(data, bytes) else data, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputDataError(f"{key}: cannot read {path} as .npz ({exc}); save it with numpy.savez") from None


def check_arrays(cfg: IOSpec, arrays: dict[str, np.ndarray], path: Path | str, key: str, labels: str | None) -> int:
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
        ok = a.ndim == len(expect) and all(e is None or e == d for e, d in zip(expect, a.shape, strict=False))
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
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, -1)))[0][0]
            raise InputDataError(
                f"{path}: array {inp.name!r} holds NaN or inf (sample {bad}); data must be finite numbers"
            )
        counts.add(a.shape[0] if cfg.has_batch_axis() else 1)
    if labels:
        lab = arrays[labels]
        if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
            raise InputDataError(f"{path}: labels array {labels!r} must be 1-D integers, got {lab.dtype} {lab.shape}")
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
    io: IOSpec, v: ValidationConfig, dataset: Dataset | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs (the first validation.samples) and labels, after checking them.
    `dataset`: the described source, whose recorded digest the files must still have."""
    arrays = read_source(v, "validation", dataset.meta.get("content") if dataset else None)
    n = check_arrays(io, arrays, _where(v), _key(v, "validation"), v.labels)
    _bounded(n, v, "validation")
    k = min(n, v.samples) if v.samples else n
    feeds = {i.name: arrays[i.name][:k] for i in io.inputs}
    labels = arrays[v.labels][:k] if v.labels else None
    return feeds, labels


def load_calibration(io: IOSpec, c: CalibrationConfig, dataset: Dataset | None = None) -> dict[str, np.ndarray]:
    """Calibration inputs after checking them: a seeded random subset of `samples`."""
    arrays = read_source(c, "calibration", dataset.meta.get("content") if dataset else None)
    n = check_arrays(io, arrays, _where(c), _key(c, "calibration"), None)
    _bounded(n, c, "calibration")
    feeds = {i.name: arrays[i.name] for i in io.inputs}
    if c.samples and c.samples < n and io.has_batch_axis():
        idx = np.sort(np.random.default_rng(c.seed).choice(n, size=c.samples, replace=False))
        feeds = {k: v[idx] for k, v in feeds.items()}
    return feeds


def _bounded(n: int, src: DataSource, section: str) -> None:
    if n > MAX_VALIDATION_SAMPLES and not src.samples:
        raise InputDataError(
            f"{_where(src)}: holds {n} samples, above the {MAX_VALIDATION_SAMPLES} limit; "
            f"set {section}.samples to use a subset"
        )


def _key(src: DataSource, section: str) -> str:
    return f"{section}.data" if src.data else f"{section}.generator"


def _where(src: DataSource) -> str:
    return str(resolve_path(src.data)) if src.data else f"generator {src.generator}"


def batches(feeds: dict[str, np.ndarray], size: int):
    n = next(iter(feeds.values())).shape[0]
    for s in range(0, n, size):
        yield {k: v[s : s + size] for k, v in feeds.items()}


def read_lines(path: str) -> list[str]:
    """The passages of a text file: one per non-blank line, or the `text` of each JSON line.
    ValueError when the file or a line is beyond the limits (the tokenizers hit the memory
    cap with a 40 MB line)."""
    p = Path(path)
    size = p.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise ValueError(f"{size} bytes, above the {MAX_TEXT_BYTES >> 20} MiB limit for a text file")
    raw = p.read_text(encoding="utf-8").splitlines()
    if p.suffix == ".jsonl":
        lines = [json.loads(ln)["text"] for ln in raw if ln.strip()]
        if not all(isinstance(t, str) for t in lines):
            raise ValueError("a 'text' value is not a string")
    else:
        lines = [ln for ln in raw if ln.strip()]
    check_text_lines(lines)
    return lines


def check_text_lines(lines: list[str]) -> None:
    """ValueError when a text file's lines are beyond the limits: count, and length of one
    line (a passage or a sample, never a whole book: tokenizers hit the memory cap)."""
    if len(lines) > MAX_TEXT_LINES:
        raise ValueError(f"{len(lines)} lines, above the {MAX_TEXT_LINES} limit")
    long = next((i for i, ln in enumerate(lines) if len(ln) > MAX_LINE_CHARS), None)
    if long is not None:
        raise ValueError(f"line {long + 1} holds {len(lines[long])} characters, above the {MAX_LINE_CHARS} limit")


def text_file(key: str, value: str) -> tuple[Path, list[str]]:
    """A text file of model.yaml (validation.text, validation.prompts, calibration.text):
    its path and passages, or ConfigError naming the key and what to fix."""
    p = resolve_path(value)
    if not p.is_file():
        raise ConfigError(f"{key}: {p} not found; check the path (relative paths start at the working directory)")
    try:
        lines = read_lines(str(p))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{key}: {p} is not one passage per line (or JSON lines with a 'text' key) within the limits: {exc}"
        ) from None
    if not lines:
        raise ConfigError(f"{key}: {p} holds no text")
    return p, lines
