"""The task interface: everything that differs between kinds of model (tensor
models through ONNX; language models through their serving engines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar


class Task:
    """Subclass per task; register by defining `TASK = MyTask()` in a module of
    mscompile.tasks."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    # said to a user who names one of this task's backends under another task
    backends_do: ClassVar[str] = ""

    def config_model(self) -> Any:  # pragma: no cover
        """The pydantic model of model.yaml for this task."""
        raise NotImplementedError

    def parse(self, data: dict[str, Any], where: str) -> Any:  # pragma: no cover
        """Validate a model.yaml mapping: the config, or ConfigError listing every problem."""
        raise NotImplementedError

    def precision(self, target: Any) -> str:
        """The precision label of a target's variant (summary, manifest, MLflow)."""
        return str(getattr(target, "precision", ""))

    def preflight(self, cfg: Any) -> None:
        """Where the build will publish and what it will read, checked before any work (exit 2)."""

    def build(self, cfg: Any, config_path: Path, opts: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    def plan(self, cfg: Any, opts: Any) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def validate(self, cfg: Any, config_path: Path) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def shared_steps(self, cfg: Any, state: Any, stamp: str, force: bool) -> tuple[Any, Any, Any]:  # pragma: no cover
        """Run the model's shared steps through the cache: (driver, their output, target -> recipe)."""
        raise NotImplementedError

    def serve_check(self, cfg: Any, state: Any, version: int | None, say: Any, server: dict[str, Any]) -> dict:
        raise NotImplementedError  # pragma: no cover

    def deploy(self, cfg: Any, state: Any, version: int | None, say: Any, server: dict[str, Any]) -> dict:
        raise NotImplementedError  # pragma: no cover
