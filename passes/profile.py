"""Profile a variant the way it will be served: latency percentiles and
throughput per batch size, on the runtime and thread settings of its target.

Warm-up first; then windows of `window` calls are timed until the p50 of two
consecutive windows agree within `agreement` (the stability rule), or
`max_windows` is reached, or the batch size's share of `budget_s` is spent (the
result says whether it settled, and its `noise`: how far the last two windows'
p50 differ, relative; selection treats differences below it as ties). Inputs are
validation samples tiled to each batch size at the range's opt shape.
Depends on the machine: its key includes the device fingerprint (CPU model)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from mscompile.artifacts import OnnxModel, OpenVinoModel, ProfileReport
from mscompile.pipeline import Pass, PassContext, PassResult
from mscompile.sections import IOSpec, Section


class ProfilingConfig(Section):
    io: IOSpec
    batch_sizes: tuple[int, ...]
    runtime: str = "onnxruntime"  # the runtime the step's session runs (for the report, and the key)
    intra_op_threads: int = 0  # 0: the runtime's default
    warmup: int = 5
    window: int = 10
    max_windows: int = 8
    agreement: float = 0.05
    budget_s: float = 60.0  # for all batch sizes together


def feeds_for_batch(io: IOSpec, sample: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """`batch` copies of validation samples, padded/cut to the range's opt shape."""
    out = {}
    for inp in io.inputs:
        a = sample[inp.name]
        if io.has_batch_axis():
            reps = -(-batch // a.shape[0])
            a = np.concatenate([a] * reps, axis=0)[:batch]
            if inp.range is not None:
                for ax in range(1, a.ndim):
                    want = inp.range.opt[ax]
                    if a.shape[ax] < want:
                        pad = [(0, 0)] * a.ndim
                        pad[ax] = (0, want - a.shape[ax])
                        a = np.pad(a, pad)
                    elif a.shape[ax] > want:
                        a = np.take(a, range(want), axis=ax)
        out[inp.name] = np.ascontiguousarray(a)
    return out


def measure(
    run: Any,
    feeds: dict[str, np.ndarray],
    cfg: ProfilingConfig,
    budget_s: float = float("inf"),
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Timing windows of `run` until two agree, max_windows or the budget; `clock` (seconds)
    is replaceable so that a test decides what each call costs instead of sleeping."""
    start = clock()
    for _ in range(cfg.warmup):
        run(feeds)
    windows: list[list[float]] = []
    stable = over_budget = False
    while len(windows) < cfg.max_windows:
        if len(windows) >= 2 and clock() - start > budget_s:
            over_budget = True
            break
        w = []
        for _ in range(cfg.window):
            t0 = clock()
            run(feeds)
            w.append((clock() - t0) * 1000)
        windows.append(w)
        if len(windows) >= 2:
            a, b = np.median(windows[-2]), np.median(windows[-1])
            if abs(a - b) <= cfg.agreement * min(a, b):
                stable = True
                break
    last = np.array(windows[-2] + windows[-1] if len(windows) >= 2 else windows[-1])
    if len(windows) >= 2:
        a, b = float(np.median(windows[-2])), float(np.median(windows[-1]))
        noise = abs(a - b) / max(min(a, b), 1e-9)
    else:
        noise = 1.0
    return {
        "p50_ms": float(np.percentile(last, 50)),
        "p95_ms": float(np.percentile(last, 95)),
        "p99_ms": float(np.percentile(last, 99)),
        "windows": len(windows),
        "stable": stable,
        "noise": round(noise, 4),
        "over_budget": over_budget,
        "seconds": round(clock() - start, 3),
    }


class Profile(Pass[OnnxModel, ProfileReport]):
    name = "profile"
    version = 3
    input_type = OnnxModel
    output_type = ProfileReport
    Config = ProfilingConfig
    libraries = ("onnxruntime", "openvino", "numpy")
    extra_inputs = ("validation",)
    device_dependent = True

    def run(self, inp: OnnxModel, cfg: ProfilingConfig, ctx: PassContext) -> PassResult[ProfileReport]:
        feeds_all, _ = ctx.data("validation")
        sample = {k: v[: max(cfg.batch_sizes)] for k, v in feeds_all.items()}
        casts = {s["name"]: s["dtype"] for s in inp.meta["io"]["inputs"]}
        runtime = cfg.runtime
        run = ctx.open(inp.model_file, None, cfg.intra_op_threads)
        rows = []
        for b in cfg.batch_sizes:
            ctx.note(f"{runtime}, batch {b}")
            feeds = {k: v.astype(casts.get(k, str(v.dtype))) for k, v in feeds_for_batch(cfg.io, sample, b).items()}
            m = measure(run, feeds, cfg, cfg.budget_s / len(cfg.batch_sizes))
            m.update(batch=b, throughput=b / (m["p50_ms"] / 1000))
            rows.append(m)
        path = ctx.workdir / "profile.json"
        path.write_text(json.dumps({"runtime": runtime, "threads": cfg.intra_op_threads, "batches": rows}, indent=2))
        metrics = {f"b{r['batch']}_p50_ms": r["p50_ms"] for r in rows}
        metrics.update({f"b{r['batch']}_throughput": r["throughput"] for r in rows})
        return PassResult(path=path, meta={"runtime": runtime, "batches": rows}, metrics=metrics)


class ProfileOpenVino(Profile):
    """Latency and throughput of an OpenVINO IR on the OpenVINO runtime."""

    name = "profile_openvino"
    input_type = OpenVinoModel  # type: ignore[assignment]
    libraries = ("openvino", "numpy")
