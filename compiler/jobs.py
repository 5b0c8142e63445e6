"""What `mscompile build` does around the one build: one model.yaml or several (one
after another, or as a farm on Ray), each recorded in MLflow, the outcome of every
model kept (a failing model does not hide the others), and the exit code of the lot.
The CLI renders what this returns; nothing here prints but through `say`/`warn`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .builder import BuildOptions
from .errors import ConfigError, MscompileError
from .farm import Farm, FarmReport, merge, run_shared
from .tasks import load_config, task_of
from .tracking import TrackingError, TrackingSettings, flush, make_record, preflight, resolve, scrub_uri, submit

# the exit code of several models: the first of these any model ended with, else 0
EXIT_PRIORITY = (2, 1, 3)


@dataclass(frozen=True)
class Tracking:
    """How builds are recorded in MLflow (None of these: the defaults of model.yaml and
    the environment); `optional`: build anyway when the store is unreachable; `sync`:
    log before returning (default when $CI is set)."""

    uri: str | None = None
    experiment: str | None = None
    optional: bool = False
    sync: bool = False

    def synchronous(self) -> bool:
        return self.sync or bool(os.environ.get("CI"))


@dataclass
class Outcome:
    """One model's build: its result (also when a gate failed), where MLflow recorded it,
    and the error it ended with."""

    cfg: Any
    path: Path
    result: Any = None
    tracked: dict[str, Any] | None = None
    error: MscompileError | None = None

    @property
    def exit_code(self) -> int:
        return self.error.exit_code if self.error is not None else 0

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            out = error_summary(self.error, self.result)
        else:
            out = self.result.to_json() if self.result is not None else {}
        out.setdefault("model", self.cfg.name)
        if self.tracked is not None:
            out["mlflow"] = self.tracked
        return out


def error_summary(exc: MscompileError, result: Any) -> dict[str, Any]:
    """A build that ended in an error, as --json says it: the summary so far (the variants
    whose gates ran), the error, its problems and the exit code."""
    out = result.to_json() if result is not None else {}
    out.update(error=str(exc), exit_code=exc.exit_code)
    if len(getattr(exc, "problems", None) or []) > 1:
        out["problems"] = exc.problems
    return out


@dataclass
class ManyOutcome:
    outcomes: list[Outcome] = field(default_factory=list)
    farm: FarmReport | None = None

    @property
    def exit_code(self) -> int:
        codes = [o.exit_code for o in self.outcomes]
        return next((c for c in EXIT_PRIORITY if c in codes), 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "models": [o.to_json() for o in self.outcomes],
            "farm": self.farm.to_json() if self.farm else None,
            "exit_code": self.exit_code,
        }


def tracking_settings(cfg: Any, state: Path, tracking: Tracking, warn: Callable[[str], None]) -> Any:
    """MLflow settings for the model, its store checked reachable before any work; None
    when unreachable and optional (said through `warn`)."""
    settings = resolve(cfg, state, tracking.uri, tracking.experiment)
    try:
        preflight(settings)
    except TrackingError as exc:
        if not tracking.optional:
            raise
        warn(f"{exc}; building without tracking (--mlflow-optional)")
        return None
    return settings


def record(
    settings: TrackingSettings,
    outcome: Outcome,
    started: float,
    state: Path,
    sync: bool,
    warn: Callable[[str], None],
) -> dict[str, Any] | None:
    """Record a build in MLflow; a tracking failure never hides the build's own outcome."""
    try:
        rec = make_record(settings, outcome.cfg, outcome.path, outcome.result, outcome.error, started)
        if sync:
            flush(state, warn=warn)
        out = submit(rec, state, sync)
        return {"tracking_uri": settings.shown, "experiment": settings.experiment, **out}
    except Exception as exc:  # the build is done; say what went wrong with its record (no credentials)
        warn(scrub_uri(f"could not record the build in MLflow: {type(exc).__name__}: {exc}", settings.uri))
        return None


def build_one(
    cfg: Any, path: Path, opts: BuildOptions, settings: Any, sync: bool, warn: Callable[[str], None]
) -> Outcome:
    """Build one parsed config with its task and record it (also when it fails, then the
    error is raised with its result). `settings`: tracking_settings' answer, or None."""
    started = time.time()
    out = Outcome(cfg, path)
    try:
        out.result = task_of(cfg).build(cfg, path, opts)
    except MscompileError as exc:
        out.result, out.error = exc.result, exc
        if settings is not None:
            record(settings, out, started, opts.state.root, sync, warn)
        raise
    if settings is not None:
        out.tracked = record(settings, out, started, opts.state.root, sync, warn)
    return out


def build_many(
    paths: list[Path],
    base: BuildOptions,
    ray_address: str | None,
    tracking: Tracking | None,
    say: Callable[[str], None],
    warn: Callable[[str], None],
    done: Callable[[Outcome], None] = lambda o: None,
) -> ManyOutcome:
    """Several models, or a farm: every config is checked first (exit 2 before any work);
    with a Ray address the shared steps run here and the targets on the cluster; then each
    model is built (replayed from the cache) and published here, `done` told of each. The
    exit code is the first of 2, 1, 3 any model ended with."""
    loaded = [(load_config(p), p) for p in paths]
    names = [cfg.name for cfg, _ in loaded]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(
            f"name: {', '.join(dup)} is the name of more than one of the given configs; names must differ"
        )
    settings: dict[str, Any] = {}
    if tracking is not None:  # every store is reachable before any work, as for one model
        settings = {cfg.name: tracking_settings(cfg, base.state.root, tracking, warn) for cfg, _ in loaded}
    for cfg, _ in loaded:  # where each will publish and what it reads: before any work
        task_of(cfg).preflight(cfg)
    farm = Farm(ray_address, base.state.cache, say) if ray_address is not None else None
    if farm is not None:
        farm.check_address()
    results: dict = {}
    many = ManyOutcome()
    if farm is not None:
        for cfg, path in loaded:
            run_shared(cfg, path, base, say)
        results = farm.run(loaded, base.force)
        many.farm = farm.report
    for cfg, path in loaded:
        remote = {target: merge(rs) for (p, target), rs in results.items() if p == path} if many.farm else None
        opts = BuildOptions(
            cache_dir=base.cache_dir,
            force=base.force and many.farm is None,  # the farm forced its tasks; here they replay
            quiet=base.quiet,
            require_all_targets=base.require_all_targets,
            farm=remote,
        )
        sync = tracking is not None and tracking.synchronous()
        try:
            out = build_one(cfg, path, opts, settings.get(cfg.name), sync, warn)
        except MscompileError as exc:
            out = Outcome(cfg, path, exc.result, None, exc)
        many.outcomes.append(out)
        done(out)
    return many
