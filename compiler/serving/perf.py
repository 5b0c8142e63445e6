"""Capacity on the server, measured with NVIDIA's perf_analyzer (the field's tool, not
a load generator of ours): one perf_analyzer run per point of a concurrency sweep
(and of a request-rate sweep when asked), over gRPC and/or HTTP, with its own stable
measurement windows, on requests made from the validation set at the served shapes.
Each point gets perf_analyzer's throughput and p50/p90/p99 latency and Triton's own
statistics around it (mean batch per execution, queue vs compute time).

perf_analyzer comes from the `perf-analyzer` wheel (PyPI), whose binary needs glibc
2.38; give its path (or a wrapper that runs it under a newer loader) with
--perf-analyzer or $MSCOMPILE_PERF_ANALYZER, or have `perf_analyzer` on PATH."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

ENV = "MSCOMPILE_PERF_ANALYZER"
HOW = (
    "install it with `pip install perf-analyzer` (its wheel needs glibc 2.38: on an older system, "
    "`pip download --platform manylinux_2_38_x86_64 --only-binary=:all: perf-analyzer` and run the binary "
    "under a newer glibc's loader, e.g. Debian 13's libc6 and libstdc++6 unpacked, through a wrapper "
    "script), then give its path with --perf-analyzer or $MSCOMPILE_PERF_ANALYZER"
)


class PerfUnavailableError(ConfigError):
    """perf_analyzer is absent or does not run here (exit 2: what to install is said)."""


@dataclass
class PerfOptions:
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    request_rate: tuple[float, ...] = ()
    measurement_ms: int = 2000
    stability_percent: float = 10.0
    max_trials: int = 10
    samples: int = 16  # validation samples the requests cycle through
    binary: str | None = None
    timeout_s: float = 300.0  # per point
    extra: tuple[str, ...] = field(default_factory=tuple)


def find_perf_analyzer(given: str | None) -> str:
    """The perf_analyzer command: --perf-analyzer, $MSCOMPILE_PERF_ANALYZER, or PATH; it
    must start (a wheel built for a newer glibc does not)."""
    cand = given or os.environ.get(ENV) or shutil.which("perf_analyzer")
    if not cand:
        raise PerfUnavailableError(f"perf_analyzer was not found; {HOW}")
    path = Path(cand)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise PerfUnavailableError(f"perf_analyzer {cand} is not an executable file; {HOW}")
    try:
        r = subprocess.run([str(path)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PerfUnavailableError(f"perf_analyzer {cand} does not start ({exc}); {HOW}") from None
    text = r.stdout + r.stderr
    if "-m <model name>" not in text:
        first = next((ln for ln in text.splitlines() if ln.strip()), "no output")
        raise PerfUnavailableError(f"perf_analyzer {cand} does not run here: {first.strip()}; {HOW}")
    return str(path)


def input_data(
    feeds: dict[str, np.ndarray], dtypes: dict[str, str], batched: bool, batch_axis: bool, samples: int
) -> dict[str, Any]:
    """perf_analyzer's --input-data JSON: one request per validation sample (batch 1), at
    the sample's own shape (the batch dimension left out where Triton batches)."""
    n = int(next(iter(feeds.values())).shape[0]) if batch_axis else 1
    steps = []
    for i in range(min(n, samples)):
        step = {}
        for name, arr in feeds.items():
            x = arr[i : i + 1] if batch_axis else arr
            shape = list(x.shape[1:]) if batched else list(x.shape)
            content = x.reshape(-1).tolist() if dtypes.get(name) != "BYTES" else [str(v) for v in x.reshape(-1)]
            step[name] = {"content": content, "shape": shape}
        steps.append(step)
    return {"data": steps}


def _row(path: Path) -> dict[str, float]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError("perf_analyzer wrote no measurement")
    return {k.strip(): float(v) for k, v in rows[0].items() if k and v not in (None, "")}


def _point(
    cmd: list[str], mode: str, value: float, opts: PerfOptions, work: Path, stats: Callable[[], dict[str, int]]
) -> dict[str, Any]:
    """One point: perf_analyzer until its measurement is stable (a second try with twice
    the window when not), perf_analyzer's figures and Triton's statistics around it."""
    flag = "--concurrency-range" if mode == "concurrency" else "--request-rate-range"
    spec = f"{int(value)}:{int(value)}" if mode == "concurrency" else f"{value:g}:{value:g}"
    window = opts.measurement_ms
    out: dict[str, Any] = {"mode": mode, "value": value}
    for attempt in (1, 2):
        csv_path = work / f"{mode}-{value:g}-{attempt}.csv"
        argv = [
            *cmd, flag, spec, "-p", str(window), "-s", f"{opts.stability_percent:g}",
            "-r", str(opts.max_trials), "-f", str(csv_path), *opts.extra,
        ]  # fmt: skip
        before = stats()
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=opts.timeout_s)
        except subprocess.TimeoutExpired:
            return dict(out, stable=False, error=f"perf_analyzer ran past {opts.timeout_s:.0f} s at this point")
        after = stats()
        text = r.stdout + r.stderr
        if r.returncode == 0 and csv_path.exists():
            m = _row(csv_path)
            d = {k: after[k] - before[k] for k in after}
            execs = d.get("execution_count", 0)
            return dict(
                out,
                stable=True,
                measurement_ms=window,
                throughput=round(m["Inferences/Second"], 2),
                latency_ms={q: round(m[f"{q} latency"] / 1000, 3) for q in ("p50", "p90", "p99")},
                server_us={
                    "queue": m.get("Server Queue"),
                    "compute_input": m.get("Server Compute Input"),
                    "compute_infer": m.get("Server Compute Infer"),
                    "compute_output": m.get("Server Compute Output"),
                },
                triton={
                    "inference_count": d.get("inference_count", 0),
                    "execution_count": execs,
                    "mean_batch": round(d["inference_count"] / execs, 2) if execs else None,
                },
            )
        if "stable measurement" not in text:
            last = [ln.strip() for ln in text.splitlines() if ln.strip()][-3:]
            return dict(out, stable=False, error="perf_analyzer failed: " + " | ".join(last))
        window *= 2
    return dict(out, stable=False, error=f"no stable measurement within {opts.max_trials} windows of {window // 2} ms")


def sweep(
    model: str,
    version: int,
    url: str,
    protocol: str,
    data: dict[str, Any],
    opts: PerfOptions,
    stats: Callable[[], dict[str, int]],
    progress: Callable[[str], None],
    past_p99_ms: float | None = None,
) -> list[dict[str, Any]]:
    """Every point of the concurrency sweep, then of the request-rate sweep, over one
    protocol. With `past_p99_ms` (tune's SLO), the concurrencies above a point whose p99
    is past it are not measured, on the assumption that p99 does not fall as clients are
    added (Model Analyzer 1.58 stops its sweep on another rule: where throughput stops
    growing); they are listed as not measured, with the reason."""
    binary = opts.binary or find_perf_analyzer(None)  # checked once when the options were made
    rows = []
    with tempfile.TemporaryDirectory(prefix="mscompile-perf-") as tmp:
        work = Path(tmp)
        (work / "data.json").write_text(json.dumps(data))
        cmd = [
            binary, "-m", model, "-x", str(version), "-u", url, "-i", protocol,
            "--input-data", str(work / "data.json"), "-b", "1",
        ]  # fmt: skip
        points = [("concurrency", float(c)) for c in opts.concurrency] + [
            ("request_rate", float(r)) for r in opts.request_rate
        ]
        past: float | None = None  # the concurrency whose p99 was past the SLO
        for mode, value in points:
            if past is not None and mode == "concurrency":
                rows.append(
                    {
                        "mode": mode,
                        "value": value,
                        "stable": False,
                        "skipped": True,
                        "error": f"not measured: p99 was past {past_p99_ms:g} ms at concurrency {past:g}",
                    }
                )
                continue
            progress(f"perf_analyzer {protocol} {mode.replace('_', ' ')} {value:g}")
            row = _point(cmd, mode, value, opts, work, stats)
            rows.append(row)
            if (
                past_p99_ms is not None
                and mode == "concurrency"
                and row.get("stable")
                and row["latency_ms"]["p99"] > past_p99_ms
            ):
                past = value
    return rows


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The sweep as a terminal table."""
    out = [
        f"  {'point':18} {'infer/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'batch':>6} {'queue us':>9} {'infer us':>9}"
    ]
    for r in rows:
        label = f"{r['mode'].replace('_', ' ')} {r['value']:g}"
        if not r.get("stable"):
            out.append(f"  {label:18} {r.get('error', 'unstable')}")
            continue
        lat, s = r["latency_ms"], r["server_us"]
        out.append(
            f"  {label:18} {r['throughput']:9.1f} {lat['p50']:8.3f} {lat['p90']:8.3f} {lat['p99']:8.3f} "
            f"{r['triton']['mean_batch'] or '-':>6} {s['queue'] or 0:9.0f} {s['compute_infer'] or 0:9.0f}"
        )
    return out
