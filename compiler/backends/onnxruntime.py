"""ONNX Runtime: the shared graph served by Triton's onnxruntime backend.

fp32 is the optimized graph itself; fp16 converts it with ONNX Runtime's own
converter; int8 is a small search (quantize, gate, and when the gate fails, rank
tensors by quantization noise, keep the worst in float and try again; `mode:
auto` also tries dynamic quantization and keeps the faster that passes). Each
variant is gated with ONNX Runtime, and with the OpenVINO runtime too when it
is served through ONNX Runtime's OpenVINO accelerator.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mscompile.passes.analyze_quantization import AnalyzeConfig, AnalyzeQuantization
from mscompile.passes.convert_fp16 import ConvertFp16, Fp16Config
from mscompile.passes.equalize_graph import EqualizeConfig, EqualizeGraph
from mscompile.passes.fuse_transformer import FuseTransformer, FusionConfig
from mscompile.passes.quantize_int8 import Int8Config, QuantizeInt8
from pydantic import Field

from ..artifacts import Artifact, OnnxModel, ParityReport
from ..errors import PassError
from ..pipeline import Status, Step
from ..runtimes import onnxruntime_session, openvino_session
from ..sections import RecoveryConfig, Section, TargetBase
from ..tritonrepo.config import base_model_config, fp16_io
from .base import (
    Backend,
    Gate,
    Recipe,
    RecipeInputs,
    RecipeRunner,
    Requirement,
    ServedModel,
    TargetOutcome,
    budget_stop,
    parity_step,
    profile_step,
)

if TYPE_CHECKING:
    from ..config import ModelConfig
    from ..pipeline import StepRecord


class OrtGpuConfig(Section):
    """ONNX Runtime on GPU without an engine build: written into config.pbtxt."""

    accelerator: Literal["cuda", "tensorrt"] = "cuda"
    precision_mode: Literal["FP32", "FP16", "INT8"] = "FP16"
    max_workspace_size_bytes: int = Field(default=1 << 30, ge=1 << 20)
    trt_engine_cache_enable: bool = True
    trt_engine_cache_path: str | None = None


class CpuServingConfig(Section):
    """ONNX Runtime on CPU in Triton: execution accelerator and threads (config.pbtxt)."""

    accelerator: Literal["none", "openvino"] = "none"
    intra_op_threads: int = Field(default=0, ge=0, description="0: ONNX Runtime's default")
    inter_op_threads: int = Field(default=0, ge=0)


INT8_KEYS = ("mode", "calibration_method", "percentile", "num_bins", "per_channel", "recovery")
QUANT_KEYS = ("exclude_nodes", "exclude_op_types")


class OnnxRuntimeTarget(TargetBase):
    backend: Literal["onnxruntime"] = "onnxruntime"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    keep_io_types: bool = Field(default=True, description="fp16: keep graph inputs/outputs fp32")
    graph_fusion: Literal["none", "bert"] = Field(
        default="none",
        description="ONNX Runtime's transformer fusion (Attention, SkipLayerNorm, BiasGelu contrib ops) "
        "before precision conversion",
    )
    mode: Literal["static", "dynamic", "auto"] = Field(
        default="static",
        description="int8: static QDQ (calibrated), dynamic (weights only; for transformer MatMuls), "
        "or auto (static with recovery, then dynamic; keeps the faster that passes)",
    )
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    percentile: float = Field(default=99.999, gt=90, le=100, description="with calibration_method: percentile")
    num_bins: int = Field(default=2048, ge=128, le=65536, description="histogram bins for percentile/entropy")
    per_channel: bool = True
    exclude_nodes: list[str] = Field(default_factory=list, description="int8: node names kept in float")
    exclude_op_types: list[str] = Field(default_factory=list, description="int8: op types kept in float")
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    cpu: CpuServingConfig | None = Field(default=None, description="CPU serving options")
    gpu: OrtGpuConfig | None = Field(
        default=None, description="serve on GPU through ONNX Runtime's CUDA or TensorRT provider"
    )


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    Target = OnnxRuntimeTarget
    description = "ONNX Runtime (Triton onnxruntime backend); fp32, fp16, int8 (static/dynamic QDQ with recovery)"

    def problems(self, cfg: ModelConfig, t: OnnxRuntimeTarget, key: str) -> list[str]:
        out = []
        if t.precision == "int8" and cfg.calibration is None:
            out.append(f"{key}.precision: int8 needs a calibration: section (data the quantizer measures ranges on)")
        if t.precision != "int8":
            for k in INT8_KEYS + QUANT_KEYS:
                if k in t.model_fields_set:
                    out.append(f"{key}.{k}: only applies to precision: int8 (this target is {t.precision})")
        if "keep_io_types" in t.model_fields_set and t.precision != "fp16":
            out.append(f"{key}.keep_io_types: only applies to precision: fp16")
        if t.cpu is not None and t.gpu is not None:
            out.append(f"{key}: set cpu or gpu serving options, not both")
        return out

    def requirements(self, t: OnnxRuntimeTarget) -> list[Requirement]:
        reqs = [Requirement("onnxruntime", "pip install onnxruntime")]
        if t.cpu is not None and t.cpu.accelerator == "openvino":
            # the variant is gated on the runtime behind the accelerator
            reqs.append(Requirement("openvino", "pip install 'mscompile[openvino]'"))
        return reqs

    def session(self, t: OnnxRuntimeTarget) -> Any:
        # served through ONNX Runtime's OpenVINO accelerator: OpenVINO runs the graph
        return openvino_session if t.cpu is not None and t.cpu.accelerator == "openvino" else onnxruntime_session

    def rayserve_runtime(self, t: OnnxRuntimeTarget) -> str | None:
        return "onnxruntime"

    def rayserve_files(self, t: OnnxRuntimeTarget, artifact: Artifact) -> tuple[dict[str, Path], str]:
        src = artifact.model_file
        files = {"model.onnx": src}
        data = src.with_name(src.name + ".data")
        if data.is_file():
            files[data.name] = data
        return files, "model.onnx"

    def recipe(self, cfg: ModelConfig, t: OnnxRuntimeTarget, inputs: RecipeInputs) -> Recipe:
        prepare: list[Step] = []
        if t.graph_fusion != "none":
            prepare.append(Step(f"{t.name}/fuse_transformer", FuseTransformer, FusionConfig(model_type=t.graph_fusion)))
        if t.precision == "fp16":
            prepare.append(Step(f"{t.name}/convert_fp16", ConvertFp16, Fp16Config(keep_io_types=t.keep_io_types)))
        accel = t.cpu.accelerator if t.cpu is not None else "none"
        threads = t.cpu.intra_op_threads if t.cpu else 0
        runtime = "openvino" if accel == "openvino" else "onnxruntime"
        gates = [
            Gate(parity_step(cfg, t, f"{t.name}/check_accuracy", inputs, session=onnxruntime_session), "onnxruntime")
        ]
        if accel == "openvino":
            gates.append(
                Gate(
                    parity_step(
                        cfg,
                        t,
                        f"{t.name}/check_accuracy_openvino",
                        inputs,
                        runtime="openvino",
                        session=openvino_session,
                    ),
                    "openvino",
                )
            )
        # GPU targets are profiled where they run
        profile = (
            None
            if t.gpu is not None
            else profile_step(
                cfg, t, inputs, self.device(t, inputs), runtime=runtime, threads=threads, session=self.session(t)
            )
        )
        served = (
            f"ONNX Runtime ({t.gpu.accelerator} on GPU)"
            if t.gpu is not None
            else (
                "ONNX Runtime with the OpenVINO accelerator (gated on ONNX Runtime and on the OpenVINO runtime "
                "directly, not through ONNX Runtime's OpenVINO execution provider, which the serving backend "
                "must be built with)"
                if accel == "openvino"
                else "ONNX Runtime (CPU)"
            )
        )
        search = Int8Search(cfg, t, inputs) if t.precision == "int8" else None
        return Recipe(
            prepare=prepare,
            gates=[] if search else gates,
            search=search,
            profile=profile,
            served_by=served,
        )

    def serving(
        self,
        cfg: ModelConfig,
        t: OnnxRuntimeTarget,
        name: str,
        io_sig: dict[str, Any],
        artifact: Artifact | None,
    ) -> list[ServedModel]:
        if artifact is None and t.precision == "fp16" and not t.keep_io_types:
            io_sig = fp16_io(io_sig)
        mc = base_model_config(
            cfg,
            name,
            io_sig,
            platform="onnxruntime_onnx",
            backend="onnxruntime",
            filename="model.onnx",
            on_gpu=t.gpu is not None,
        )
        if t.cpu is not None:
            c = t.cpu
            if c.accelerator == "openvino":
                mc.optimization.execution_accelerators.cpu_execution_accelerator.add(name="openvino")
            if c.intra_op_threads:
                mc.parameters["intra_op_thread_count"].string_value = str(c.intra_op_threads)
            if c.inter_op_threads:
                mc.parameters["inter_op_thread_count"].string_value = str(c.inter_op_threads)
        if t.gpu is not None:
            g = t.gpu
            acc = mc.optimization.execution_accelerators.gpu_execution_accelerator.add(name=g.accelerator)
            if g.accelerator == "tensorrt":
                acc.parameters["precision_mode"] = g.precision_mode
                acc.parameters["max_workspace_size_bytes"] = str(g.max_workspace_size_bytes)
                acc.parameters["trt_engine_cache_enable"] = "true" if g.trt_engine_cache_enable else "false"
                if g.trt_engine_cache_path:
                    acc.parameters["trt_engine_cache_path"] = g.trt_engine_cache_path
        files = {}
        if artifact is not None:
            files = {
                f.name: f for f in sorted(artifact.path.iterdir()) if f.is_file() and f.name.startswith("model.onnx")
            }
        return [ServedModel(name, mc, files)]


BACKEND = OnnxRuntimeBackend()


# -- INT8: quantize, check, recover --------------------------------------------------------


class Int8Search:
    """ONNX Runtime INT8 as tries, each a cached quantize + gate. When a static try
    misses its gate, recovery first equalizes the float graph (cross-layer
    equalization: float-exact, checked), then keeps the activations whose own
    quantization noise is worst (lowest SQNR) in float, a few more each try, until
    the gate passes or the budget (quantizable nodes left in float) is spent.
    Every try changes the graph: one that would not is not run."""

    def __init__(self, cfg: ModelConfig, t: OnnxRuntimeTarget, inputs: RecipeInputs) -> None:
        self.cfg, self.t, self.inputs = cfg, t, inputs

    def modes(self) -> list[str]:
        return ["static", "dynamic"] if self.t.mode == "auto" else [self.t.mode]

    def attempts(self, mode: str) -> int:
        return self.t.recovery.max_tries if (self.t.recovery.enabled and mode == "static") else 1

    def quantize_step(
        self, mode: str, excluded: list[str], prefix: str, float_tensors: list[str] = (), bias_correction: bool = False
    ) -> Step:
        t = self.t
        qcfg = Int8Config(
            mode=mode,  # type: ignore[arg-type]
            calibration_method=t.calibration_method,
            percentile=t.percentile,
            num_bins=t.num_bins,
            per_channel=t.per_channel,
            exclude_nodes=tuple(excluded),
            exclude_op_types=tuple(t.exclude_op_types),
            float_tensors=tuple(float_tensors),
            bias_correction=bias_correction,
            io=self.cfg.io,
            batch_size=self.cfg.calibration.batch_size,  # type: ignore[union-attr]
        )
        return Step(f"{prefix}/quantize_int8", QuantizeInt8, qcfg, extras={"calibration": self.inputs.calibration})

    def check_step(self, prefix: str) -> Step:
        return parity_step(self.cfg, self.t, f"{prefix}/check_accuracy", self.inputs, session=onnxruntime_session)

    def equalize_step(self, prefix: str) -> Step:
        return Step(
            f"{prefix}/equalize_graph",
            EqualizeGraph,
            EqualizeConfig(io=self.cfg.io),
            extras={"calibration": self.inputs.calibration},
        )

    def first_tries(self) -> list[list[Step]]:
        """Every mode's first try runs (auto keeps the faster that passes)."""
        out = []
        for mode in self.modes():
            prefix = f"{self.t.name}/{mode}#1"
            out.append([self.quantize_step(mode, list(self.t.exclude_nodes), prefix), self.check_step(prefix)])
        return out

    def later(self) -> list[str]:
        ids = []
        for mode in self.modes():
            n = self.attempts(mode)
            for k in range(1, n + 1):
                prefix = f"{self.t.name}/{mode}#{k}"
                if k > 1:
                    ids += [f"{prefix}/quantize_int8", f"{prefix}/check_accuracy"]
                if k == 1 and n > 1 and self.t.recovery.equalize:
                    ids.append(f"{prefix}/equalize_graph")
                if k < n:
                    ids.append(f"{prefix}/analyze_quantization")
        return ids

    def analyze_step(self, prefix: str, base: Artifact) -> Step:
        return Step(
            f"{prefix}/analyze_quantization",
            AnalyzeQuantization,
            AnalyzeConfig(io=self.cfg.io, batch_size=self.cfg.calibration.batch_size),  # type: ignore[union-attr]
            extras={"float_model": base, "calibration": self.inputs.calibration},
        )

    def run(self, runner: RecipeRunner, base: Artifact) -> TargetOutcome:
        t = self.t
        tries: list[dict[str, Any]] = []
        passing: list[tuple[float, TargetOutcome]] = []
        last: TargetOutcome | None = None
        start = runner.work_s
        untried: list[str] = []

        def over_budget(what: str) -> bool:
            if tries and runner.work_s - start > t.recovery.budget_s:
                untried.append(what)
                return True
            return False

        modes = self.modes()
        for m_i, mode in enumerate(modes):
            if over_budget(f"{mode} INT8"):
                untried += [f"{m} INT8" for m in modes[m_i + 1 :]]
                break
            graph, equalized, corrected = base, False, False
            excluded, floated = list(t.exclude_nodes), []
            attempts = self.attempts(mode)
            seen: set[str] = set()
            k, used, why = 0, 0, ""  # k numbers the steps; used counts the tries run
            while used < attempts:
                if used and over_budget(f"{mode} tries {used + 1}..{attempts}"):
                    break
                k += 1
                prefix = f"{t.name}/{mode}#{k}"
                try:
                    q = runner.run(self.quantize_step(mode, excluded, prefix, floated, corrected), graph)
                except PassError as exc:  # this try failed, not the build: record it, try the next mode
                    last = _failed_try(tries, mode, why, f"quantization failed: {_first_line(exc.cause)}")
                    break
                skip = False
                if q.output.digest in seen and tries:  # type: ignore[union-attr]
                    if why != "bias correction":
                        tries[-1]["stopped"] = "recovery found nothing more that changes the graph"
                        break  # a try that changes nothing is not a try
                    skip = True  # no layer to correct: on to the next remedy, this try not counted
                if not skip:
                    used += 1
                    seen.add(q.output.digest)  # type: ignore[union-attr]
                    try:
                        c = runner.run(self.check_step(prefix), q.output)  # type: ignore[arg-type]
                    except PassError as exc:  # the quantized graph does not run: a failed try
                        last = _failed_try(
                            tries, mode, why, f"ONNX Runtime cannot run the quantized graph: {_first_line(exc.cause)}"
                        )
                        break
                    outcome = _outcome(c, q.output)
                    report = outcome.report
                    tries.append(
                        {
                            "try": len(tries) + 1,
                            "mode": mode,
                            "remedy": why or "none",
                            "equalized": equalized,
                            "bias_corrected": corrected,
                            "excluded_nodes": list(excluded),
                            "float_tensors": list(q.metrics.get("float_tensors", [])),
                            "nodes_in_float": q.metrics.get("nodes_in_float", len(excluded)),
                            "excluded_fraction": round(
                                q.metrics.get("nodes_in_float", len(excluded))
                                / max(1, q.metrics.get("quantizable_nodes", 1)),
                                4,
                            ),
                            "model_digest": q.output.digest if q.output else None,
                            "metrics": report.meta.get("metrics", {}) if report else {},
                            "failures": report.meta.get("failures", []) if report else [],
                            "passed": outcome.status is Status.OK,
                            "onnxruntime_seconds": _seconds(report),
                        }
                    )
                    last = outcome
                    if outcome.status is Status.OK:
                        passing.append((_seconds(report), outcome))
                        break
                if used == attempts:
                    if attempts > 1:
                        tries[-1]["stopped"] = f"recovery budget spent: {attempts} tries (recovery.max_tries)"
                    break
                if not equalized and t.recovery.equalize:
                    # float-exact rescaling first: it keeps everything quantized
                    e = runner.run(self.equalize_step(prefix), graph)
                    equalized = True
                    if e.output is not None and (e.metrics.get("pairs", 0) or e.metrics.get("smoothed", 0)):
                        graph, why = e.output, "equalization"
                        continue
                if not corrected and t.recovery.bias_correction:
                    corrected, why = True, "bias correction"
                    continue
                # keep the noisiest activations in float (their consumers read float)
                a = runner.run(self.analyze_step(prefix, graph), q.output)  # type: ignore[arg-type]
                n_quant = int(q.metrics.get("quantizable_nodes", 0))
                budget = math.floor(t.recovery.max_excluded_fraction * n_quant)
                target_n = min(budget, math.ceil(budget * used / (attempts - 1)))
                ranked = [
                    r for r in (a.output.meta.get("tensors", []) if a.output else []) if r["tensor"] not in floated
                ]
                chosen, stop = _more_tensors(excluded, floated, ranked, target_n)
                if stop:
                    tries[-1]["stopped"] = stop
                    break
                floated, why = chosen, "tensors in float"
        if untried and tries:
            tries[-1]["stopped"] = budget_stop(runner.work_s - start, t.recovery.budget_s, untried)
        if passing:
            passing.sort(key=lambda p: p[0])
            best = passing[0][1]
            best.tries = tries
            q = best.quantization or {}
            kept = next(tr for tr in reversed(tries) if tr["passed"] and tr["mode"] == q.get("mode"))
            best.note = (
                f"{q.get('mode')} INT8 after {len(tries)} tr{'y' if len(tries) == 1 else 'ies'}"
                + (", equalized" if kept["equalized"] else "")
                + (", bias-corrected" if kept["bias_corrected"] else "")
                + f", {len(kept['float_tensors'])} tensor(s) and {len(kept['excluded_nodes'])} node(s) kept in float"
            )
            if len(passing) > 1:
                best.note += (
                    " (the faster of "
                    + ", ".join(
                        f"{o.quantization.get('mode')} {sec * 1000:.0f} ms" for sec, o in passing if o.quantization
                    )
                    + " on the validation set)"
                )
            return best
        assert last is not None
        last.tries = tries
        n = len(tries)
        tried = sorted({x for tr in tries for x in tr["float_tensors"]})
        last.reason = f"{last.reason} (after {n} quantization tr{'y' if n == 1 else 'ies'}"
        if any(tr["equalized"] for tr in tries):
            last.reason += "; equalization and smoothing tried"
        if any(tr["bias_corrected"] for tr in tries):
            last.reason += "; bias correction tried"
        if tried:
            last.reason += f"; kept in float: {', '.join(tried[:8])}{' ...' if len(tried) > 8 else ''}"
        stop = next((tr["stopped"] for tr in reversed(tries) if tr.get("stopped")), None)
        last.reason += f"; {stop})" if stop else ")"
        return last


def _more_tensors(
    excluded: list[str], floated: list[str], ranked: list[dict[str, Any]], target_n: int
) -> tuple[list[str], str | None]:
    """The float activations of the next try: the worst-ranked ones, added until the
    try's share of the budget (quantizable nodes in float) is reached.
    (new list, None), or (old list, why recovery stops)."""
    chosen = list(floated)
    for r in ranked:
        chosen.append(r["tensor"])
        nodes = len(set(excluded) | {n for x in ranked if x["tensor"] in chosen for n in x["consumers"]})
        if nodes >= target_n:
            break
    if chosen == floated:
        return floated, f"no more activations to keep in float ({len(floated)} tried, budget {target_n} node(s))"
    return chosen, None


def _first_line(cause: Any) -> str:
    text = " ".join(str(cause).split("\n")[0].split())
    return text[:300] + (" ..." if len(text) > 300 else "")


def _failed_try(tries: list[dict[str, Any]], mode: str, remedy: str, why: str) -> TargetOutcome:
    """A try whose quantization or gate raised (e.g. ONNX Runtime cannot run the graph):
    recorded with the reason, and the search goes on to its next mode."""
    tries.append(
        {
            "try": len(tries) + 1,
            "mode": mode,
            "remedy": remedy or "none",
            "passed": False,
            "failures": [why],
            "metrics": {},
            "equalized": False,
            "bias_corrected": False,
            "excluded_nodes": [],
            "float_tensors": [],
            "nodes_in_float": 0,
            "excluded_fraction": 0.0,
            "model_digest": None,
            "onnxruntime_seconds": None,
            "stopped": "the try raised: no recovery on a graph that does not run",
        }
    )
    return TargetOutcome(Status.FAIL, reason=f"{mode} INT8: {why}")


def _outcome(rec: StepRecord, model: Artifact | None) -> TargetOutcome:
    if rec.status is Status.SKIPPED:
        return TargetOutcome(Status.SKIPPED, reason=rec.reason)
    report = rec.output if isinstance(rec.output, ParityReport) else None
    ok = report is not None and report.passed
    return TargetOutcome(
        Status.OK if ok else Status.FAIL,
        model,
        report,
        "" if ok else rec.reason,
        quantization=(model.meta.get("quantization") if model is not None else None),
        gated_on=["onnxruntime"],
    )


def _seconds(report: ParityReport | None) -> float:
    return float(report.meta.get("onnxruntime_seconds", math.inf)) if report else math.inf


__all__ = ["BACKEND", "CpuServingConfig", "OnnxModel", "OnnxRuntimeTarget", "OrtGpuConfig"]
