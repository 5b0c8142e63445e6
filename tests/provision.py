"""One provisioning at a time of a shared test cache folder (a Triton tree, a
perf_analyzer, unpacked wheels): parallel test workers, or two suites on one
machine, share $MSCOMPILE_TEST_CACHE. The second waits for the first's lock
(mscompile's own file lock), then finds the folder complete."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mscompile.state import file_lock


def once(root: Path, done: Callable[[], bool], make: Callable[[], object]) -> None:
    """make() unless done(), checked again under the lock."""
    if done():
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(root.parent / f".{root.name}.lock"):
        if not done():
            make()
