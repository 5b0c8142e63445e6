"""Check a variant against the PyTorch reference, and gate it.

Runs the variant on its runtime (ONNX Runtime, or OpenVINO for an IR or for a
graph served through ONNX Runtime's OpenVINO accelerator) over the validation
inputs and compares
each output with the reference outputs recorded by load_checkpoint: max
absolute error, max error relative to the output's magnitude, cosine
similarity per sample (mean and minimum), top-1 agreement and task accuracy
when labels exist. Every key set in the target's `tolerance` is a gate; the
result says which failed, and the driver fails the build on it."""

from __future__ import annotations

import json

import numpy as np
from mscompile.accuracy import (
    check_batch,
    evaluate,
    evaluate_buckets,
    load_reference,
    per_sample,
    run_model,
    shape_buckets,
)
from mscompile.artifacts import Artifact, OnnxModel, OpenVinoModel, ParityReport, TorchModel
from mscompile.pipeline import Pass, PassContext, PassResult, Status
from mscompile.sections import IOSpec, Section, Tolerance


class CheckConfig(Section):
    io: IOSpec
    batch_size: int = 32
    tolerance: Tolerance
    runtime: str = "onnxruntime"  # the runtime the step's session runs (for the report, and the key)
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    shapes: str = "report"  # validation.shapes: "generate" gates each generated shape bucket too
    padding_mask: str | None = None  # the input whose zeros mark padding (validation.padding_mask, resolved)


class CheckAccuracy(Pass[OnnxModel, ParityReport]):
    name = "check_accuracy"
    version = 7
    input_type = OnnxModel
    output_type = ParityReport
    Config = CheckConfig
    libraries = ("onnxruntime", "openvino", "numpy")
    extra_inputs = ("reference", "validation")

    def run(self, inp: Artifact, cfg: CheckConfig, ctx: PassContext) -> PassResult[ParityReport]:
        reference: TorchModel = ctx.extras["reference"]  # type: ignore[assignment]
        feeds, labels = ctx.data("validation")
        ref = load_reference(reference)
        batch = check_batch(cfg.io, cfg.batch_size)
        n = int(next(iter(feeds.values())).shape[0])
        runtime = cfg.runtime
        ctx.note(f"{runtime} on {n} validation samples")
        try:
            infer = ctx.open(inp.model_file, [o.name for o in cfg.io.outputs], providers=cfg.providers)
            outs, seconds = run_model(infer, cfg.io, feeds, batch)
            buckets = {}
            gen = dict(generated(cfg, feeds))
            for name, bfeeds in gen.items():
                ctx.note(f"{runtime} at {name}")
                buckets[name], _ = run_model(infer, cfg.io, bfeeds, batch)
        except Exception as exc:
            if inp.meta.get("precision") in ("bf16", "fp8"):
                # ONNX Runtime's CPU kernels lack these types: the engine's own check decides
                return PassResult(
                    status=Status.SKIPPED,
                    reason=f"{runtime} (CPU) cannot run a {inp.meta['precision']} graph: {str(exc).splitlines()[0][:160]}",
                )
            raise
        return make_report(
            ctx, inp.digest, inp.meta.get("precision"), outs, ref, labels, cfg, n, seconds, runtime, buckets, feeds, gen
        )


class CheckAccuracyOpenVino(CheckAccuracy):
    """The gate of an OpenVINO IR, on the OpenVINO runtime (CPU plugin defaults)."""

    name = "check_accuracy_openvino"
    version = 4
    input_type = OpenVinoModel  # type: ignore[assignment]
    libraries = ("openvino", "numpy")


def generated(cfg: CheckConfig, feeds: dict[str, np.ndarray]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The generated shape buckets this gate runs (none unless validation.shapes: generate)."""
    return shape_buckets(cfg.io, feeds) if cfg.shapes == "generate" else []


def make_report(
    ctx: PassContext,
    model_digest: str,
    precision: str | None,
    outs: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    labels: np.ndarray | None,
    cfg: CheckConfig,
    n: int,
    seconds: float,
    runtime: str = "onnxruntime",
    buckets: dict[str, dict[str, np.ndarray]] | None = None,
    feeds: dict[str, np.ndarray] | None = None,
    bucket_feeds: dict[str, dict[str, np.ndarray]] | None = None,
) -> PassResult[ParityReport]:
    """The gate's verdict and report. `buckets`: the variant's outputs at each generated
    shape; each is judged on its own and every one must pass. `feeds` and `bucket_feeds`:
    the validation inputs as given and at each generated shape, whose padding mask
    (cfg.padding_mask) limits token-level outputs to their real positions."""
    key = cfg.padding_mask
    mask = feeds.get(key) if feeds is not None and key else None
    masks = {name: b[key] for name, b in (bucket_feeds or {}).items()} if key else {}
    agg, per_output, failures = evaluate(outs, ref, labels, cfg.io, cfg.tolerance, mask, key or "")
    per_bucket, bucket_fails = evaluate_buckets(buckets or {}, ref, cfg.io, cfg.tolerance, masks, key or "")
    failures = failures + bucket_fails
    first = cfg.io.outputs[0].name
    distribution = per_sample(outs[first], ref[first], mask=mask)
    padding = {n: m["positions"] for n, m in per_output.items() if "positions" in m}
    report = {
        "model_digest": model_digest,
        "precision": precision,
        "runtime": runtime,
        "metrics": agg,
        "per_output": per_output,
        "buckets": per_bucket,
        "padding": padding,
        "tolerance": cfg.tolerance.model_dump(exclude_none=True),
        "passed": not failures,
        "failures": failures,
        "samples": n,
        "onnxruntime_seconds": seconds,
        "per_sample": distribution,
    }
    path = ctx.workdir / "report.json"
    path.write_text(json.dumps(report, indent=2))
    meta = {
        "passed": not failures,
        "failures": failures,
        "distribution": distribution,
        "metrics": agg,
        "buckets": per_bucket,
        "padding": padding,
        "model_digest": model_digest,
        "runtime": runtime,
        "onnxruntime_seconds": seconds,
    }
    return PassResult(
        path=path,
        meta=meta,
        metrics=agg,
        status=Status.OK if not failures else Status.FAIL,
        reason="; ".join(failures),
    )
