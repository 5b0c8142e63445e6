"""The state folder, derived in one place: cache, logs, reports, the MLflow
store and spool, timing caches. `build`, `plan`, `runs` and `report` all find
it through State.resolve, so they agree on where things are.

Default: $MSCOMPILE_HOME, else ./.mscompile. With --cache-dir DIR the cache is
DIR and the rest of the state lives beside it (DIR's parent)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock held by an open file (released when the holder exits or dies:
    no stale lock). Yields False when non-blocking and taken by another process."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


@dataclass(frozen=True)
class State:
    root: Path
    cache: Path

    @staticmethod
    def resolve(cache_dir: Path | None = None) -> State:
        if cache_dir is not None:
            cache = Path(cache_dir).expanduser().resolve()
            if cache.exists() and not cache.is_dir():
                raise ConfigError(f"--cache-dir: {cache} is a file; give a folder (it is created if missing)")
            return State(root=cache.parent, cache=cache)
        root = Path(os.environ.get("MSCOMPILE_HOME", ".mscompile")).expanduser().resolve()
        return State(root=root, cache=root / "cache")

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def build_logs(self, model: str, stamp: str) -> Path:
        return self.logs / f"{stamp}-{model}-{os.getpid()}"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def checked(self) -> Path:
        """Markers of calibration sets already checked against a model's inputs."""
        return self.root / "checked"
