"""OpenVINO: the shared graph converted to OpenVINO IR (model.xml + model.bin),
served by Triton's openvino backend.

fp32 and fp16 (weights compressed to fp16) are the converted IR; int8 is NNCF
post-training quantization on the calibration set, and when its gate fails,
NNCF's accuracy-aware quantization (which keeps the layers that cost the most
accuracy in float) with the drop it may cost derived from the target's
tolerance. Every variant is gated, and profiled, on the OpenVINO runtime
itself, with the CPU plugin's defaults (on CPUs with bf16 units OpenVINO may
compute an fp32 IR in bf16: the gate measures what Triton's OpenVINO backend
serves).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mscompile.artifacts import ParityReport
from mscompile.passes.check_accuracy import CheckAccuracyOpenVino
from mscompile.passes.convert_openvino import ConvertOpenVino, ConvertOvConfig
from mscompile.passes.profile import ProfileOpenVino
from mscompile.passes.quantize_nncf import NncfConfig, QuantizeNncf
from pydantic import Field

from ..artifacts import Artifact
from ..pipeline import Status, Step
from ..runtimes import openvino_session
from ..sections import Section, TargetBase, is_dynamic, recovery_budget
from ..tritonrepo.config import base_model_config
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


class OpenVinoServing(Section):
    """Parameters of Triton's OpenVINO backend (config.pbtxt `parameters`) and how
    the config batches.

    The backend's rules (its src/openvino.cc): with `max_batch_size` > 0 it
    reshapes the model to a static batch of exactly `max_batch_size` and refuses
    every execution of another total batch, unless `ENABLE_BATCH_PADDING` is YES,
    which zero-fills the rest (every execution then computes a full batch). With
    `max_batch_size: 0` the model keeps its dynamic shapes and each request runs
    as sent, which is what the gate measured."""

    batching: Literal["none", "pad"] = Field(
        default="none",
        description="none: max_batch_size 0, each request runs at its own shape (as gated); "
        "pad: max_batch_size from triton:, requests batched by Triton and zero-padded to it "
        "(ENABLE_BATCH_PADDING; every execution computes a full batch; needs static non-batch dims)",
    )

    performance_hint: Literal["LATENCY", "THROUGHPUT"] = Field(
        default="LATENCY", description="LATENCY for few concurrent clients, THROUGHPUT for many"
    )
    num_streams: int | Literal["AUTO", "NUMA"] | None = Field(
        default=None, description="executor streams; default: chosen by the performance hint"
    )
    inference_num_threads: int = Field(default=0, ge=0, description="0: OpenVINO's default (all cores)")


class OpenVinoRecovery(Section):
    """int8: when plain NNCF quantization misses the gate, try NNCF's mixed preset
    (asymmetric activations; skipped when the target already asks for it), then NNCF's
    accuracy-aware quantization on that preset, which returns layers to float until the
    metric drop fits."""

    enabled: bool = True
    max_drop: float | None = Field(
        default=None,
        gt=0,
        description="metric drop NNCF may accept (accuracy as a fraction, or cosine); "
        "default: from tolerance.accuracy_drop, else tolerance.cosine",
    )
    budget_s: float = recovery_budget()


INT8_KEYS = ("preset", "model_type", "fast_bias_correction", "exclude_nodes", "exclude_op_types", "recovery")


class OpenVinoTarget(TargetBase):
    backend: Literal["openvino"]
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    preset: Literal["performance", "mixed"] = Field(
        default="performance", description="int8: NNCF preset (mixed: asymmetric activations)"
    )
    model_type: Literal["auto", "default", "transformer"] = Field(
        default="auto",
        description="int8: NNCF's model type; transformer keeps its transformer-specific rules (attention "
        "scores, layer norms); auto: transformer where the IR has attention (ScaledDotProductAttention, or a "
        "Softmax over a product of two activations)",
    )
    fast_bias_correction: bool = True
    exclude_nodes: list[str] = Field(default_factory=list, description="int8: node names kept in float")
    exclude_op_types: list[str] = Field(default_factory=list, description="int8: op types kept in float")
    recovery: OpenVinoRecovery = Field(default_factory=OpenVinoRecovery)
    openvino: OpenVinoServing = Field(default_factory=OpenVinoServing)


class OpenVinoBackend(Backend):
    name = "openvino"
    Target = OpenVinoTarget
    description = "OpenVINO IR (Triton openvino backend, CPU); fp32, fp16, int8 (NNCF)"

    def problems(self, cfg: ModelConfig, t: OpenVinoTarget, key: str) -> list[str]:
        out = []
        if t.precision == "int8" and cfg.calibration is None:
            out.append(f"{key}.precision: int8 needs a calibration: section (data NNCF measures ranges on)")
        if t.precision != "int8":
            for k in INT8_KEYS:
                if k in t.model_fields_set:
                    out.append(f"{key}.{k}: only applies to precision: int8 (this target is {t.precision})")
        if cfg.pipeline is not None and t.openvino.batching == "none" and cfg.max_batch_size() > 0:
            out.append(
                f"{key}.openvino.batching: none serves without batching (max_batch_size 0), which a Triton "
                "ensemble that batches cannot contain; set openvino.batching: pad (needs static non-batch dims) "
                "or serve the pipeline with another backend's target"
            )
        if t.openvino.batching == "pad":
            dynamic = [f"{i.name}[{a}]" for i in cfg.inputs for a, d in enumerate(i.shape) if a > 0 and is_dynamic(d)]
            if not cfg.has_batch_axis() or cfg.max_batch_size() == 0:
                out.append(f"{key}.openvino.batching: pad needs a batch dimension and triton.max_batch_size > 0")
            elif dynamic:
                out.append(
                    f"{key}.openvino.batching: pad needs every non-batch dimension static, but {', '.join(dynamic)} "
                    "vary (Triton's OpenVINO backend pads into the compiled shape); use batching: none"
                )
        gpu_groups = [i for i, g in enumerate(cfg.triton.instance_group) if g.kind == "KIND_GPU"]
        if gpu_groups:
            out.append(
                f"{key.split(': ')[0]}: triton.instance_group[{gpu_groups[0]}].kind: KIND_GPU cannot serve "
                f"openvino target {t.name!r}; Triton's OpenVINO backend runs on CPU (use KIND_CPU)"
            )
        return out

    def requirements(self, t: OpenVinoTarget) -> list[Requirement]:
        reqs = [Requirement("openvino", "pip install 'mscompile[openvino]'")]
        if t.precision == "int8":
            reqs.append(Requirement("nncf", "pip install 'mscompile[openvino]'"))
        return reqs

    def session(self, t: OpenVinoTarget) -> Any:
        return openvino_session

    def rayserve_runtime(self, t: OpenVinoTarget) -> str | None:
        return "openvino"

    def rayserve_files(self, t: OpenVinoTarget, artifact: Artifact) -> tuple[dict[str, Path], str]:
        files = {f.name: f for f in sorted(artifact.path.iterdir()) if f.suffix in (".xml", ".bin")}
        return files, artifact.model_file.name

    def recipe(self, cfg: ModelConfig, t: OpenVinoTarget, inputs: RecipeInputs) -> Recipe:
        convert = Step(
            f"{t.name}/convert_openvino",
            ConvertOpenVino,
            ConvertOvConfig(compress_to_fp16=t.precision == "fp16"),
        )
        threads = t.openvino.inference_num_threads
        profile = profile_step(
            cfg,
            t,
            inputs,
            self.device(t, inputs),
            runtime="openvino",
            threads=threads,
            pass_cls=ProfileOpenVino,
            session=openvino_session,
        )
        if t.precision == "int8":
            return Recipe(prepare=[convert], search=NncfSearch(cfg, t, inputs), profile=profile, served_by="OpenVINO")
        gate = Gate(
            parity_step(
                cfg,
                t,
                f"{t.name}/check_accuracy_openvino",
                inputs,
                pass_cls=CheckAccuracyOpenVino,
                runtime="openvino",
                session=openvino_session,
            ),
            "openvino",
        )
        return Recipe(prepare=[convert], gates=[gate], profile=profile, served_by="OpenVINO")

    def serving(
        self,
        cfg: ModelConfig,
        t: OpenVinoTarget,
        name: str,
        io_sig: dict[str, Any],
        artifact: Artifact | None,
    ) -> list[ServedModel]:
        o = t.openvino
        pad = o.batching == "pad"
        mc = base_model_config(
            cfg,
            name,
            io_sig,
            backend="openvino",
            filename="model.xml",
            on_gpu=False,
            max_batch_size=None if pad else 0,
        )
        if pad:
            mc.parameters["ENABLE_BATCH_PADDING"].string_value = "YES"
            db = cfg.triton.dynamic_batching
            if mc.HasField("dynamic_batching") and not (db and db.preferred_batch_size):
                # only a full batch wastes nothing: let the batcher aim for it
                del mc.dynamic_batching.preferred_batch_size[:]
                mc.dynamic_batching.preferred_batch_size.append(mc.max_batch_size)
        mc.parameters["PERFORMANCE_HINT"].string_value = o.performance_hint
        if o.num_streams is not None:
            mc.parameters["NUM_STREAMS"].string_value = str(o.num_streams)
        if o.inference_num_threads:
            mc.parameters["INFERENCE_NUM_THREADS"].string_value = str(o.inference_num_threads)
        files = {}
        if artifact is not None:
            files = {n: artifact.path / n for n in ("model.xml", "model.bin")}
        return [ServedModel(name, mc, files)]


BACKEND = OpenVinoBackend()


def _mode(accuracy_control: bool) -> str:
    return "nncf accuracy control" if accuracy_control else "nncf"


class NncfSearch:
    """Try 1: NNCF post-training quantization with the target's preset. Recovery: the
    mixed preset (asymmetric activations) where try 1 was symmetric, then NNCF's
    accuracy-aware quantization. Each try is a cached quantize + gate."""

    def __init__(self, cfg: ModelConfig, t: OpenVinoTarget, inputs: RecipeInputs) -> None:
        self.cfg, self.t, self.inputs = cfg, t, inputs

    def modes(self) -> list[tuple[str, bool]]:
        """(preset, accuracy control) of each try, in order."""
        t = self.t
        out = [(t.preset, False)]
        if t.recovery.enabled:
            if t.preset != "mixed":
                out.append(("mixed", False))
            out.append(("mixed", True))
        return out

    def quantize_step(self, k: int, preset: str, accuracy_control: bool) -> Step:
        t, cfg = self.t, self.cfg
        # what accuracy control watches is in the key of its own try only: changing it reruns nothing else
        metric, max_drop = self.metric() if accuracy_control else ("cosine", 0.01)
        qc = NncfConfig(
            io=cfg.io,
            batch_size=cfg.calibration.batch_size,  # type: ignore[union-attr]
            validation_batch_size=cfg.validation.batch_size,
            preset=preset,
            model_type=t.model_type,
            fast_bias_correction=t.fast_bias_correction,
            exclude_nodes=tuple(t.exclude_nodes),
            exclude_op_types=tuple(t.exclude_op_types),
            accuracy_control=accuracy_control,
            metric=metric,
            max_drop=max_drop,
            padding_mask=cfg.padding_mask() if accuracy_control else None,
        )
        extras = {
            "calibration": self.inputs.calibration,
            "reference": self.inputs.reference,
            "validation": self.inputs.validation,
        }
        return Step(f"{t.name}/int8#{k}/quantize_nncf", QuantizeNncf, qc, extras=extras)

    def metric(self) -> tuple[str, float]:
        """The metric NNCF's accuracy control watches, and the drop it may accept."""
        tol, r = self.t.tolerance, self.t.recovery
        if self.cfg.validation.labels and tol.accuracy_drop is not None:
            return "accuracy", r.max_drop or max(tol.accuracy_drop / 100.0, 1e-4)
        cos = tol.cosine if tol.cosine is not None else tol.cosine_min
        return "cosine", r.max_drop or (max(1.0 - cos, 1e-5) if cos is not None else 0.01)

    def check_step(self, k: int) -> Step:
        return parity_step(
            self.cfg,
            self.t,
            f"{self.t.name}/int8#{k}/check_accuracy_openvino",
            self.inputs,
            pass_cls=CheckAccuracyOpenVino,
            runtime="openvino",
            session=openvino_session,
        )

    def first_tries(self) -> list[list[Step]]:
        preset, ac = self.modes()[0]
        return [[self.quantize_step(1, preset, ac), self.check_step(1)]]

    def later(self) -> list[str]:
        ids = []
        for k, (preset, ac) in enumerate(self.modes()[1:], start=2):
            ids += [self.quantize_step(k, preset, ac).id, self.check_step(k).id]
        return ids

    def run(self, runner: RecipeRunner, graph: Artifact) -> TargetOutcome:
        tries: list[dict[str, Any]] = []
        out: TargetOutcome | None = None
        modes = self.modes()
        start, budget = runner.work_s, self.t.recovery.budget_s
        for k, (preset, accuracy_control) in enumerate(modes, start=1):
            mode = _mode(accuracy_control)
            if tries and runner.work_s - start > budget:
                untried = [f"try {j} ({_mode(a)}, preset {p})" for j, (p, a) in enumerate(modes[k - 1 :], start=k)]
                tries[-1]["stopped"] = budget_stop(runner.work_s - start, budget, untried)
                assert out is not None
                out.reason += f"; {tries[-1]['stopped']}"
                break
            q = runner.run(self.quantize_step(k, preset, accuracy_control), graph)
            quant = q.output.meta.get("quantization") if q.output is not None else None
            report, reason = None, q.reason
            if q.status is Status.OK:
                # a quantizer that gave nothing to gate (accuracy control returning every layer to
                # float) is a FAIL verdict of its own, cached like any step: not run again
                c = runner.run(self.check_step(k), q.output)  # type: ignore[arg-type]
                report = c.output if isinstance(c.output, ParityReport) else None
                reason = c.reason
            ok = report is not None and report.passed
            tries.append(
                {
                    "try": k,
                    "mode": mode,
                    "preset": preset,
                    "excluded_nodes": (quant or {}).get("float_nodes", []),
                    "metrics": report.meta.get("metrics", {}) if report else {},
                    "failures": report.meta.get("failures", []) if report else [],
                    "passed": ok,
                    **({} if report is not None else {"reason": q.reason}),
                }
            )
            out = TargetOutcome(
                Status.OK if ok else Status.FAIL,
                q.output,
                report,
                "" if ok else reason,
                quantization=quant,
                gated_on=["openvino"],
            )
            if ok:
                break
        assert out is not None
        out.tries = tries
        kept = len(tries[-1]["excluded_nodes"])
        if out.status is Status.OK:
            out.note = (
                f"NNCF INT8 after {len(tries)} tr{'y' if len(tries) == 1 else 'ies'}, {kept} layer(s) kept in float"
            )
        else:
            out.reason = f"{out.reason} (after {len(tries)} NNCF tr{'y' if len(tries) == 1 else 'ies'})"
            gated = [x for x in tries if x["failures"]]
            if len(tries) > 1 and gated and not tries[-1]["failures"]:
                # the last try produced nothing to gate: the last gated try's figure says how close INT8 came
                g = gated[-1]
                out.reason += f"; try {g['try']} ({g['mode']}, preset {g['preset']}): {g['failures'][0]}"
        return out
