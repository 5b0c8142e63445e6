"""The replay-and-gate skeleton every serve-check runs (Triton over gRPC and HTTP,
vLLM's OpenAI API, a Ray Serve app over HTTP): the published version's deployed
target; per client, one request per sample from client threads with the answers
kept in request order, judged against the reference, a row in one shape; and the
verdict (the summary, or ServedWrongError carrying it).

A server's check supplies only its Client (how one request is sent, what a failed
request means, what the server adds to its row) and its judge (the tensor gate, or
the LLM's greedy-token gate). The latency figures are the check's own, measured by
its client threads: a by-product of checking answers, not a capacity figure."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..accuracy import evaluate
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


class Client(Protocol):
    """One way of asking a server: a protocol's row in the summary."""

    protocol: str  # the row's key: grpc, http
    prefix_failures: bool  # name the protocol in each failure (a server asked several ways)

    def send(self, i: int) -> Any:
        """Request i's answer (called from several threads)."""

    def failed(self, exc: Exception) -> MscompileError:
        """A request that raised: the error that says which server and why (exit 1)."""

    def begin(self) -> None:
        """Before the requests (e.g. the server's statistics so far)."""

    def end(self, done: Replay) -> dict[str, Any]:
        """After them: fields the client adds to the row (e.g. the server's own statistics)."""

    def answers(self, answers: list[Any]) -> Any:
        """The answers in request order as the judge takes them (e.g. arrays per output)."""


Judge = Callable[[Any], tuple[dict[str, Any], list[str]]]  # answers -> (row fields, failures)


def check_clients(
    clients: list[Client], n: int, concurrency: int, judge: Judge, progress: Callable[[str], None], label: str
) -> tuple[dict[str, Any], list[str]]:
    """Every client replays the n requests and its answers are judged: (row per protocol,
    every failure)."""
    rows: dict[str, Any] = {}
    failures: list[str] = []
    for c in clients:
        progress(f"{label} {c.protocol}: {n} requests, concurrency {concurrency}")
        c.begin()
        done = replay(c.send, n, concurrency, c.failed)
        extra = c.end(done)
        fields, fails = judge(c.answers(done.answers))
        failures += [f"{c.protocol}: {f}" if c.prefix_failures else f for f in fails]
        rows[c.protocol] = done.row(concurrency, **fields, failures=fails, **extra)
    return rows, failures


def tensor_judge(
    ref: dict[str, Any],
    labels: Any,
    io: Any,
    tolerance: Any,
    feeds: dict[str, Any] | None = None,
    mask: str | None = None,
) -> Judge:
    """The build's gate over arrays per output (compared in float32, as the build did;
    token-level outputs at the real positions of `feeds[mask]`, the padding mask)."""
    values = feeds.get(mask) if feeds is not None and mask else None

    def judge(outs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        outs = {k: v.astype(np.float32) if v.dtype != np.float32 else v for k, v in outs.items() if k in ref}
        metrics, per_output, fails = evaluate(outs, ref, labels, io, tolerance, values, mask or "")
        return {"metrics": metrics, "per_output": per_output}, fails

    return judge


def verdict(summary: dict[str, Any], failures: list[str], what: str) -> dict[str, Any]:
    """The summary with passed/failures; ServedWrongError (exit 3) carrying it when any
    answer missed the gate: '<what>: <failures>'."""
    summary.update(passed=not failures, failures=failures)
    if failures:
        err = ServedWrongError(f"{what}: " + "; ".join(failures))
        err.summary = summary
        raise err
    return summary


__all__ = [
    "Client",
    "Judge",
    "Replay",
    "ServeLoadError",
    "check_clients",
    "deployed_target",
    "replay",
    "tensor_judge",
    "verdict",
]
