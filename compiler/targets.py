"""How each target is built from the shared optimized graph.

A target is a chain of passes ending in a parity check. Most targets are one
fixed chain; an ONNX Runtime INT8 target is a small search: quantize, check,
and when the gate fails, rank the layers by quantization noise, keep the worst
in float and try again (`recovery`), and with `mode: auto` do the same with
dynamic quantization and keep the faster of the variants that pass. Every try
is a cached step, so a rebuild replays the search from the cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .artifacts import Artifact, OnnxModel, ParityReport
from .config import ModelConfig, TargetConfig
from .pipeline import Driver, Pipeline, Status, Step, StepRecord


@dataclass
class TargetOutcome:
    status: str  # OK | FAIL | SKIPPED
    model: Artifact | None = None  # what would be deployed (OnnxModel, or an engine)
    report: ParityReport | None = None
    reason: str = ""
    tries: list[dict[str, Any]] = field(default_factory=list)
    quantization: dict[str, Any] | None = None
    steps: list[str] = field(default_factory=list)
    note: str = ""  # how the variant was arrived at, for the summary


def check_step(cfg: ModelConfig, t: TargetConfig, step_id: str, validation: Artifact) -> Step:
    from mscompile.passes.check_accuracy import CheckAccuracy, CheckConfig

    return Step(
        step_id,
        CheckAccuracy,
        CheckConfig(io=cfg.io, validation=cfg.validation, tolerance=t.tolerance),
        extras={"reference": "load_checkpoint", "validation": validation},
    )


def prep_steps(cfg: ModelConfig, t: TargetConfig, calibration: Artifact | None) -> list[Step]:
    """Fixed passes between the shared graph and the precision-specific work."""
    from mscompile.passes.autocast import AutoCast, AutoCastConfig
    from mscompile.passes.convert_fp16 import ConvertFp16, Fp16Config
    from mscompile.passes.fuse_transformer import FuseTransformer, FusionConfig
    from mscompile.passes.quantize_modelopt import ModelOptConfig, QuantizeModelOpt

    steps: list[Step] = []
    if t.graph_fusion != "none":
        steps.append(Step(f"{t.name}/fuse_transformer", FuseTransformer, FusionConfig(model_type=t.graph_fusion)))
    if t.precision == "fp16" and t.backend == "onnxruntime":
        steps.append(Step(f"{t.name}/convert_fp16", ConvertFp16, Fp16Config(keep_io_types=t.keep_io_types)))
    if t.precision in ("fp16", "bf16") and t.backend == "tensorrt":
        # strongly typed network: the graph carries the precision
        steps.append(
            Step(
                f"{t.name}/autocast",
                AutoCast,
                AutoCastConfig(low_precision_type=t.precision, keep_io_types=t.keep_io_types),
            )
        )
    if t.backend == "tensorrt" and t.precision in ("int8", "fp8"):
        assert cfg.calibration is not None and calibration is not None
        method = "entropy" if t.calibration_method == "entropy" else "max"
        steps.append(
            Step(
                f"{t.name}/quantize_modelopt",
                QuantizeModelOpt,
                ModelOptConfig(
                    precision=t.precision,
                    calibration_method=method,
                    high_precision_dtype=t.high_precision_dtype,
                    exclude_nodes=tuple(t.exclude_nodes),
                    exclude_op_types=tuple(t.exclude_op_types),
                    io=cfg.io,
                    calibration=cfg.calibration,
                ),
                extras={"calibration": calibration},
            )
        )
    return steps


def int8_step(
    cfg: ModelConfig, t: TargetConfig, mode: str, excluded: list[str], prefix: str, calibration: Artifact | None
) -> Step:
    """One ONNX Runtime quantization try of target `t` (used by the search and by `plan`)."""
    from mscompile.passes.quantize_int8 import Int8Config, QuantizeInt8

    qcfg = Int8Config(
        mode=mode,  # type: ignore[arg-type]
        calibration_method=t.calibration_method,
        percentile=t.percentile,
        num_bins=t.num_bins,
        per_channel=t.per_channel,
        exclude_nodes=tuple(excluded),
        exclude_op_types=tuple(t.exclude_op_types),
        io=cfg.io,
        calibration=cfg.calibration,  # type: ignore[arg-type]
    )
    return Step(f"{prefix}/quantize_int8", QuantizeInt8, qcfg, extras={"calibration": calibration})


def static_chain(
    cfg: ModelConfig, t: TargetConfig, validation: Artifact, calibration: Artifact | None
) -> Pipeline | None:
    """The whole chain when it is fixed (ONNX Runtime fp32/fp16); type-checked."""
    if t.backend != "onnxruntime" or t.precision == "int8":
        return None
    steps = prep_steps(cfg, t, calibration) + [check_step(cfg, t, f"{t.name}/check_accuracy", validation)]
    return Pipeline(steps, input_type=OnnxModel)


def trt_chains(
    cfg: ModelConfig, t: TargetConfig, validation: Artifact, calibration: Artifact | None
) -> tuple[list[Step], Step, Pipeline]:
    """(prep steps, ONNX Runtime check of the graph TensorRT will read, engine chain)."""
    from mscompile.passes.build_tensorrt import BuildTensorRT, TrtBuildConfig
    from mscompile.passes.check_accuracy import CheckConfig
    from mscompile.passes.check_accuracy_trt import CheckAccuracyTrt

    from .config import trt_profiles

    prep = prep_steps(cfg, t, calibration)
    onnx_check = check_step(cfg, t, f"{t.name}/check_accuracy_onnx", validation)
    build = Step(
        f"{t.name}/build_tensorrt",
        BuildTensorRT,
        TrtBuildConfig(precision=t.precision, profiles=trt_profiles(cfg, t), settings=t.trt(), io=cfg.io),
    )
    trt_check = Step(
        f"{t.name}/check_accuracy_trt",
        CheckAccuracyTrt,
        CheckConfig(io=cfg.io, validation=cfg.validation, tolerance=t.tolerance),
        extras={"reference": "load_checkpoint", "validation": validation},
    )
    Pipeline([*prep, onnx_check], input_type=OnnxModel)
    return prep, onnx_check, Pipeline([*prep, build, trt_check], input_type=OnnxModel)


def typecheck(cfg: ModelConfig, t: TargetConfig, validation: Artifact, calibration: Artifact | None) -> None:
    """Build every chain of a target once, so type errors surface before any pass runs."""
    if t.backend == "tensorrt":
        trt_chains(cfg, t, validation, calibration)
    elif t.precision != "int8":
        static_chain(cfg, t, validation, calibration)


def _outcome_from(rec: StepRecord, model: Artifact | None, steps: list[str]) -> TargetOutcome:
    if rec.status is Status.SKIPPED:
        return TargetOutcome("SKIPPED", reason=rec.reason, steps=steps)
    report = rec.output if isinstance(rec.output, ParityReport) else None
    ok = report is not None and report.passed
    return TargetOutcome(
        "OK" if ok else "FAIL",
        model,
        report,
        "" if ok else rec.reason,
        steps=steps,
        quantization=(model.meta.get("quantization") if model is not None else None),
    )


def run_target(
    driver: Driver,
    cfg: ModelConfig,
    t: TargetConfig,
    base: OnnxModel,
    validation: Artifact,
    calibration: Artifact | None,
) -> TargetOutcome:
    if t.backend == "tensorrt":
        return run_tensorrt(driver, cfg, t, base, validation, calibration)
    chain = static_chain(cfg, t, validation, calibration)
    if chain is not None:
        rec = driver.run(chain, base)
        ids = [s.id for s in chain.steps if s.id in driver.records]
        model_id = chain.steps[-2].id if len(chain.steps) > 1 else None
        model = driver.outputs.get(model_id) if model_id else base
        return _outcome_from(rec, model, ids)
    return run_int8_search(driver, cfg, t, base, validation, calibration)


def run_tensorrt(
    driver: Driver,
    cfg: ModelConfig,
    t: TargetConfig,
    base: OnnxModel,
    validation: Artifact,
    calibration: Artifact | None,
) -> TargetOutcome:
    """Prepare the typed graph, gate it on ONNX Runtime (catches a bad quantization
    without a GPU), build the engine, gate the engine itself."""
    prep, onnx_check, chain = trt_chains(cfg, t, validation, calibration)
    ids: list[str] = []
    graph: Artifact = base
    if prep:
        rec = driver.run(Pipeline(prep, input_type=OnnxModel), base)
        ids += [s.id for s in prep]
        if rec.status is not Status.OK or rec.output is None:
            return TargetOutcome("SKIPPED", reason=rec.reason, steps=ids)
        graph = rec.output
    quant = graph.meta.get("quantization")
    pre = driver.run_step(onnx_check, graph)
    ids.append(onnx_check.id)
    if pre.status is Status.FAIL:
        out = _outcome_from(pre, None, ids)
        out.reason = f"the ONNX graph for TensorRT misses the gate on ONNX Runtime: {pre.reason}"
        out.quantization = quant
        return out
    build_step, trt_check = chain.steps[-2], chain.steps[-1]
    built = driver.run_step(build_step, graph)
    ids.append(build_step.id)
    if built.status is Status.SKIPPED or built.output is None:
        report = pre.output if isinstance(pre.output, ParityReport) else None
        return TargetOutcome(
            "SKIPPED", graph, report, f"engine not built: {built.reason}", steps=ids, quantization=quant
        )
    rec = driver.run_step(trt_check, built.output)
    ids.append(trt_check.id)
    out = _outcome_from(rec, built.output, ids)
    out.quantization = quant
    return out


# -- ONNX Runtime INT8: quantize, check, recover -----------------------------------


def run_int8_search(
    driver: Driver,
    cfg: ModelConfig,
    t: TargetConfig,
    base: OnnxModel,
    validation: Artifact,
    calibration: Artifact | None,
) -> TargetOutcome:
    from mscompile.passes.analyze_quantization import AnalyzeConfig, AnalyzeQuantization

    assert cfg.calibration is not None and calibration is not None
    steps_run: list[str] = []
    prep = prep_steps(cfg, t, calibration)
    if prep:
        rec = driver.run(Pipeline(prep, input_type=OnnxModel), base)
        steps_run += [s.id for s in prep]
        if rec.status is not Status.OK or rec.output is None:
            return TargetOutcome("SKIPPED", reason=rec.reason, steps=steps_run)
        base = rec.output  # type: ignore[assignment]

    modes = ["static", "dynamic"] if t.mode == "auto" else [t.mode]
    tries: list[dict[str, Any]] = []
    passing: list[tuple[float, TargetOutcome]] = []
    last: TargetOutcome | None = None
    for mode in modes:
        excluded = list(t.exclude_nodes)
        attempts = t.recovery.max_tries if (t.recovery.enabled and mode == "static") else 1
        for k in range(1, attempts + 1):
            prefix = f"{t.name}/{mode}#{k}"
            q = driver.run_step(int8_step(cfg, t, mode, excluded, prefix, calibration), base)
            c = driver.run_step(check_step(cfg, t, f"{prefix}/check_accuracy", validation), q.output)  # type: ignore[arg-type]
            steps_run += [f"{prefix}/quantize_int8", f"{prefix}/check_accuracy"]
            outcome = _outcome_from(c, q.output, list(steps_run))
            report = outcome.report
            tries.append(
                {
                    "try": len(tries) + 1,
                    "mode": mode,
                    "excluded_nodes": list(excluded),
                    "excluded_fraction": round(len(excluded) / max(1, q.metrics.get("quantizable_nodes", 1)), 4),
                    "metrics": report.meta.get("metrics", {}) if report else {},
                    "failures": report.meta.get("failures", []) if report else [],
                    "passed": outcome.status == "OK",
                    "onnxruntime_seconds": _seconds(report),
                }
            )
            last = outcome
            if outcome.status == "OK":
                passing.append((_seconds(report), outcome))
                break
            if k == attempts:
                break
            # rank the layers by quantization noise and keep more of the worst in float
            a = driver.run_step(
                Step(
                    f"{prefix}/analyze_quantization",
                    AnalyzeQuantization,
                    AnalyzeConfig(io=cfg.io, calibration=cfg.calibration),
                    extras={"float_model": base, "calibration": calibration},
                ),
                q.output,
            )  # type: ignore[arg-type]
            steps_run.append(f"{prefix}/analyze_quantization")
            n_quant = int(q.metrics.get("quantizable_nodes", 0))
            budget = math.floor(t.recovery.max_excluded_fraction * n_quant)
            target_n = min(budget, len(t.exclude_nodes) + math.ceil(budget * k / (attempts - 1)))
            add: list[str] = []
            for entry in a.output.meta.get("ranking", []) if a.output else []:
                if len(excluded) + len(add) >= target_n:
                    break
                # the layer, and the layers feeding it (their quantized outputs are its inputs)
                for name in [entry["node"], *entry["feeders"]]:
                    if name not in excluded and name not in add:
                        add.append(name)
            if not add:
                tries[-1]["stopped"] = f"recovery budget spent ({len(excluded)} of {n_quant} nodes in float)"
                break
            excluded += add
    if passing:
        passing.sort(key=lambda p: p[0])
        best = passing[0][1]
        best.tries, best.steps = tries, steps_run
        q = best.quantization or {}
        kept = next(tr for tr in reversed(tries) if tr["passed"] and tr["mode"] == q.get("mode"))
        best.reason = ""
        best.note = (
            f"{q.get('mode')} INT8 after {len(tries)} tr{'y' if len(tries) == 1 else 'ies'}, "
            f"{len(kept['excluded_nodes'])} node(s) kept in float"
        )
        if len(passing) > 1:
            best.note += (
                " (the faster of "
                + ", ".join(f"{o.quantization.get('mode')} {sec * 1000:.0f} ms" for sec, o in passing if o.quantization)
                + " on the validation set)"
            )
        return best
    assert last is not None
    last.tries, last.steps = tries, steps_run
    n = len(tries)
    last.reason = f"{last.reason} (after {n} quantization tr{'y' if n == 1 else 'ies'})"
    return last


def _seconds(report: ParityReport | None) -> float:
    return float(report.meta.get("onnxruntime_seconds", math.inf)) if report else math.inf
