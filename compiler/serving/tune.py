"""The serving-config search of `mscompile tune`: max_batch_size, the dynamic
batcher's queue delay and preferred batch size, and the instance count, measured on
the real server with perf_analyzer, under a latency objective (the highest
throughput whose p99 meets the SLO). A hill climb like Model Analyzer's quick search, started where the variant's
own latency-vs-batch profile says throughput stops growing (so it needs few trials);
every trial is kept. The search itself is here (pure: it asks `measure` for each
candidate); handoff.tune runs it against a server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..tritonrepo.config import throughput_knee

DELAYS_US = (0, 100, 500, 2000)
NOISE = 0.05  # a neighbour must beat the current point by more than this to move


@dataclass(frozen=True)
class Candidate:
    max_batch_size: int  # 0: the config does not batch (only instances are searched)
    delay_us: int
    instances: int
    # 0: none given, which Triton's config normalization turns into [max_batch_size];
    # k: the batcher sends a batch as soon as k requests are queued, without waiting out
    # the delay (Triton core's DynamicBatchScheduler::GetDynamicBatch), and larger batches
    # (up to max_batch_size) only from a backlog older than the delay
    preferred: int = 0

    def label(self) -> str:
        if self.max_batch_size == 0:
            return f"no batching, {self.instances} instance(s)"
        pref = f", preferred {self.preferred}" if self.preferred else ""
        return f"max_batch {self.max_batch_size}, delay {self.delay_us} us{pref}, {self.instances} instance(s)"

    @classmethod
    def of_trial(cls, t: dict[str, Any]) -> Candidate:
        """The candidate a trial recorded by `search` measured."""
        pref = t.get("preferred_batch_size") or [0]
        return cls(t["max_batch_size"], t["max_queue_delay_microseconds"], t["instances"], pref[0])


def score(points: list[dict[str, Any]], p99_ms: float) -> tuple[float, dict[str, Any] | None]:
    """The highest throughput among the measured points whose p99 meets the SLO (0: none)."""
    ok = [p for p in points if p.get("stable") and p["latency_ms"]["p99"] <= p99_ms]
    if not ok:
        return 0.0, None
    best = max(ok, key=lambda p: p["throughput"])
    return float(best["throughput"]), best


def batch_sizes(limit: int) -> list[int]:
    out, b = [], 1
    while b <= limit:
        out.append(b)
        b *= 2
    if limit not in out:
        out.append(limit)
    return out


def preferred_sizes(max_batch_size: int) -> list[int]:
    """The preferred sizes a candidate may give, in order: the powers of two below its
    max_batch_size, then 0 (none: the batch fills to max_batch_size or the delay runs out)."""
    return [s for s in batch_sizes(max_batch_size) if s < max_batch_size] + [0]


def neighbours(c: Candidate, max_batch: int, max_instances: int) -> list[Candidate]:
    """One step along each axis. The preferred size is searched only with a queue delay:
    without one the batcher never waits, and a preferred size then only caps the batch,
    which a smaller max_batch_size already tries."""
    out = []
    if c.max_batch_size:
        sizes = batch_sizes(max_batch)
        i = sizes.index(c.max_batch_size) if c.max_batch_size in sizes else 0
        for j in (i - 1, i + 1):
            if 0 <= j < len(sizes):
                keep = c.preferred if c.preferred < sizes[j] else 0
                out.append(Candidate(sizes[j], c.delay_us, c.instances, keep))
        d = DELAYS_US.index(c.delay_us) if c.delay_us in DELAYS_US else 0
        for j in (d - 1, d + 1):
            if 0 <= j < len(DELAYS_US):
                out.append(Candidate(c.max_batch_size, DELAYS_US[j], c.instances, c.preferred if DELAYS_US[j] else 0))
        if c.delay_us:
            prefs = preferred_sizes(c.max_batch_size)
            k = prefs.index(c.preferred) if c.preferred in prefs else len(prefs) - 1
            for j in (k - 1, k + 1):
                if 0 <= j < len(prefs):
                    out.append(Candidate(c.max_batch_size, c.delay_us, c.instances, prefs[j]))
    for n in (c.instances - 1, c.instances + 1):
        if 1 <= n <= max_instances:
            out.append(Candidate(c.max_batch_size, c.delay_us, n, c.preferred))
    return out


def start_point(profile: dict[str, Any] | None, max_batch: int, batching: bool) -> Candidate:
    """Where the variant's profile says throughput stops growing by 10% per step."""
    if not batching:
        return Candidate(0, 0, 1)
    rows = (profile or {}).get("batches", [])
    best = throughput_knee(rows) if rows else 1
    sizes = batch_sizes(max_batch)
    return Candidate(min(sizes, key=lambda s: abs(s - best)), 100, 1)


def search(
    measure: Callable[[Candidate], list[dict[str, Any]]],
    first: Candidate,
    max_batch: int,
    max_instances: int,
    p99_ms: float,
    max_trials: int,
    progress: Callable[[str], None] = lambda _m: None,
) -> tuple[Candidate, list[dict[str, Any]]]:
    """Hill-climb from `first`: measure every untried neighbour of the current point,
    move to the best one when it beats the current by more than NOISE, stop when none
    does or the trial budget is spent. Returns the best candidate and every trial."""
    trials: list[dict[str, Any]] = []
    seen: dict[Candidate, float] = {}

    def trial(c: Candidate) -> float:
        if c not in seen:
            if len(trials) >= max_trials:
                return -1.0
            progress(f"trial {len(trials) + 1}/{max_trials}: {c.label()}")
            points = measure(c)
            s, at = score(points, p99_ms)
            seen[c] = s
            trials.append(
                {
                    "trial": len(trials) + 1,
                    "max_batch_size": c.max_batch_size,
                    "max_queue_delay_microseconds": c.delay_us,
                    "preferred_batch_size": [c.preferred] if c.preferred else [],
                    "instances": c.instances,
                    "throughput_under_slo": round(s, 2),
                    "at": {"concurrency": at["value"], "p99_ms": at["latency_ms"]["p99"]} if at else None,
                    "points": points,
                }
            )
        return seen[c]

    current = first
    trial(current)
    while len(trials) < max_trials:
        scored = [(trial(n), n) for n in neighbours(current, max_batch, max_instances)]
        scored = [x for x in scored if x[0] >= 0]
        if not scored:
            break
        s, best = max(scored, key=lambda x: x[0])
        if s <= seen[current] * (1 + NOISE):
            break
        current = best
    best = max(seen, key=lambda c: seen[c])
    return best, trials


def pareto(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every measured point (of every trial) that no other point beats on both
    throughput and p99: the latency-throughput front."""
    pts = [
        {
            "trial": t["trial"],
            "concurrency": p["value"],
            "throughput": p["throughput"],
            "p99_ms": p["latency_ms"]["p99"],
        }
        for t in trials
        for p in t["points"]
        if p.get("stable")
    ]
    front = [
        p
        for p in pts
        if not any(
            q["throughput"] >= p["throughput"]
            and q["p99_ms"] <= p["p99_ms"]
            and (q["throughput"] > p["throughput"] or q["p99_ms"] < p["p99_ms"])
            for q in pts
        )
    ]
    return sorted(front, key=lambda p: p["p99_ms"])
