"""Writes versions into a Triton model repository, safely.

<repo>/<model>/config.pbtxt and <repo>/<model>/<version>/{model.onnx, build_manifest.json}.
A version is assembled in a hidden staging folder inside the model folder
(Triton ignores folders whose names are not positive integers) and renamed
into place, so a polling server never sees half of it. config.pbtxt is
replaced atomically. A lock on the model folder serializes concurrent builds.
A build whose model files equal the latest version's publishes nothing new.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import sha256_file
from ..errors import RepositoryError
from ..faults import point

MANIFEST = "build_manifest.json"
LOCK = ".mscompile.lock"
_VERSION_RE = re.compile(r"^[1-9][0-9]*$")


@dataclass
class Published:
    model: str
    version: int
    path: Path
    reused: bool  # True: identical to the latest version; nothing new was written
    pruned: list[int] = field(default_factory=list)


def prune(model_dir: Path, keep_last: int, protected: set[int]) -> list[int]:
    """Remove version folders beyond the newest `keep_last`, never a protected one.
    A folder is renamed to a hidden name first (Triton ignores it), then deleted."""
    vs = versions(model_dir)
    keep = set(vs[-keep_last:]) | protected
    removed = []
    for v in vs:
        if v in keep:
            continue
        trash = model_dir / f".trash-{v}-{os.getpid()}"
        os.rename(model_dir / str(v), trash)
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(v)
    return removed


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and _VERSION_RE.match(p.name))


def model_dir_for(repo: Path, name: str) -> Path:
    repo = repo.resolve()
    d = (repo / name).resolve()
    if d.parent != repo:
        raise RepositoryError(f"model name {name!r} would be written outside the repository {repo}")
    return d


@contextmanager
def model_lock(model_dir: Path, timeout: float = 600.0):
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = path.read_text().strip() or "unknown"
                    raise RepositoryError(
                        f"{model_dir}: another build holds the lock ({holder}) for over {timeout:.0f}s; "
                        "wait for it, or remove the stale lock file if that process is gone"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(
            fd,
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode(),
        )
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish(
    repo: Path,
    name: str,
    files: dict[str, Path],
    config_text: str,
    manifest: dict[str, Any],
    lock_timeout: float = 600.0,
    keep_last: int | None = None,
    protect_latest: int = 0,
    protect_specific: frozenset[int] = frozenset(),
) -> Published:
    """Publish `files` (name in the version folder -> source file) as the next version
    of model `name`, unless they equal the latest version's files."""
    model_dir = model_dir_for(repo, name)
    digests = {rel: sha256_file(src) for rel, src in files.items()}
    with model_lock(model_dir, lock_timeout):
        # staging folders exist only under the lock: any found now are from a killed build
        for stale in [*model_dir.glob(".staging-*"), *model_dir.glob(".trash-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        existing = versions(model_dir)
        config_path = model_dir / "config.pbtxt"
        if existing:
            latest = model_dir / str(existing[-1])
            try:
                prior = json.loads((latest / MANIFEST).read_text()).get("files")
            except (OSError, ValueError):
                prior = None
            if prior == digests:
                if not config_path.is_file() or config_path.read_text() != config_text:
                    write_atomic(config_path, config_text)
                return Published(name, existing[-1], latest, reused=True)  # nothing new: nothing to prune
        version = (existing[-1] + 1) if existing else 1
        # config first: a server never sees a new version with a stale config
        if not config_path.is_file() or config_path.read_text() != config_text:
            write_atomic(config_path, config_text)
        point("publish:config")
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
        try:
            for rel, src in files.items():
                shutil.copyfile(src, staging / rel)
            full = dict(manifest, model=name, version=version, files=digests)
            (staging / MANIFEST).write_text(json.dumps(full, indent=2, default=str))
            for f in staging.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            os.chmod(staging, 0o755)
            point("publish:staged")
            final = model_dir / str(version)
            os.rename(staging, final)
            _fsync_dir(model_dir)
            point("publish:renamed")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        pruned: list[int] = []
        if keep_last:
            served = set(versions(model_dir)[-protect_latest:]) if protect_latest else set()
            pruned = prune(model_dir, keep_last, served | set(protect_specific))
        return Published(name, version, final, reused=False, pruned=pruned)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
