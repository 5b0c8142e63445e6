"""Walks a backend's recipe: in a build (run_recipe) and in a plan (plan_recipe),
over the same steps in the same order, so the two cannot drift apart; and a target a farm node ran, replayed
from the shared cache here (farm_outcome).

prepare -> gates on the prepared graph -> deployable -> gates on it; or
prepare -> the backend's search (INT8 tries). Every step goes through the
driver, so each is cached and a rebuild replays the recipe from the cache.
"""

from __future__ import annotations

from typing import Any

from .artifacts import Artifact, ParityReport
from .backends import Recipe, RecipeRunner, TargetOutcome
from .errors import FarmTaskError
from .instruments import Instruments
from .pipeline import Driver, Status, Step, StepRecord


def run_recipe(driver: Driver, recipe: Recipe, base: Artifact) -> TargetOutcome:
    runner = RecipeRunner(driver)
    out = _run(runner, recipe, base)
    out.steps = list(runner.steps)
    return out


def _run(runner: RecipeRunner, recipe: Recipe, base: Artifact) -> TargetOutcome:
    graph = base
    for step in recipe.prepare:
        rec = runner.run(step, graph)
        if rec.status is not Status.OK or rec.output is None:
            return TargetOutcome(Status.SKIPPED, reason=rec.reason or f"{step.id} did not run")
        graph = rec.output
    if recipe.search is not None:
        return recipe.search.run(runner, graph)
    quant = graph.meta.get("quantization")
    gated_on: list[str] = []
    report, failed = _gates(runner, recipe, "prepared", graph, quant, gated_on, None)
    if failed is not None:
        return failed
    model = graph
    if recipe.deployable is not None:
        rec = runner.run(recipe.deployable, graph)
        if rec.status is not Status.OK or rec.output is None:
            return TargetOutcome(
                Status.SKIPPED, graph, report, f"{recipe.deployable.id} did not run: {rec.reason}", quantization=quant
            )
        model = rec.output
    report, failed = _gates(runner, recipe, "deployable", model, quant, gated_on, report)
    if failed is not None:
        return failed
    return TargetOutcome(Status.OK, model, report, quantization=quant, gated_on=gated_on)


def _gates(
    runner: RecipeRunner,
    recipe: Recipe,
    on: str,
    model: Artifact,
    quant: dict[str, Any] | None,
    gated_on: list[str],
    report: ParityReport | None,
) -> tuple[ParityReport | None, TargetOutcome | None]:
    """Run the recipe's gates on `model` ('prepared' or 'deployable'); (the last
    report, the target's outcome when a gate did not pass)."""
    for gate in (g for g in recipe.gates if g.on == on):
        rec = runner.run(gate.step, model)
        if rec.status is Status.SKIPPED and gate.optional:
            continue
        gated_on.append(gate.runtime)
        failed = _gate_outcome(rec, model, quant, gated_on)
        if failed is not None:
            if failed.status is Status.FAIL and gate.label:
                failed.reason = f"{gate.label}: {failed.reason}"
            return report, failed
        report = rec.output  # type: ignore[assignment]
    return report, None


def _gate_outcome(
    rec: StepRecord, model: Artifact, quant: dict[str, Any] | None, gated_on: list[str]
) -> TargetOutcome | None:
    """None when the gate passed; else the target's outcome."""
    if rec.status is Status.SKIPPED:
        return TargetOutcome(Status.SKIPPED, model, reason=rec.reason, quantization=quant, gated_on=list(gated_on))
    report = rec.output if isinstance(rec.output, ParityReport) else None
    if report is not None and report.passed:
        return None
    return TargetOutcome(Status.FAIL, model, report, rec.reason, quantization=quant, gated_on=list(gated_on))


def plan_recipe(driver: Driver, recipe: Recipe, base: Artifact | None) -> list[tuple[Step, str, str | None]]:
    """(step, 'cached' | 'run', key) for every step the build runs first, in its order
    (a search's later tries depend on results: Recipe.later() names them)."""
    rows: list[tuple[Step, str, str | None]] = []

    def visit(step: Step, inp: Artifact | None) -> Artifact | None:
        how, key, out = driver.plan_step(step, inp)
        rows.append((step, how, key))
        return out

    recipe.walk(visit, base)
    return rows


def plan_rows(driver: Driver, recipe: Recipe, base: Artifact | None, backend: Any, target: Any) -> list[dict[str, Any]]:
    """`plan`'s rows of one target: each step's action (run, cached, or skip: the target is
    unavailable here, or the step is at or after its backend's skip point) and why."""
    ok, why = backend.available(target)
    point = backend.skip_point(target) if ok else None
    skipping = not ok
    rows = []
    for step, how, key in plan_recipe(driver, recipe, base):
        skipping = skipping or (point is not None and step.id == point[0])
        reason = why if not ok else (point[1] if skipping and point is not None else "")
        rows.append(
            {"step": step.id, "pass": step.pass_cls.name, "action": "skip" if skipping else how, "key": key}
            | {"target": target.name, "reason": reason}
        )
    return rows


# -- a target a farm node ran: replayed from the shared cache -------------------------


def farm_fingerprints(remote: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: r["fingerprint"] for n, r in remote.items() if r.get("fingerprint") and r["status"] in ("OK", "FAIL")}


def farm_outcome(
    driver: Driver,
    model: str,
    target: str,
    r: dict[str, Any],
    recipe: Any,
    base: Artifact,
    instruments: Instruments,
    rebuild: Any = None,
) -> TargetOutcome:
    """A target a farm node ran: its error or SKIPPED as the node said, else the recipe
    replayed from the shared cache (a step that has to run here means the cache is not
    shared: said, not hidden)."""
    where = f" (farm node {r['host']})" if r.get("host") else ""
    if r["status"] == "ERROR":
        raise FarmTaskError(f"{model}/{target}{where}: {r.get('error')}", int(r.get("exit_code") or 1))
    if r["status"] == "SKIPPED":
        return TargetOutcome(Status.SKIPPED, reason=f"{r.get('reason')}{where}")
    if r.get("kinds"):
        return _farm_kinds(driver, model, target, r["kinds"], rebuild or (lambda _fp: recipe), base, instruments)
    before = set(driver.records)
    out = run_recipe(driver, recipe, base)
    ran = [
        k
        for k, rec in driver.records.items()
        if k not in before and not rec.cached and rec.status is not Status.SKIPPED
    ]
    if ran:
        instruments.warn(
            f"{target}: {len(ran)} step(s) the farm ran were not in the cache here and ran on the driver "
            f"({', '.join(ran)}); is the cache folder shared by every node?"
        )
    return out


def _farm_kinds(
    driver: Driver,
    model: str,
    target: str,
    kinds: list[dict[str, Any]],
    rebuild: Any,
    base: Artifact,
    instruments: Instruments,
) -> TargetOutcome:
    """A target built on several GPU kinds: each kind's recipe replayed from the cache with
    that node's fingerprint; every kind must pass its gate; the engines go out as one
    model (cc_model_filenames), keyed by compute capability."""
    outs: list[tuple[dict[str, Any], TargetOutcome]] = []
    for k in kinds:
        rec = rebuild(k["fingerprint"])  # device-bound steps keyed with this kind's node
        outs.append((k, farm_outcome(driver, model, target, dict(k, kinds=None), rec, base, instruments)))
    bad = [(k, o) for k, o in outs if o.status is not Status.OK]
    if bad:
        k, o = bad[0]
        o.reason = f"on {k['kind']}: {o.reason}"
        return o
    first = outs[0][1]
    first.engines = {}
    for k, o in outs:
        cc = str(k["fingerprint"].get("compute_capability") or "")
        if not cc or o.model is None:
            raise FarmTaskError(f"{model}/{target}@{k['kind']}: the node reported no compute capability")
        if cc in first.engines:
            raise FarmTaskError(
                f"{model}/{target}: GPU kinds with the same compute capability {cc} "
                f"({', '.join(x['kind'] for x in kinds)}): one engine per capability; list one of them"
            )
        first.engines[cc] = o.model
    return first
