"""Parity of a TensorRT engine against the PyTorch reference, through
Polygraphy's TrtRunner, under the same gates as every other variant.
Needs TensorRT and a GPU: SKIPPED with the reason where either is missing."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from mscompile.accuracy import check_batch, load_reference
from mscompile.artifacts import ParityReport, TorchModel, TrtEngine
from mscompile.data import batches
from mscompile.device import tensorrt_status
from mscompile.passes.check_accuracy import CheckConfig, generated, make_report
from mscompile.pipeline import Pass, PassContext, PassResult, Status


class CheckAccuracyTrt(Pass[TrtEngine, ParityReport]):
    name = "check_accuracy_trt"
    version = 5
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
        ctx.note(f"TensorRT on {next(iter(feeds.values())).shape[0]} validation samples")

        def run_all(runner: Any, fs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
            for feed in batches(fs, batch) if cfg.io.has_batch_axis() else [fs]:
                out = runner.infer(feed)
                for n in names:
                    parts[n].append(np.asarray(out[n]))
            return {n: np.concatenate(v, axis=0) if cfg.io.has_batch_axis() else v[0] for n, v in parts.items()}

        t0 = time.perf_counter()
        with TrtRunner(EngineFromBytes(BytesFromPath(str(inp.plan_file))), optimization_profile=0) as runner:
            outs = run_all(runner, feeds)
            seconds = time.perf_counter() - t0
            gen = dict(generated(cfg, feeds))
            buckets = {name: run_all(runner, bfeeds) for name, bfeeds in gen.items()}
        n = int(next(iter(feeds.values())).shape[0])
        return make_report(
            ctx,
            inp.digest,
            inp.meta.get("precision"),
            outs,
            ref,
            labels,
            cfg,
            n,
            seconds,
            "tensorrt",
            buckets,
            feeds,
            gen,
        )
