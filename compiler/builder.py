"""Assembles the pipelines from model.yaml and runs a build or a plan.

TorchSource -> load_checkpoint -> export_onnx -> optimize_graph      (shared)
    -> per target: its backend's recipe (prepare, gates, deployable) (mscompile.backends)
    -> profile the variants that passed, where they are served
-> publish the deployed variant(s) (mscompile.publish; not a pass, not cached)
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mscompile.passes.export_onnx import ExportOnnx, ExportPassConfig
from mscompile.passes.load_checkpoint import LoadCheckpoint, LoadConfig
from mscompile.passes.optimize_graph import OptimizeGraph

from . import __version__
from .artifacts import Artifact, Dataset, ParityReport, TorchSource, size_of
from .backends import Recipe, RecipeInputs, TargetOutcome, get
from .cache import Cache
from .config import ModelConfig
from .data import DataStore, describe_dataset, load_calibration, load_validation
from .errors import AccuracyGateError, ConfigError, PassError, TargetSkippedError
from .instruments import Instruments
from .loading import describe_source
from .pipeline import Driver, Pipeline, Status, Step, StepRecord, tracked_libraries
from .report import write_report
from .sections import redact_url
from .state import State
from .targets import farm_fingerprints, farm_outcome, plan_rows, run_recipe


@dataclass
class BuildOptions:
    cache_dir: Path | None = None
    force: bool = False
    quiet: bool = False
    require_all_targets: bool = False
    # a build farm's results for this model: target -> the node's outcome (status, reason,
    # fingerprint, host); those targets are replayed here from the shared cache
    farm: dict[str, dict[str, Any]] | None = None

    @property
    def state(self) -> State:
        return State.resolve(self.cache_dir)


@dataclass
class Variant:
    target: str
    backend: str
    precision: str
    status: Status
    model: Artifact | None = None
    report: ParityReport | None = None
    reason: str = ""
    cached: bool = False
    on_fail: str = "error"
    tries: list[dict[str, Any]] = field(default_factory=list)
    quantization: dict[str, Any] | None = None
    note: str = ""
    profile: dict[str, Any] | None = None
    served_by: str = ""
    gated_on: list[str] = field(default_factory=list)
    engines: dict[str, Artifact] = field(default_factory=dict)  # compute capability -> engine (GPU kinds)

    @property
    def metrics(self) -> dict[str, Any]:
        """The gate's figures against PyTorch on the validation data (empty if no gate ran)."""
        return self.report.meta.get("metrics", {}) if self.report else {}

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.target,
            "backend": self.backend,
            "precision": self.precision,
            "status": self.status.value,
            "reason": self.reason,
            "metrics": self.metrics,
            "failures": self.report.meta.get("failures", []) if self.report else [],
            # the gate at each generated shape (validation.shapes: generate)
            "buckets": self.report.meta.get("buckets", {}) if self.report else {},
            # token-level outputs compared at their real positions (validation.padding_mask)
            "padding": self.report.meta.get("padding", {}) if self.report else {},
            # what would ship (meta "bytes" where the artifact folder holds more, e.g. a checkpoint's
            # calibration state)
            "size_bytes": (self.model.meta.get("bytes") or size_of(self.model.path)) if self.model else None,
            "model_digest": self.model.digest if self.model else None,
            "artifact": str(self.model.path) if self.model else None,
            "cached": self.cached,
            "quantization": self.quantization,
            "note": self.note,
            "profile": self.profile,
            "distribution": self.report.meta.get("distribution") if self.report else None,
            "excluded_nodes": self.tries[-1]["excluded_nodes"] if self.tries else [],
            "tries": self.tries,
            "served_by": self.served_by,
            "gated_on": self.gated_on,
        }


def passes_ran(records: list[StepRecord]) -> tuple[int, int]:
    """(passes that ran, passes taken from the cache): the one definition the
    summary, --json and MLflow use. A SKIPPED step did not run."""
    ran = sum(1 for r in records if not r.cached and r.status is not Status.SKIPPED)
    return ran, sum(1 for r in records if r.cached)


@dataclass
class BuildResult:
    model: str
    variants: list[Variant]
    records: list[StepRecord]
    published: list[Any] = field(default_factory=list)
    seconds: float = 0.0
    manifest: dict[str, Any] = field(default_factory=dict)
    report_path: Path | None = None
    selection: str | None = None
    pipeline: dict[str, Any] | None = None  # the end-to-end gate of the ensemble
    rayserve: str | None = None  # the Ray Serve app's version folder
    shape_coverage: list[dict[str, Any]] | None = None  # declared dynamic sizes vs the sizes gated
    deployed: str | None = None  # the deployed variant (None when nothing was published)

    def variant(self, name: str) -> Variant:
        found = next((v for v in self.variants if v.target == name), None)
        if found is None:
            raise KeyError(f"no variant {name!r}; the variants are {[v.target for v in self.variants]}")
        return found

    def to_json(self) -> dict[str, Any]:
        ran, cached = passes_ran(self.records)
        return {
            "model": self.model,
            "version": self.published[0].version if self.published else None,
            "repository": str(self.published[0].path.parent.parent) if self.published else None,
            "published": [
                {
                    "model": p.model,
                    "version": p.version,
                    "path": str(p.path),
                    "new_version": not p.reused,
                    "pruned": p.pruned,
                }
                for p in self.published
            ],
            "variants": [v.to_json() for v in self.variants],
            "passes_run": ran,
            "passes_cached": cached,
            "seconds": round(self.seconds, 3),
            "report": str(self.report_path) if self.report_path else None,
            "selection": self.selection,
            "deployed": self.deployed,
            "pipeline": self.pipeline,
            "rayserve": self.rayserve,
            "shape_coverage": self.shape_coverage,
        }


# -- pipeline assembly -----------------------------------------------------------


@dataclass
class Plan:
    cfg: ModelConfig
    source: TorchSource
    validation: Dataset
    calibration: Dataset | None
    common: Pipeline
    recipes: dict[str, Recipe]
    datasets: Any  # DataStore: the validation and calibration arrays, read once when a pass first asks
    inputs: RecipeInputs | None = None


def _check_calibration_once(cfg: ModelConfig, calibration: Dataset, state: State) -> Any:
    """Names, dtypes and shapes of the calibration set, checked before any pass runs
    (exit 2). A set already checked against the same inputs is not read again: for
    text it means running the tokenizer, which costs more than a cached build."""
    import hashlib
    import json

    io = json.dumps(cfg.io.model_dump(mode="json"), sort_keys=True)
    key = hashlib.sha256(f"{calibration.digest}\n{io}".encode()).hexdigest()
    marker = state.checked / key
    if marker.exists():
        return None
    feeds = load_calibration(cfg.io, cfg.calibration, calibration)  # type: ignore[arg-type]
    marker.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(marker, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o644))  # never through a planted link
    return feeds


def assemble(cfg: ModelConfig, state: State | None = None, devices: dict[str, Any] | None = None) -> Plan:
    """Describe the inputs (digests), check the calibration set, and build the
    type-checked pipelines and every target's recipe. Raises ConfigError for bad
    input before any work."""
    state = state or State.resolve()
    source = describe_source(cfg.source)
    validation = describe_dataset(cfg.validation, "validation")
    calibration = checked = None
    if cfg.calibration is not None:
        calibration = describe_dataset(cfg.calibration, "calibration")
        checked = _check_calibration_once(cfg, calibration, state)
    io = cfg.io
    common = Pipeline(
        [
            Step(
                "load_checkpoint",
                LoadCheckpoint,
                LoadConfig(
                    source=cfg.source, io=io, batch_size=cfg.validation.batch_size, shapes=cfg.validation.gate_shapes()
                ),
                extras={"validation": validation},
            ),
            Step(
                "export_onnx",
                ExportOnnx,
                ExportPassConfig(export=cfg.export, io=io),
                extras={"validation": validation},
            ),
            Step("optimize_graph", OptimizeGraph, cfg.optimize),
        ],
        input_type=TorchSource,
    )
    inputs = RecipeInputs(
        validation=validation, calibration=calibration, reference=common.steps[0].id, devices=devices or {}
    )
    recipes = {}
    for t in cfg.targets:  # every recipe is built and type-checked before anything runs
        recipe = get(t.backend).recipe(cfg, t, inputs)
        recipe.typecheck(common.output_type)
        recipes[t.name] = recipe

    # each set is read once per build, when a pass first asks for it, and checked
    # against the digest the cache keys were computed from
    store = DataStore()
    store.register(validation, lambda: load_validation(cfg.io, cfg.validation, validation))
    if calibration is not None:
        cal = calibration
        store.register(cal, lambda: (load_calibration(cfg.io, cfg.calibration, cal), None))  # type: ignore[arg-type]
        if checked is not None:  # read just now for the check: not again
            store.put(cal, (checked, None))
    return Plan(cfg, source, validation, calibration, common, recipes, store, inputs)


# -- build -----------------------------------------------------------------------


@dataclass
class Prepared:
    """What a task gives the one build: the input of its shared steps, the shared steps,
    every target's recipe (built and type-checked before anything runs), the datasets
    its passes read, and what its manifest records of its sources."""

    source: Artifact
    shared: Pipeline
    recipes: dict[str, Recipe]
    inputs: RecipeInputs
    datasets: Any = None
    sources: dict[str, Any] = field(default_factory=dict)  # the manifest's "sources" (and more keys)


def build(task: Any, cfg: Any, config_path: Path, opts: BuildOptions) -> BuildResult:
    """The one build, for every task: the task prepares (inputs, shared steps, recipes),
    the shared steps and every target's recipe run through the cached driver (a farm's
    targets are replayed from the shared cache), failed gates stop it, the passing
    variants are profiled, the task chooses and checks what to deploy, and publishes."""
    t0 = time.perf_counter()
    state = opts.state
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = state.build_logs(cfg.name, stamp)
    instruments = Instruments(log_dir / "events.jsonl", quiet=opts.quiet)
    task.preflight(cfg)  # where it will publish, before any work
    remote = opts.farm or {}
    prep = task.prepare(cfg, state, farm_fingerprints(remote))
    # whether this machine can build each target, before any pass runs (the farm's nodes
    # answered for the targets they ran)
    availability = {t.name: get(t.backend).available(t) for t in cfg.targets if t.name not in remote}
    driver = Driver(Cache(state.cache), instruments, force=opts.force, log_dir=log_dir, datasets=prep.datasets)
    instruments.say(
        f"mscompile build {cfg.name} ({task.name}): {len(prep.shared.steps)} shared pass(es), "
        f"{len(cfg.targets)} target(s)"
    )
    common_rec = driver.run(prep.shared, prep.source)
    if common_rec.status is not Status.OK or common_rec.output is None:
        raise ConfigError(f"pass {common_rec.id} was skipped: {common_rec.reason}")
    base_model = common_rec.output

    variants: list[Variant] = []
    crashed: dict[str, PassError] = {}  # targets whose passes raised
    for t in cfg.targets:
        recipe = prep.recipes[t.name]
        if t.name in remote:
            out = farm_outcome(
                driver,
                cfg.name,
                t.name,
                remote[t.name],
                recipe,
                base_model,
                instruments,
                rebuild=lambda fingerprint, t=t: get(t.backend).recipe(
                    cfg, t, replace(prep.inputs, devices={t.name: fingerprint})
                ),
            )
        else:
            if getattr(t, "gpus", None):
                instruments.warn(
                    f"{t.name}.gpus: engines for several GPU kinds are built by a farm (build --ray); "
                    "this build makes one engine, for the GPU here"
                )
            ok, why = availability[t.name]
            try:
                out = run_recipe(driver, recipe, base_model) if ok else TargetOutcome(Status.SKIPPED, reason=why)
            except PassError as exc:  # this target's failure, not the build's: the others still run
                crashed[t.name] = exc
                instruments.warn(f"target {t.name}: {exc}")
                out = TargetOutcome(Status.FAIL, reason=str(exc))
        variants.append(make_variant(driver, t, task.precision(t), out, recipe.served_by))
    result = BuildResult(cfg.name, variants, list(driver.records.values()))
    stop_on_failures(result, opts, instruments, t0, crashed)

    profile_variants(driver, prep.recipes, variants)
    result.records = list(driver.records.values())
    chosen, result.selection = task.choose(cfg, variants)
    if result.selection:
        instruments.say(f"deploy: {result.selection}")
    if not chosen:
        reasons = "; ".join(f"{v.target}: {v.status.value} {v.reason}" for v in variants)
        err2 = AccuracyGateError(f"no variant passed, nothing was published ({reasons})")
        err2.result = result
        raise err2
    by_name = {v.target: v for v in variants}
    deployments = task.deployments(cfg, [by_name[c] for c in chosen])
    task.before_publish(cfg, deployments, result, instruments, prep)  # end-to-end gates, what else serves it
    manifest = build_manifest(cfg, task, config_path, prep, result)
    result.published = task.publish(cfg, deployments, manifest, result, instruments)
    result.deployed = deployments[0].target
    for p in result.published:
        for w in p.warnings:
            instruments.warn(w)
    result.seconds = time.perf_counter() - t0
    result.manifest = manifest

    first = result.published[0]
    page = dict(manifest, model=first.model, version=first.version, deployed_variant=deployments[0].target)
    result.report_path = write_report(page, state.reports / cfg.name / f"{stamp}-v{first.version}.html")
    instruments.event("build_end", **result.to_json())
    return result


def make_variant(driver: Driver, t: Any, precision: str, out: TargetOutcome, served_by: str) -> Variant:
    """A target's outcome as a Variant (cached: every step it ran came from the cache)."""
    cached = bool(out.steps) and all(driver.records[s].cached for s in out.steps if s in driver.records)
    return Variant(
        t.name,
        t.backend,
        precision,
        out.status,
        out.model,
        out.report,
        out.reason,
        cached,
        t.on_fail,
        out.tries,
        out.quantization,
        out.note,
        served_by=served_by,
        gated_on=out.gated_on,
        engines=dict(out.engines),
    )


def stop_on_failures(
    result: BuildResult,
    opts: BuildOptions,
    instruments: Instruments,
    t0: float,
    crashed: dict[str, PassError] | None = None,
) -> None:
    """Say what was skipped or left out; raise when a variant missed its gate (on_fail:
    error), when a target's pass failed (on_fail: error; exit 1, after every other target
    ran) or, with --require-all-targets, when a target was skipped: nothing is published."""
    variants = result.variants
    crashed = crashed or {}
    for v in variants:
        if v.status is Status.SKIPPED:
            instruments.warn(f"target {v.target} SKIPPED: {v.reason}")
    for v in variants:
        if v.status is Status.FAIL and v.on_fail == "skip":
            what = "failed while building" if v.target in crashed else "missed its gate"
            instruments.warn(f"variant {v.target} {what} and is left out (on_fail: skip): {v.reason}")
    broken = [v for v in variants if v.target in crashed and v.on_fail == "error"]
    if broken:
        result.seconds = time.perf_counter() - t0
        exc = crashed[broken[0].target]
        exc.result = result  # type: ignore[attr-defined]
        exc.args = (
            f"target {broken[0].target}: {exc} (the other targets ran: the summary lists them; set "
            f"on_fail: skip on {broken[0].target} to publish without it)",
        )
        raise exc
    failed_hard = [v for v in variants if v.status is Status.FAIL and v.on_fail == "error"]
    if failed_hard:
        result.seconds = time.perf_counter() - t0
        err = AccuracyGateError(
            "accuracy gate failed, nothing was published:\n  "
            + "\n  ".join(f"{v.target}: {v.reason}" for v in failed_hard)
            + "\n(loosen the target's tolerance, or set on_fail: skip to leave the variant out)"
        )
        err.result = result
        raise err
    skipped = [v for v in variants if v.status is Status.SKIPPED]
    if skipped and opts.require_all_targets:
        result.seconds = time.perf_counter() - t0
        err3 = TargetSkippedError(
            "--require-all-targets: nothing was published, these targets were skipped:\n  "
            + "\n  ".join(f"{v.target}: {v.reason}" for v in skipped)
        )
        err3.result = result
        raise err3


def profile_variants(driver: Driver, recipes: dict[str, Recipe], variants: list[Variant]) -> None:
    """Profile every variant that passed its gate, on the runtime that will serve it
    (the recipe's profile step; none where the runtime is not on this machine)."""
    for v in variants:
        step = recipes[v.target].profile
        if v.status is not Status.OK or v.model is None or step is None:
            continue
        rec = driver.run_step(step, v.model)
        if rec.status is Status.OK and rec.output is not None:
            v.profile = {"runtime": rec.output.meta["runtime"], "batches": rec.output.meta["batches"]}


def selection_batch(cfg: ModelConfig, v: Variant) -> dict[str, Any] | None:
    """The profile row at the batch size Triton mostly runs (the range's opt, or the largest profiled below it)."""
    if not v.profile:
        return None
    rows = sorted(v.profile["batches"], key=lambda r: r["batch"])
    target = max(cfg.profile_batches())
    if cfg.has_batch_axis():
        target = min((i.range.opt[0] for i in cfg.inputs if i.range is not None), default=target)
    below = [r for r in rows if r["batch"] <= target]
    return (below or rows)[-1]


def choose(cfg: ModelConfig, passing: list[Variant]) -> list[str]:
    if not passing:
        return []
    if cfg.triton.deploy == "smallest":
        return [min(passing, key=lambda v: size_of(v.model.path) if v.model else float("inf")).target]
    if cfg.triton.deploy == "fastest":
        timed = [v for v in passing if selection_batch(cfg, v) is not None]
        if not timed:
            return [passing[0].target]
        return [fastest(cfg, timed)[0].target]
    return [passing[0].target]


NOISE_FLOOR = 0.05  # the profile's own agreement rule: closer figures are not told apart


def _gap(speed: Any, row: dict[str, Any], best: dict[str, Any]) -> float:
    """How much slower `row` measured than `best`, relative (0: as fast)."""
    a, b = speed.value(row), speed.value(best)
    if a is None or b is None or not a or not b:
        return float("inf")
    return (b - a) / a if speed.higher_is_better else (a - b) / b


def fastest(cfg: ModelConfig, timed: list[Variant]) -> tuple[Variant, Variant, float, float]:
    """(deployed, fastest by its figure, the gap between them, the noise margin): the
    first variant in model.yaml order whose figure is within the measured noise of the
    fastest (the larger of the two rows' noise, at least NOISE_FLOOR). A difference
    inside the noise is a tie, and ties go to the order in model.yaml: the same host
    and inputs choose the same variant."""
    speed = get(timed[0].backend).speed
    best = min(timed, key=lambda v: speed.rank(selection_batch(cfg, v) or {}))
    best_row = selection_batch(cfg, best) or {}
    for v in timed:
        row = selection_batch(cfg, v) or {}
        margin = max(NOISE_FLOOR, float(row.get("noise", 0.0)), float(best_row.get("noise", 0.0)))
        gap = _gap(speed, row, best_row)
        if gap <= margin:
            return v, best, gap, margin
    return best, best, 0.0, NOISE_FLOOR


def selection_note(cfg: ModelConfig, variants: list[Variant], chosen: str) -> str:
    if cfg.triton.deploy == "smallest":
        return ", ".join(
            f"{v.target} {size_of(v.model.path) / 1024:.0f} KB" for v in variants if v.status is Status.OK and v.model
        )
    parts = []
    for v in variants:
        row = selection_batch(cfg, v) if v.status is Status.OK else None
        if row:
            speed = get(v.backend).speed
            settled = "" if row.get("stable", True) else ", unsettled"
            noise = f", noise {row['noise']:.1%}" if "noise" in row else ""
            parts.append(f"{v.target} {speed.fmt(row)} ({speed.key}) at batch {row['batch']}{noise}{settled}")
    timed = [v for v in variants if v.status is Status.OK and selection_batch(cfg, v) is not None]
    note = ", ".join(parts)
    if cfg.triton.deploy == "fastest" and len(timed) > 1:
        picked, best, gap, margin = fastest(cfg, timed)
        if picked is not best:
            note += (
                f"; {best.target} measured {gap:.1%} faster, within the noise margin {margin:.1%}: "
                f"a tie, so the first listed, {picked.target}"
            )
        else:
            speed = get(best.backend).speed
            best_row = selection_batch(cfg, best) or {}
            rows = [selection_batch(cfg, v) or {} for v in timed if v is not best]
            near = min(rows, key=lambda r: _gap(speed, r, best_row))
            m = max(NOISE_FLOOR, float(near.get("noise", 0.0)), float(best_row.get("noise", 0.0)))
            note += f"; ahead by {_gap(speed, near, best_row):.1%}, beyond the noise margin {m:.1%}"
    return note


def build_manifest(cfg: Any, task: Any, config_path: Path, prep: Prepared, result: BuildResult) -> dict[str, Any]:
    return {
        "mscompile": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "task": task.name,
        "config_file": str(config_path),
        "config": recorded_config(cfg),
        **prep.sources,
        **task.manifest_extras(cfg, prep, result),
        "libraries": tracked_libraries([*prep.shared.steps, *(s for r in prep.recipes.values() for s in r.planned())]),
        "passes": [r.to_json() for r in result.records],
        "variants": [v.to_json() for v in result.variants],
        "selection": result.selection,
        "lineage": {r.id: r.key for r in result.records},
    }


# -- plan (dry run) ---------------------------------------------------------------


def plan(task: Any, cfg: Any, opts: BuildOptions) -> dict[str, Any]:
    """The one plan, for every task: which steps would run, come from the cache, or be
    skipped here and why (the same recipe steps a build walks), and per target what it
    would publish. An INT8 search shows its first try; later tries depend on its results."""
    state = opts.state
    prep = task.prepare(cfg, state, {})
    driver = Driver(
        Cache(state.cache),
        Instruments(None, quiet=True),
        force=opts.force,
        log_dir=state.logs / "plan",
        datasets=prep.datasets,
    )
    rows = [
        {"step": step.id, "pass": step.pass_cls.name, "action": how, "key": key, "target": None}
        for step, how, key in driver.plan(prep.shared, prep.source)
    ]
    base: Artifact | None = driver.outputs.get(prep.shared.steps[-1].id)
    for t in cfg.targets:
        rows += plan_rows(driver, prep.recipes[t.name], base, get(t.backend), t)
    io_sig, io_source = task.plan_io(cfg, base)
    targets = {}
    for t in cfg.targets:
        backend = get(t.backend)
        ok, why = backend.available(t)
        recipe = prep.recipes[t.name]
        details = backend.plan_details(cfg, t)
        entry = {
            "backend": t.backend,
            "precision": task.precision(t),
            "available": ok,
            "reason": why,
            "served_by": recipe.served_by,
            "steps": [s.id for s in recipe.planned()],
            "if_needed": recipe.later(),
            "stops_at": backend.stops_at(t) if ok else None,
            "profiles": details.get("profiles", []),
            "lines": list(details.get("lines", [])),
            "io_from": io_source,
        }
        served = task.plan_served(cfg, t, io_sig)
        entry["lines"] += served.pop("lines", [])
        entry.update(served)
        targets[t.name] = entry
    return {"steps": rows, "targets": targets}


def recorded_config(cfg: Any) -> dict[str, Any]:
    """The config as a manifest records it: no credentials (an MLflow URI's user:password@)."""
    out = cfg.model_dump(mode="json")
    if (out.get("mlflow") or {}).get("tracking_uri"):
        out["mlflow"]["tracking_uri"] = redact_url(out["mlflow"]["tracking_uri"])
    return out
