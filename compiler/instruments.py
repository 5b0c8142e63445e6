"""Instruments: the one home for progress, timing and event logs. Passes never
print; they call ctx.note(), which lands here."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO


@contextmanager
def capture_output(log_path: Path):
    """Send everything written to fds 1 and 2 (Python and native libraries alike)
    to `log_path` for the duration, so exporters' chatter stays out of the terminal."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class Instruments:
    """Progress lines on stderr and one JSON event per line in events.jsonl."""

    def __init__(self, events_path: Path | None, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.events_path = events_path
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.warnings: list[str] = []
        self._t0 = time.perf_counter()
        if events_path is not None:
            events_path.parent.mkdir(parents=True, exist_ok=True)

    def event(self, kind: str, **data: Any) -> None:
        if self.events_path is None:
            return
        rec = {"t": round(time.perf_counter() - self._t0, 4), "event": kind, **data}
        with open(self.events_path, "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.event("warning", message=message)
        print(f"warning: {message}", file=self.stream, flush=True)

    # -- hooks called by the driver ------------------------------------------------
    def step_start(self, step: Any) -> None:
        self.event("step_start", step=step.id, pass_name=step.pass_cls.name)

    def step_progress(self, step: Any, message: str) -> None:
        self.event("step_progress", step=step.id, message=message)
        self.say(f"  {step.id:<28} ... {message}")

    def step_end(self, step: Any, record: Any) -> None:
        self.event("step_end", **record.to_json())
        how = "cached" if record.cached else record.status.value.lower()
        extra = f"  ({record.reason})" if record.reason else ""
        self.say(f"  {step.id:<28} {how:<8} {record.seconds:7.2f}s{extra}")
