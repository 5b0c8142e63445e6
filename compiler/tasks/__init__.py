"""The registry of tasks. A task is what kind of model a model.yaml describes
(`task:`; default `tensor`): its config root, how it is parsed and checked, its
build, plan and validate, its serve-check and deploy. Each module of this
package that defines `TASK` is one. The CLI, the farm and the config loader ask
the task of a config; none of them tests a task's name."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

from ..backends import all_backends, backends_of
from ..config import read_model_yaml
from ..errors import ConfigError
from ..registry import discover
from .base import Task

__all__ = [
    "DEFAULT_TASK",
    "Task",
    "all_tasks",
    "build",
    "get_task",
    "json_schema",
    "load_config",
    "parse_config",
    "plan",
    "task_of",
]

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


def build(cfg: Any, config_path: Any, opts: Any) -> Any:
    """Build a parsed config with its task."""
    return task_of(cfg).build(cfg, config_path, opts)


def plan(cfg: Any, opts: Any) -> dict[str, Any]:
    """Plan a parsed config with its task."""
    return task_of(cfg).plan(cfg, opts)


# -- model.yaml: read, then parsed by its task ---------------------------------------


def load_config(path: str | Path) -> Any:
    """A model.yaml, read safely and parsed by its task; ConfigError lists every problem."""
    return parse_config(read_model_yaml(path), where=str(Path(path)))


def parse_config(data: Any, where: str = "model.yaml") -> Any:
    """Validate a parsed YAML document with its task's parser; raise ConfigError listing
    every problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of keys (name, source, ...)")
    src = data.get("source")
    if "task" not in data and isinstance(src, dict) and src.get("task") == "text-generation" and src.get("huggingface"):
        # a language model's folder: the text-generation task, its checkpoint the folder
        rest = {k: v for k, v in src.items() if k not in ("huggingface", "task")}
        data = dict(data, task="text-generation", source={"checkpoint": src["huggingface"], **rest})
    name = data.get("task", DEFAULT_TASK)
    task = all_tasks().get(name) if isinstance(name, str) else None
    if task is None:
        raise ConfigError(f"{where}: task: {name!r} is not a task here; use one of {', '.join(all_tasks())}")
    wrong = _task_of_backend(data, where, task)
    if wrong:
        raise ConfigError(wrong[0], problems=wrong)
    return task.parse(data, where)


def _task_of_backend(data: dict[str, Any], where: str, task: Any) -> list[str]:
    """Targets whose backend serves another task than the config's: one line each."""
    out = []
    for i, t in enumerate(data.get("targets") or []):
        b = all_backends().get(t.get("backend", "")) if isinstance(t, dict) else None
        if b is None or b.task == task.name:
            continue
        other = get_task(b.task)
        if other.backends_do:
            hint = f" ({other.config_hint})" if other.config_hint else ""
            out.append(f"{where}: targets[{i}].backend: {b.name!r} {other.backends_do}; add task: {other.name}{hint}")
        else:
            out.append(
                f"{where}: targets[{i}].backend: {b.name!r} does not serve task: {task.name}; "
                f"use one of {', '.join(sorted(backends_of(task.name)))}"
            )
    return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema of model.yaml, every task's: one shape per task (oneOf, told apart by
    `task`), its `targets` items one shape per backend."""
    models = [(t.config_model(), "validation") for t in all_tasks().values()]
    refs, schema = models_json_schema(models, ref_template="#/$defs/{model}")
    schema["oneOf"] = [refs[m] for m in models]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mscompile model.yaml"
    schema["description"] = "; ".join(f"task {n}: {t.description}" for n, t in all_tasks().items())
    return schema
