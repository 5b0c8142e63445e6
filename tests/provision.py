"""One provisioning at a time of a shared test cache folder (a Triton tree, a
perf_analyzer, unpacked wheels): parallel test workers, or two suites on one
machine, share $MSCOMPILE_TEST_CACHE. The second waits for the first's lock, then
finds the folder complete."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def once(root: Path, done: Callable[[], bool], make: Callable[[], object]) -> None:
    """make() unless done(), checked again under the lock."""
    if done():
        return
    with locked(root):
        if not done():
            make()
