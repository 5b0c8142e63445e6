"""Servers a command starts on loopback (tritonserver, vLLM's OpenAI server, Ray
Serve's `serve run`): one way to start, wait for, and stop them. Each runs in its
own process group with its log in a file; it is ready when its probe says so
within the start timeout; a server that exits or does not come up is a
ServeLoadError quoting the end of its log; stopping signals the whole group
(the server's own children too) and kills it if it has not exited in time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ServeLoadError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 30.0) -> None:
    """Signal a server's process group, then kill the group if it has not exited in `grace` s."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


class LocalProcess:
    """One server started here: `with LocalProcess(...) as p:` starts it and waits until
    `ready()` is true (or raises ServeLoadError), and stops it on the way out."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        ready: Callable[[], bool],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        start_timeout: float = 120.0,
        poll: float = 0.1,
        stop_signal: int = signal.SIGTERM,
        stop_grace: float = 30.0,
    ) -> None:
        self.name, self.argv, self.log_path, self.ready = name, list(argv), log_path, ready
        self.env, self.cwd, self.start_timeout, self.poll = env, cwd, start_timeout, poll
        self.stop_signal, self.stop_grace = stop_signal, stop_grace
        self.proc: subprocess.Popen | None = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> LocalProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise ServeLoadError(
                    f"{self.name} exited with code {self.proc.returncode} while starting; its log "
                    f"({self.log_path}) ends:\n{self.log_tail()}"
                )
            try:
                if self.ready():
                    return self
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServeLoadError(
                    f"{self.name} did not come up in {self.start_timeout:.0f} s; its log ({self.log_path}) "
                    f"ends:\n{self.log_tail()}"
                )
            time.sleep(self.poll)

    def stop(self) -> None:
        stop_process(self.proc, self.stop_signal, self.stop_grace)

    def __enter__(self) -> LocalProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
