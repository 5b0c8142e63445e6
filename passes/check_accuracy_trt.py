"""Parity of a TensorRT engine against the PyTorch reference, through
Polygraphy's TrtRunner, under the same gates as every other variant.
Needs TensorRT and a GPU: SKIPPED with the reason where either is missing."""

from __future__ import annotations

import time

import numpy as np
from mscompile.accuracy import check_batch, load_reference
from mscompile.artifacts import ParityReport, TorchModel, TrtEngine
from mscompile.data import batches
from mscompile.device import tensorrt_status
from mscompile.passes.check_accuracy import CheckConfig, make_report
from mscompile.pipeline import Pass, PassContext, PassResult, Status


class CheckAccuracyTrt(Pass[TrtEngine, ParityReport]):
    name = "check_accuracy_trt"
    version = 3
    input_type = TrtEngine
    output_type = ParityReport
    Config = CheckConfig
    libraries = ("tensorrt", "polygraphy", "numpy")
    extra_inputs = ("reference", "validation")
    device_dependent = True

    def run(self, inp: TrtEngine, cfg: CheckConfig, ctx: PassContext) -> PassResult[ParityReport]:
        ok, reason = tensorrt_status()
        if not ok:
            return PassResult(status=Status.SKIPPED, reason=reason)
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        reference: TorchModel = ctx.extras["reference"]  # type: ignore[assignment]
        feeds, labels = ctx.data("validation")
        ref = load_reference(reference)
        profile = inp.meta["profiles"][0]["shapes"]
        batch = check_batch(cfg.io, cfg.batch_size)
        if cfg.io.has_batch_axis():
            batch = min(batch, *(profile[i.name]["max"][0] for i in cfg.io.inputs))
        names = [o.name for o in cfg.io.outputs]
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        ctx.note(f"TensorRT on {next(iter(feeds.values())).shape[0]} validation samples")
        t0 = time.perf_counter()
        with TrtRunner(EngineFromBytes(BytesFromPath(str(inp.plan_file))), optimization_profile=0) as runner:
            for feed in batches(feeds, batch) if cfg.io.has_batch_axis() else [feeds]:
                out = runner.infer(feed)
                for n in names:
                    parts[n].append(np.asarray(out[n]))
        seconds = time.perf_counter() - t0
        outs = {n: np.concatenate(v, axis=0) if cfg.io.has_batch_axis() else v[0] for n, v in parts.items()}
        n = int(next(iter(feeds.values())).shape[0])
        return make_report(
            ctx, inp.digest, inp.meta.get("precision"), outs, ref, labels, cfg, n, seconds, runtime="tensorrt"
        )
