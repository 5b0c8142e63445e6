"""Servers started here (tritonserver, vLLM, serve run) share one start/wait/stop:
what a user sees when a server dies or never comes up, and that stopping leaves no
process of the server's group behind."""

import os
import sys
from pathlib import Path

import pytest
from mscompile.errors import ServeLoadError
from mscompile.serving.process import LocalProcess


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_server_that_exits_while_starting_is_named_with_its_log(tmp_path):
    p = LocalProcess("fake server", _py("print('bind failed: port in use'); raise SystemExit(7)"), tmp_path / "s.log",
                     lambda: False)  # fmt: skip
    with pytest.raises(ServeLoadError, match=r"fake server exited with code 7 while starting") as e:
        p.start()
    assert "bind failed: port in use" in str(e.value) and str(tmp_path / "s.log") in str(e.value)


def test_a_server_that_never_gets_ready_is_stopped_and_said(tmp_path):
    p = LocalProcess("slow server", _py("import time; time.sleep(600)"), tmp_path / "s.log", lambda: False,
                     start_timeout=1.0)  # fmt: skip
    with pytest.raises(ServeLoadError, match=r"slow server did not come up in 1 s"):
        p.start()
    assert p.proc is not None and p.proc.poll() is not None  # stopped, not left running


def test_stopping_ends_the_servers_whole_process_group(tmp_path):
    """The server's own children (a python backend stub, vLLM's engine) go with it."""
    pidfile = tmp_path / "child.pid"
    ready = tmp_path / "ready"
    code = (
        "import subprocess, sys, time, pathlib\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"pathlib.Path({str(pidfile)!r}).write_text(str(c.pid))\n"
        f"pathlib.Path({str(ready)!r}).write_text('up')\n"
        "time.sleep(600)\n"
    )
    with LocalProcess("server", _py(code), tmp_path / "s.log", ready.exists, start_timeout=60) as p:
        child = int(pidfile.read_text())
        os.kill(child, 0)  # alive while the server runs
        assert p.proc.poll() is None
    assert p.proc.poll() is not None
    assert _ended(child), "the server's child outlived it"


def _ended(pid: int, limit_s: float = 10.0) -> bool:
    """Dead (gone, or a zombie waiting for its reaper). The group was signalled before stop()
    returned; the kernel may take a moment to finish the child's exit."""
    import time

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False
