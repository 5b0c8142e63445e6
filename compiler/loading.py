"""Loading checkpoints and factories safely, and describing them for the cache.

torch is imported inside the functions that need it, so `mscompile --help`,
`plan` and cached rebuilds never pay for it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import sysconfig
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .artifacts import TorchSource, sha256_file
from .errors import CheckpointError, ConfigError
from .sections import SourceConfig

MAX_CHECKPOINT_BYTES = 8 << 30  # 8 GiB; larger models belong to the LLM path


def resolve_checkpoint(spec: str, key: str = "source.checkpoint", folder: bool = False) -> Path:
    """A path relative to the working directory, or pkg:<package>/<path inside it>
    (a file, or with `folder` a directory such as a Hugging Face checkpoint)."""
    if spec.startswith("pkg:"):
        rest = spec[4:]
        pkg, _, inner = rest.partition("/")
        if not pkg or not inner:
            raise ConfigError(f"{key}: {spec!r} must look like pkg:<package>/<path inside the package>")
        try:
            found = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            raise ConfigError(f"{key}: package {pkg!r} is not installed; pip install it, or give a file path")
        base = Path(next(iter(found.submodule_search_locations))).resolve()
        path = (base / inner).resolve()
        if base not in path.parents:
            raise ConfigError(f"{key}: {spec!r} points outside package {pkg!r}")
    else:
        path = Path(spec).expanduser().resolve()
    if folder:
        if not path.is_dir():
            raise ConfigError(
                f"{key}: checkpoint folder {path} not found; check the path (relative paths start at the working directory)"
            )
        return path
    if not path.is_file():
        raise ConfigError(
            f"{key}: checkpoint file {path} not found; check the path (relative paths start at the working directory)"
        )
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise ConfigError(f"{key}: {path} is {size / 2**30:.1f} GiB, above the 8 GiB limit for this pipeline")
    return path


PSEUDO_ROOTS = ("/proc", "/sys", "/dev", "/run")
ALLOWED_ROOTS_ENV = "MSCOMPILE_FILES_ROOT"  # extra folders step files may come from (os.pathsep-separated)


def resolve_shipped_file(spec: str, key: str) -> Path:
    """A file a model.yaml line asks to publish (a pipeline step's `files`): a line is
    data, not code, so the file must be a regular file whose real path stays inside the
    working directory, the named package (pkg:) or a folder listed in
    $MSCOMPILE_FILES_ROOT; no link on the way, no device or pseudo file (/proc, /sys)."""
    if spec.startswith("pkg:"):
        path = resolve_checkpoint(spec, key)  # the package is installed, the path stays inside it
        pkg, _, inner = spec[4:].partition("/")
        found = importlib.util.find_spec(pkg)
        assert found is not None and found.submodule_search_locations
        base = Path(next(iter(found.submodule_search_locations))).resolve()
        roots = [base]
        lexical = Path(os.path.normpath(base / inner))
    else:
        given = Path(spec).expanduser()
        lexical = Path(os.path.normpath(given if given.is_absolute() else Path(os.getcwd()) / given))
        roots = [Path(os.getcwd()).resolve()]
        roots += [Path(r).resolve() for r in os.environ.get(ALLOWED_ROOTS_ENV, "").split(os.pathsep) if r]
        path = Path(os.path.realpath(lexical))
    fix = f"copy the file into the project folder ({roots[0]}) and name it there" + (
        f", or list its folder in ${ALLOWED_ROOTS_ENV}" if not spec.startswith("pkg:") else ""
    )
    if any(str(path) == r or str(path).startswith(r + "/") for r in PSEUDO_ROOTS):
        raise ConfigError(f"{key}: {spec!r} is a device or pseudo file ({path}); only regular files are published")
    if path != lexical:
        raise ConfigError(f"{key}: {spec!r} goes through a symbolic link (to {path}); links are not published: {fix}")
    if not any(r == path or r in path.parents for r in roots):
        raise ConfigError(
            f"{key}: {spec!r} is outside the folders step files may come from ({', '.join(map(str, roots))}): {fix}"
        )
    import stat

    try:
        st = os.stat(path)
    except OSError:
        raise ConfigError(
            f"{key}: file {path} not found; check the path (relative paths start at the working directory)"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{key}: {spec!r} is not a regular file ({path}); only regular files are published")
    if st.st_size > MAX_CHECKPOINT_BYTES:
        raise ConfigError(f"{key}: {path} is {st.st_size / 2**30:.1f} GiB, above the 8 GiB limit")
    return path


@contextmanager
def cwd_on_path():
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def factory_file(spec: str, key: str = "source.factory") -> Path:
    """The source file of the factory's module, found without running it."""
    module, _, _ = spec.partition(":")
    with cwd_on_path():
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError) as exc:
            raise ConfigError(
                f"{key}: cannot find module {module!r} ({exc}); it must be importable from the working directory or installed"
            ) from None
    if found is None or found.origin in (None, "built-in", "frozen"):
        raise ConfigError(
            f"{key}: cannot find module {module!r}; it must be importable from the working directory or installed"
        )
    return Path(found.origin)


def get_factory(spec: str, key: str = "source.factory") -> Any:
    module_name, _, attr = spec.partition(":")
    with cwd_on_path():
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # any failure while importing user code is the user's to fix
            raise ConfigError(f"{key}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key}: {spec!r} is not callable; it must return an nn.Module")
    return obj


@functools.lru_cache(maxsize=1)
def _library_roots() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    roots = {Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots |= {Path(sys.base_prefix).resolve() / "lib", Path(sys.prefix).resolve() / "lib"}
    return tuple(sorted(roots))


def _is_local(path: Path) -> bool:
    """User code: a .py file outside the interpreter's standard library and site-packages."""
    path = path.resolve()
    return path.suffix == ".py" and not any(r == path or r in path.parents for r in _library_roots())


@functools.lru_cache(maxsize=1)
def _installed_tops() -> dict[str, bool]:
    """Top-level import names of installed distributions -> whether every distribution
    providing it is an editable install (the user's own code: it counts as local)."""
    editable: dict[str, bool] = {}
    for top, dists in importlib.metadata.packages_distributions().items():
        editable[top] = all(_is_editable(d) for d in dists)
    return editable


@functools.cache
def _is_editable(dist: str) -> bool:
    try:
        text = importlib.metadata.distribution(dist).read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return False
    try:
        return bool(text and json.loads(text).get("dir_info", {}).get("editable"))
    except ValueError:
        return False


def _is_library(top: str) -> bool:
    """An installed distribution's package, wherever it lies (site-packages, --target,
    --user, a .pth or PYTHONPATH folder): its modules are never crawled, unless it lies in
    the project (the working directory) or is an editable install: the user's code."""
    return _installed_tops().get(top) is False


def _module_file(name: str) -> Path | None:
    """The .py file of a module of a local top-level package or module, found
    without importing anything (a library's modules are never looked at)."""
    top, _, rest = name.partition(".")
    with cwd_on_path():
        try:
            spec = importlib.util.find_spec(top)  # a top-level lookup imports nothing
        except (ImportError, ValueError):
            return None
    if spec is None:
        return None
    where = Path(next(iter(spec.submodule_search_locations))) if spec.submodule_search_locations else None
    where = where or (Path(spec.origin) if spec.origin not in (None, "built-in", "frozen") else None)
    if where is not None and _is_library(top) and Path.cwd().resolve() not in where.resolve().parents:
        return None  # an installed library outside the project, wherever it is installed
    if spec.submodule_search_locations:
        base = Path(next(iter(spec.submodule_search_locations)))
        if not rest:
            init = base / "__init__.py"
            return init if init.is_file() and _is_local(init) else None
        stem = base.joinpath(*rest.split("."))
        for f in (stem.with_suffix(".py"), stem / "__init__.py"):
            if f.is_file() and _is_local(f):
                return f
        return None
    if rest or spec.origin in (None, "built-in", "frozen"):
        return None
    f = Path(spec.origin)
    return f if _is_local(f) else None


def local_modules(spec: str, key: str = "source.factory") -> dict[str, Path]:
    """The factory's module and every local module it imports, directly or not
    (found by reading import statements, not by running them): name -> file."""
    module, _, _ = spec.partition(":")
    first = factory_file(spec, key)
    seen: dict[Path, str] = {first.resolve(): module}
    queue = [(first.resolve(), module)]
    while queue:
        path, name = queue.pop()
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue  # importing it will report the problem
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".") if package else []
                    base = ".".join(parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts)
                    mod = ".".join(p for p in (base, node.module or "") if p)
                else:
                    mod = node.module or ""
                names = [mod] + [f"{mod}.{a.name}" for a in node.names if mod]
            for n in names:
                f = _module_file(n) if n else None
                if f is not None and f.resolve() not in seen:
                    seen[f.resolve()] = n
                    queue.append((f.resolve(), n))
    return {name: path for path, name in sorted(seen.items(), key=lambda kv: kv[1])}


def code_digest(spec: str, key: str = "source.factory", modules: dict[str, Path] | None = None) -> str:
    """One digest over the factory's module and the local modules it imports, by
    module name and content (not by path, so two checkouts share a cache): editing
    any of them changes every cache key built from it."""
    h = hashlib.sha256()
    for name, f in sorted((modules or local_modules(spec, key)).items()):
        h.update(name.encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def describe_source(src: SourceConfig) -> TorchSource:
    """The load pass's input artifact: checkpoint + factory code, one digest. The load
    pass copies the checkpoint into its own output and checks the copy against
    `checkpoint_sha256`, so what it reads is what the key digested."""
    ckpt = resolve_checkpoint(src.checkpoint)
    ck_digest = sha256_file(ckpt)
    meta: dict[str, Any] = {"checkpoint": str(ckpt), "checkpoint_sha256": ck_digest}
    h = hashlib.sha256(ck_digest.encode())
    if src.factory:
        modules = local_modules(src.factory)
        meta["factory_file"] = str(factory_file(src.factory))
        meta["code_sha256"] = code_digest(src.factory, modules=modules)
        meta["code_files"] = {name: str(f) for name, f in modules.items()}
        h.update(meta["code_sha256"].encode())
    return TorchSource(path=ckpt, digest=h.hexdigest(), meta=meta)


def detect_format(path: Path) -> str:
    """safetensors | export (.pt2) | torchscript | pickle (torch.save)."""
    if path.suffix == ".safetensors":
        return "safetensors"
    if not zipfile.is_zipfile(path):
        return "pickle"  # legacy (non-zip) torch.save files
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    _check_members(path, names)
    if path.suffix == ".pt2" or any(n.endswith("archive_format") for n in names):
        return "export"
    if any("/code/" in n for n in names) or any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return "pickle"


def _check_members(path: Path, names: list[str]) -> None:
    for n in names:
        parts = n.replace("\\", "/").split("/")
        if n.startswith("/") or ".." in parts or (len(n) > 1 and n[1] == ":"):
            raise CheckpointError(
                f"source.checkpoint: {path} contains the archive member {n!r}, which escapes its folder; "
                "refusing to load it (re-save the model with torch.save / torch.export.save)"
            )


def load_module(src: SourceConfig, checkpoint: Path) -> Any:
    """Re-create the nn.Module in eval mode. Pickles only with trust_pickle. `checkpoint`
    may be the load pass's copy: errors name the user's file (source.checkpoint)."""
    import torch

    fmt = detect_format(checkpoint)
    shown = src.checkpoint or checkpoint
    key = "source.checkpoint"
    try:
        if fmt == "torchscript":
            module = torch.jit.load(str(checkpoint), map_location="cpu")
            return module.eval()
        if fmt == "export":
            if not src.trust_pickle:
                # .pt2 archives hold pickled constants; torch.export.load has no weights_only mode
                raise CheckpointError(
                    f"{key}: {shown} is a torch.export archive, which unpickles data on load; "
                    "set source.trust_pickle: true if you trust its origin, or give a state_dict/safetensors file"
                )
            return torch.export.load(str(checkpoint)).module()
        if fmt == "safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(checkpoint), device="cpu")
        else:
            obj = torch.load(str(checkpoint), map_location="cpu", weights_only=not src.trust_pickle)
    except CheckpointError:
        raise
    except Exception as exc:
        text = str(exc)
        if "Unsupported global" in text or "GLOBAL" in text:  # a pickle that names Python classes
            raise CheckpointError(
                f"{key}: {shown} holds pickled Python objects beyond tensors (e.g. a whole nn.Module), "
                "and loading it could run arbitrary code. Save a state_dict instead "
                "(torch.save(model.state_dict(), path)), or set source.trust_pickle: true if you trust its origin"
            ) from None
        detail = next(
            (
                ln.strip()
                for ln in text.splitlines()
                if ln.strip()
                and "Weights only load failed" not in ln
                and not ln.startswith(("Please file", "Check the documentation", "WeightsUnpickler"))
            ),
            "",
        )
        raise CheckpointError(
            f"{key}: cannot load {shown} as a {fmt} checkpoint ({type(exc).__name__}: {detail}); "
            "is it a torch.save / safetensors / TorchScript / torch.export file?"
        ) from None

    if isinstance(obj, torch.nn.Module):
        return obj.eval()
    if isinstance(obj, dict) and src.state_dict_key is not None:
        if src.state_dict_key not in obj:
            raise CheckpointError(
                f"source.state_dict_key: {src.state_dict_key!r} not in {shown}; "
                f"its keys are {sorted(map(str, obj))[:10]}"
            )
        obj = obj[src.state_dict_key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = sorted(map(str, obj))[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{key}: {shown} is not a state dict of tensors (found {keys}); "
            "if the weights sit under a key, name it in source.state_dict_key"
        )
    if not src.factory:
        raise ConfigError(
            f"source.factory: {shown} holds only weights; name the module:callable that builds "
            "the nn.Module, e.g. factory: mypkg.model:Net"
        )
    factory = get_factory(src.factory)
    try:
        module = factory(**src.factory_args)
    except TypeError as exc:
        raise ConfigError(f"source.factory_args: calling {src.factory} failed: {exc}") from None
    except Exception as exc:  # the user's code raised: their error, named, exit 2
        raise ConfigError(
            f"source.factory: {src.factory}({_fmt_args(src.factory_args)}) raised {type(exc).__name__}: {exc}"
            f"{_raised_at(exc)}; fix the factory (run it in Python to see the traceback)"
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"source.factory: {src.factory} returned {type(module).__name__}, not an nn.Module")
    try:
        module.load_state_dict(obj, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(s.strip() for s in first[:3])
        raise CheckpointError(
            f"{key}: the weights in {shown} do not fit {src.factory}({_fmt_args(src.factory_args)}): {detail}"
        ) from None
    return module.eval()


def _raised_at(exc: BaseException) -> str:
    """' at file:line' of the innermost frame of a user's exception."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""


def _fmt_args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def flatten_outputs(value: Any) -> list[tuple[str, Any]]:
    """A module's return value as (path, leaf) pairs in the order the ONNX exporters
    flatten it (torch's pytree: tuples and lists by index, dicts and Hugging Face
    ModelOutputs by key, nested to any depth; None left out, as the exporters do).
    Paths join keys with dots: '0.boxes' is the boxes of the first image's dict."""
    from torch.utils import _pytree as pytree

    out = []
    for path, leaf in pytree.tree_flatten_with_path(value)[0]:
        if leaf is None:
            continue
        keys = [getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path]
        out.append((".".join(str(k) for k in keys) or "output", leaf))
    return out


def as_output_list(value: Any, n_expected: int, where: str) -> list[Any]:
    """A module's return value as its list of tensors (flatten_outputs' order), checked
    against the outputs: model.yaml declares; the error lists what the model returns."""
    import torch

    items = flatten_outputs(value)
    odd = [(p, type(v).__name__) for p, v in items if not isinstance(v, torch.Tensor)]
    if odd:
        raise ConfigError(
            f"{where}: the model returns {', '.join(f'{t} at {p!r}' for p, t in odd[:5])}; every returned "
            "value must be a tensor (in a tensor, tuple, list, dict or ModelOutput, nested as you like)"
        )
    if len(items) != n_expected:
        shown = ", ".join(f"{p} {list(v.shape)}" for p, v in items[:12]) + (" ..." if len(items) > 12 else "")
        hint = ""
        if items and all("." in p and p.split(".")[0].isdigit() for p, _ in items):
            hint = (
                "; a model that returns one entry per sample (a detector's list of per-image dicts) has "
                "outputs whose count follows the batch: declare a fixed batch of 1 (shape [1, ...]) and "
                "name the first sample's tensors"
            )
        raise ConfigError(
            f"outputs: model.yaml declares {n_expected} output(s), but the model returns {len(items)} "
            f"tensor(s): {shown}; list one name per tensor, in this order{hint}"
        )
    return [v for _, v in items]
