"""The registry of tasks. A task is what kind of model a model.yaml describes
(`task:`; default `tensor`): its config root, how it is parsed and checked, its
build, plan and validate, its serve-check and deploy. Each module of this
package that defines `TASK` is one. The CLI, the farm and the config loader ask
the task of a config; none of them tests a task's name."""

from __future__ import annotations

import functools
from typing import Any

from ..registry import discover
from .base import Task

__all__ = ["DEFAULT_TASK", "Task", "all_tasks", "get_task", "task_of"]

DEFAULT_TASK = "tensor"


@functools.lru_cache(maxsize=1)
def all_tasks() -> dict[str, Task]:
    return discover(__name__, __path__, "TASK", Task)


def get_task(name: str) -> Task:
    return all_tasks()[name]


def task_of(cfg: Any) -> Task:
    """The task of a parsed config (or of a model.yaml mapping)."""
    name = cfg.get("task", DEFAULT_TASK) if isinstance(cfg, dict) else getattr(cfg, "task", DEFAULT_TASK)
    return get_task(name)
