"""The registry of backends (runtimes). Each module of this package that
defines `BACKEND` is one; so is every object a distribution exposes in the
`mscompile.backends` entry-point group. Modules are imported on first use and
import no runtime library themselves: the runtimes are imported inside passes."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata

from .. import device
from ..registry import discover
from .base import (
    Backend,
    Gate,
    Recipe,
    RecipeInputs,
    RecipeRunner,
    Requirement,
    Search,
    ServedModel,
    TargetOutcome,
    parity_step,
    profile_step,
)

__all__ = [
    "Backend",
    "Gate",
    "Recipe",
    "RecipeInputs",
    "RecipeRunner",
    "Requirement",
    "Search",
    "ServedModel",
    "TargetOutcome",
    "all_backends",
    "backends_of",
    "doctor",
    "get",
    "parity_step",
    "profile_step",
]

ENTRY_POINT_GROUP = "mscompile.backends"


@functools.lru_cache(maxsize=1)
def all_backends() -> dict[str, Backend]:
    """name -> backend, built-in modules first (in name order), then plug-ins."""
    found: dict[str, Backend] = discover(__name__, __path__, "BACKEND", Backend)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        backend = ep.load()
        if isinstance(backend, type):
            backend = backend()
        if isinstance(backend, Backend) and backend.name not in found:
            found[backend.name] = backend
    return found


def get(name: str) -> Backend:
    return all_backends()[name]


def backends_of(task: str) -> dict[str, Backend]:
    """The backends that build models of `task` (their targets form its config's union)."""
    return {n: b for n, b in all_backends().items() if b.task == task}


def doctor() -> list[tuple[str, str, str]]:
    """`mscompile doctor`'s rows: the machine's, then each backend's, judged by the rule
    its builds use."""
    rows = device.doctor()
    for b in all_backends().values():
        rows.extend(b.doctor())
    return rows
