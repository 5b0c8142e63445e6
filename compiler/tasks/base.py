"""The task interface: everything that differs between kinds of model (tensor
models through ONNX; language models through their serving engines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ..builder import build, plan
from ..config import validated
from ..errors import ConfigError


class Task:
    """Subclass per task; register by defining `TASK = MyTask()` in a module of
    mscompile.tasks."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    # said to a user who names one of this task's backends under another task
    backends_do: ClassVar[str] = ""
    config_hint: ClassVar[str] = ""  # what its model.yaml holds, said with backends_do

    def config_model(self) -> Any:  # pragma: no cover
        """The pydantic model of model.yaml for this task."""
        raise NotImplementedError

    def parse(self, data: dict[str, Any], where: str) -> Any:
        """Validate a model.yaml mapping: the config, or ConfigError listing every problem
        (the schema's, then the task's cross-field checks)."""
        cfg = validated(self.config_model(), data, where)
        problems = self.problems(cfg, where)
        if problems:
            raise ConfigError(problems[0], problems=problems)
        return cfg

    def problems(self, cfg: Any, where: str) -> list[str]:
        """Cross-field checks pydantic cannot express per field; each line names its key."""
        return []

    def precision(self, target: Any) -> str:
        """The precision label of a target's variant (summary, manifest, MLflow)."""
        return str(getattr(target, "precision", ""))

    def preflight(self, cfg: Any) -> None:
        """Where the build will publish and what it will read, checked before any work (exit 2)."""

    def build(self, cfg: Any, config_path: Path, opts: Any) -> Any:
        """The one build (build.py) walks this task's hooks below."""
        return build(self, cfg, config_path, opts)

    # -- the hooks the one build calls, in its order --------------------------------------

    def prepare(self, cfg: Any, state: Any, devices: dict[str, Any]) -> Any:  # pragma: no cover
        """build.Prepared: the shared steps' input and steps, every target's recipe (keyed
        with `devices` for targets a farm node ran), datasets, the manifest's sources."""
        raise NotImplementedError

    def choose(self, cfg: Any, variants: list[Any]) -> tuple[list[str], str | None]:  # pragma: no cover
        """The targets to deploy among the variants (their gates ran) and, when chosen by
        a figure, the sentence that says why."""
        raise NotImplementedError

    def deployments(self, cfg: Any, chosen: list[Any]) -> list[Any]:  # pragma: no cover
        """publish.Deployment per Triton model the chosen variants become."""
        raise NotImplementedError

    def before_publish(self, cfg: Any, deployments: list[Any], result: Any, instruments: Any, prep: Any = None) -> None:
        """Checks of what will be deployed that must pass before anything is published."""

    def manifest_extras(self, cfg: Any, prep: Any, result: Any) -> dict[str, Any]:
        """What this task's version folders record beyond the common manifest."""
        return {}

    def publish(self, cfg: Any, deployments: list[Any], manifest: dict, result: Any, instruments: Any) -> list:
        raise NotImplementedError  # pragma: no cover

    def plan(self, cfg: Any, opts: Any) -> dict[str, Any]:
        """The one plan (build.py) walks prepare() and the hooks below."""
        return plan(self, cfg, opts)

    def plan_io(self, cfg: Any, base: Any) -> tuple[dict[str, Any], str]:  # pragma: no cover
        """The I/O signature `plan` shows configs for (from the cached shared output `base`
        when there is one), and where it came from."""
        raise NotImplementedError

    def plan_served(self, cfg: Any, target: Any, io_sig: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover
        """What `plan` shows of what the target would publish: `models` (name -> config
        text) and anything else (`lines` are appended to the target's)."""
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
