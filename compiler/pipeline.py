"""Passes, pipelines and the driver that runs them through the cache.

A Pass turns one input artifact (plus named side inputs) into one output
artifact, writing only into the work folder it is given. The driver computes
the pass's cache key, returns the stored result when the key is known, and
otherwise runs the pass and moves its work folder into the cache atomically.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from . import __version__
from .artifacts import Artifact
from .cache import Cache, cache_key
from .data import DataStore
from .errors import MscompileError, PassError, PipelineTypeError
from .faults import point

I = TypeVar("I", bound=Artifact)  # noqa: E741
O = TypeVar("O", bound=Artifact)  # noqa: E741


class Status(str, Enum):
    OK = "OK"
    FAIL = "FAIL"  # ran, and its gate failed (the artifact is still stored)
    SKIPPED = "SKIPPED"  # could not run here (e.g. TensorRT absent); never cached

    def __str__(self) -> str:  # the word itself in messages and tables, on every Python
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass
class PassResult(Generic[O]):
    """What a pass made: the path of its output (inside ctx.workdir) and the
    output's metadata. The driver, not the pass, creates the artifact and its
    digest from what is on disk. No path: the pass was SKIPPED (say why)."""

    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    status: Status = Status.OK
    reason: str = ""


@dataclass
class PassContext:
    workdir: Path  # an empty folder the pass owns; its output lives inside it and nothing else does
    scratch: Path  # an empty folder for temporary files, deleted after the pass
    extras: Mapping[str, Artifact]
    log_path: Path
    progress: Any = None  # callable(str) -> None; passes report progress through it, never print
    state_dir: Path | None = None  # mscompile's state folder, for shared accelerators (timing caches)
    datasets: Any = None  # DataStore: the arrays of the Dataset side inputs, loaded once per digest
    session: Any = None  # the step's session function (Step.session): (path, outputs, threads, providers)

    def open(self, path: Path | str, outputs: list[str] | None, threads: int = 0, providers: tuple = ()) -> Any:
        """A session on the runtime the step's backend named."""
        if self.session is None:
            raise PipelineTypeError("this step runs a model, but its backend gave it no session (Step.session)")
        return self.session(str(path), outputs, threads, providers)

    def note(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def data(self, name: str) -> Any:
        """The arrays of side input `name` (a Dataset): (feeds, labels)."""
        art = self.extras.get(name)
        if art is None or self.datasets is None:
            raise PipelineTypeError(f"side input {name!r} is not a dataset this pass was given")
        return self.datasets.get(art)


class Pass(Generic[I, O]):
    """One transformation. Subclasses set the class attributes and `run`."""

    name: ClassVar[str]
    version: ClassVar[int] = 1  # bump to invalidate cached results
    input_type: ClassVar[type[Artifact]]
    output_type: ClassVar[type[Artifact]]
    Config: ClassVar[type[BaseModel]]
    libraries: ClassVar[tuple[str, ...]] = ()  # distributions whose versions enter the key
    extra_inputs: ClassVar[tuple[str, ...]] = ()  # names of side inputs (in ctx.extras)
    device_dependent: ClassVar[bool] = False

    def run(self, inp: I, cfg: Any, ctx: PassContext) -> PassResult[O]:  # pragma: no cover
        raise NotImplementedError


CORE_LIBRARIES = ("mscompile", "numpy", "pydantic", "protobuf", "tritonclient")


def tracked_libraries(steps: Sequence[Step]) -> dict[str, str]:
    """Versions of what a build's results depend on: the core's libraries and every
    library the passes of its steps declare (a backend's passes name its runtime)."""
    names = set(CORE_LIBRARIES)
    for step in steps:
        names.update(step.pass_cls.libraries)
    return library_versions(sorted(names))


def library_versions(names: Sequence[str]) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = "absent"
    return out


@dataclass(frozen=True)
class Step:
    """A pass with its configuration, and where its side inputs come from:
    `extras` maps a side-input name to a step id or to a fixed artifact."""

    id: str
    pass_cls: type[Pass]
    config: BaseModel
    extras: Mapping[str, str | Artifact] = field(default_factory=dict)
    # what a device-dependent pass's result depends on (the backend's fingerprint)
    device: Mapping[str, Any] | None = None
    # how the runtime of a gate or profile opens a model: the session function the backend
    # hands its steps (runtimes.py); the runtime's name is in the config, hence in the key
    session: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.pass_cls.device_dependent and self.device is None:
            raise PipelineTypeError(
                f"step {self.id}: pass {self.pass_cls.name} depends on the device; give the backend's fingerprint"
            )
        missing = set(self.pass_cls.extra_inputs) - set(self.extras)
        unknown = set(self.extras) - set(self.pass_cls.extra_inputs)
        if missing or unknown:
            raise PipelineTypeError(
                f"step {self.id}: pass {self.pass_cls.name} takes side inputs "
                f"{sorted(self.pass_cls.extra_inputs)}, got {sorted(self.extras)}"
            )
        if not isinstance(self.config, self.pass_cls.Config):
            raise PipelineTypeError(
                f"step {self.id}: config is {type(self.config).__name__}, "
                f"pass {self.pass_cls.name} expects {self.pass_cls.Config.__name__}"
            )


class Pipeline:
    """An ordered list of steps whose types are checked before anything runs."""

    def __init__(self, steps: Sequence[Step], input_type: type[Artifact] | None = None) -> None:
        if not steps:
            raise PipelineTypeError("a pipeline needs at least one step")
        self.steps = list(steps)
        if input_type is not None:
            self._check(input_type, self.steps[0], "the pipeline input")
        for prev, nxt in zip(self.steps, self.steps[1:], strict=False):
            self._check(prev.pass_cls.output_type, nxt, f"step {prev.id} ({prev.pass_cls.name})")

    @staticmethod
    def _check(given: type[Artifact], step: Step, source: str) -> None:
        want = step.pass_cls.input_type
        if not issubclass(given, want):
            raise PipelineTypeError(
                f"{source} gives {given.__name__}, but step {step.id} ({step.pass_cls.name}) takes {want.__name__}"
            )

    @property
    def input_type(self) -> type[Artifact]:
        return self.steps[0].pass_cls.input_type

    @property
    def output_type(self) -> type[Artifact]:
        return self.steps[-1].pass_cls.output_type


@dataclass
class StepRecord:
    """What happened to one step in one build; goes into the manifest and summary."""

    id: str
    pass_name: str
    key: str | None
    status: Status
    cached: bool
    seconds: float
    metrics: dict[str, Any]
    reason: str = ""
    output: Artifact | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.id,
            "pass": self.pass_name,
            "key": self.key,
            "status": self.status.value,
            "cached": self.cached,
            "seconds": round(self.seconds, 4),
            "metrics": self.metrics,
            "reason": self.reason,
            "output_digest": self.output.digest if self.output else None,
        }


class Driver:
    """Runs pipelines through the cache and records every step."""

    def __init__(
        self,
        cache: Cache,
        instruments: Any,
        *,
        force: bool = False,
        log_dir: Path,
        datasets: Any = None,
    ) -> None:
        self.cache = cache
        self.instruments = instruments
        self.force = force
        self.log_dir = log_dir
        self.datasets = datasets if datasets is not None else DataStore()
        self.records: dict[str, StepRecord] = {}
        self.outputs: dict[str, Artifact] = {}

    # -- keys -------------------------------------------------------------------
    def key_material(self, step: Step, inp: Artifact, extras: Mapping[str, Artifact]) -> dict[str, Any]:
        p = step.pass_cls
        material = {
            "pass": p.name,
            "pass_version": p.version,
            "config": step.config.model_dump(mode="json"),
            "input": {"kind": inp.kind, "digest": inp.digest},
            "extras": {k: {"kind": a.kind, "digest": a.digest} for k, a in sorted(extras.items())},
            "libraries": library_versions(p.libraries),
        }
        if p.device_dependent:
            material["device"] = dict(step.device or {})
        return material

    def _resolve_extras(self, step: Step) -> dict[str, Artifact]:
        out = {}
        for name, src in step.extras.items():
            if isinstance(src, Artifact):
                out[name] = src
            else:
                if src not in self.outputs:
                    raise PipelineTypeError(f"step {step.id}: side input {name} needs step {src}, which has no output")
                out[name] = self.outputs[src]
        return out

    # -- running ----------------------------------------------------------------
    def run(self, pipeline: Pipeline, inp: Artifact) -> StepRecord:
        """Run every step in order; stops at the first step that is not OK."""
        current = inp
        record: StepRecord | None = None
        for step in pipeline.steps:
            record = self.run_step(step, current)
            if record.status is not Status.OK or record.output is None:
                return record
            current = record.output
        assert record is not None
        return record

    def run_step(self, step: Step, inp: Artifact) -> StepRecord:
        extras = self._resolve_extras(step)
        material = self.key_material(step, inp, extras)
        key = cache_key(material)
        self.instruments.step_start(step)
        start = time.perf_counter()
        entry = None if self.force else self.cache.get(key, warn=self.instruments.warn)
        if entry is not None:
            m = entry.manifest
            record = StepRecord(
                id=step.id,
                pass_name=step.pass_cls.name,
                key=key,
                status=Status(m.get("status", "OK")),
                cached=True,
                seconds=time.perf_counter() - start,
                metrics=m.get("metrics", {}),
                reason=m.get("reason", ""),
                output=entry.artifact,
            )
            return self._finish(step, record)

        entry_dir = self.cache.new_workdir(step.pass_cls.name)
        workdir = entry_dir / "output"
        workdir.mkdir()
        scratch = entry_dir / "scratch"
        scratch.mkdir()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ctx = PassContext(
            workdir=workdir,
            scratch=scratch,
            extras=extras,
            log_path=self.log_dir / f"{step.id.replace('/', '.')}.log",
            progress=lambda msg: self.instruments.step_progress(step, msg),
            state_dir=self.cache.root.parent,
            datasets=self.datasets,
            session=step.session,
        )
        prior = [r.id for r in self.records.values()]
        point("step:start")
        try:
            point(f"pass:{step.id}")
            result = step.pass_cls().run(inp, step.config, ctx)
        except MscompileError:
            _rmtree(entry_dir)
            raise
        except (KeyboardInterrupt, SystemExit):
            _rmtree(entry_dir)
            raise
        except Exception as exc:  # a pass failed on valid input: report which, keep the cause
            _rmtree(entry_dir)
            raise PassError(step.id, prior, f"{type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - start
        point("step:ran")
        _rmtree(scratch)
        if result.status is Status.SKIPPED or result.path is None:
            _rmtree(entry_dir)
            record = StepRecord(
                step.id,
                step.pass_cls.name,
                key,
                Status.SKIPPED,
                False,
                seconds,
                result.metrics,
                result.reason,
            )
            return self._finish(step, record)
        out_path = Path(result.path).resolve()
        if out_path != workdir.resolve() and workdir.resolve() not in out_path.parents:
            _rmtree(entry_dir)
            raise PipelineTypeError(f"pass {step.pass_cls.name} returned {out_path}, outside its work folder")
        manifest = {
            "mscompile": __version__,
            "step": step.id,
            "pass": step.pass_cls.name,
            "pass_version": step.pass_cls.version,
            "key_material": material,
            "status": result.status.value,
            "reason": result.reason,
            "metrics": result.metrics,
            "seconds": seconds,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # the driver, not the pass, makes the artifact and computes the digest of what the pass wrote
        out = step.pass_cls.output_type.of(out_path, result.meta)
        entry = self.cache.put(key, entry_dir, out, manifest, replace=self.force)
        record = StepRecord(
            step.id,
            step.pass_cls.name,
            key,
            result.status,
            False,
            seconds,
            result.metrics,
            result.reason,
            entry.artifact,
        )
        return self._finish(step, record)

    def _finish(self, step: Step, record: StepRecord) -> StepRecord:
        self.records[step.id] = record
        if record.output is not None:
            self.outputs[step.id] = record.output
        self.instruments.step_end(step, record)
        return record

    # -- planning ---------------------------------------------------------------
    def plan_step(self, step: Step, inp: Artifact | None) -> tuple[str, str | None, Artifact | None]:
        """('cached' | 'run', key, the cached output) without running anything. The key
        of a step whose input is not built yet is unknown (None)."""
        if inp is None:
            return "run", None, None
        try:
            extras = self._resolve_extras(step)
        except PipelineTypeError:
            return "run", None, None
        key = cache_key(self.key_material(step, inp, extras))
        manifest = None if self.force else self.cache.peek(key)
        if manifest is None:
            return "run", key, None
        art = Artifact.from_json(manifest["artifact"], base=self.cache.entry_dir(key))
        self.outputs[step.id] = art
        return "cached", key, art

    def plan(self, pipeline: Pipeline, inp: Artifact | None) -> list[tuple[Step, str, str | None]]:
        """(step, 'cached' | 'run', key) for each step of a chain, without running anything."""
        out: list[tuple[Step, str, str | None]] = []
        current = inp
        for step in pipeline.steps:
            how, key, current = self.plan_step(step, current)
            out.append((step, how, key))
        return out


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)
