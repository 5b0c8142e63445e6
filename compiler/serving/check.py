"""The replay-and-gate skeleton every serve-check shares (Triton over gRPC and HTTP,
vLLM's OpenAI API, a Ray Serve app over HTTP): the published version's deployed
target, one request per sample from client threads with the answers kept in
request order, a row per protocol in one shape, and the verdict (the summary, or
ServedWrongError carrying it). The latency figures are the check's own, measured
by its client threads: a by-product of checking answers, not a capacity figure."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, MscompileError, ServedWrongError, ServeLoadError


def deployed_target(cfg: Any, name: str, version: int, target_name: str | None) -> Any:
    """The model.yaml target a published version was built from (exit 2 when it is gone)."""
    target = next((t for t in cfg.targets if t.name == target_name), None)
    if target is None:
        raise ConfigError(
            f"{name} version {version} was built from target {target_name!r}, which model.yaml no longer has; "
            "check it with the model.yaml it was built from"
        )
    return target


@dataclass
class Replay:
    answers: list[Any]  # in request order
    latencies: list[float]  # seconds, per request, as the client saw them
    wall: float

    def row(self, concurrency: int, **fields: Any) -> dict[str, Any]:
        """One protocol's summary row: requests, the check's client-side latency and
        throughput, then `fields` (metrics, failures, ...); `passed` from `failures`."""
        import numpy as np

        ms = np.asarray(self.latencies or [0.0]) * 1000.0
        n = len(self.latencies)
        row: dict[str, Any] = {
            "requests": n,
            "concurrency": concurrency,
            "latency_ms": {f"p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99)},
            "latency_measured_by": "the check's client threads (one request per sample), not a load test",
            "throughput_rps": round(n / self.wall, 2) if self.wall > 0 else None,
        }
        row.update(fields)
        row["passed"] = not row.get("failures")
        return row


def replay(
    send: Callable[[int], Any], n: int, concurrency: int, failed: Callable[[Exception], MscompileError]
) -> Replay:
    """`send(i)` for every request i from `concurrency` threads. A request that raises is
    `failed(exc)` (a ServeLoadError naming the server), unless it is already ours."""

    def one(i: int) -> tuple[Any, float]:
        t0 = time.perf_counter()
        out = send(i)
        return out, time.perf_counter() - t0

    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            results = list(pool.map(one, range(n)))  # map keeps request order
    except MscompileError:
        raise
    except Exception as exc:  # noqa: BLE001 - the server's or the transport's error, said by `failed`
        raise failed(exc) from None
    return Replay([r[0] for r in results], [r[1] for r in results], time.perf_counter() - t0)


def verdict(summary: dict[str, Any], failures: list[str], what: str) -> dict[str, Any]:
    """The summary with passed/failures; ServedWrongError (exit 3) carrying it when any
    answer missed the gate: '<what>: <failures>'."""
    summary.update(passed=not failures, failures=failures)
    if failures:
        err = ServedWrongError(f"{what}: " + "; ".join(failures))
        err.summary = summary
        raise err
    return summary


__all__ = ["Replay", "ServeLoadError", "deployed_target", "replay", "verdict"]
