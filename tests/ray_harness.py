"""A real Ray cluster on loopback for the farm tests: a head (2 CPUs) and a second node
(1 CPU, 1 GPU slot and the accelerator-type resource `accelerator_type:H100`, as a GPU
node of that kind advertises; no GPU is touched). Token authentication on, with a
token made for the test. Small: these machines have 2 cores."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mscompile.handoff import free_port


class Cluster:
    def __init__(self) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="msray-", dir="/tmp"))  # short: Ray's socket paths
        self.port = free_port()
        self.env = {
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),
        }
        self.ray = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
        self.procs: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _node(self, *args: str) -> subprocess.Popen:
        """One node, `ray start --block` in its own process group: stopping it stops only
        this cluster's processes (never another Ray on the machine)."""
        log = open(self.temp / f"node{len(self.procs)}.log", "wb")  # noqa: SIM115 - kept open for the node's life
        proc = subprocess.Popen(
            [self.ray, "start", "--block", *args],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def _wait_for(self, cpus: float, timeout: float = 120.0) -> None:
        """Until the cluster shows `cpus` CPUs (every node joined)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run(
                [self.ray, "status", f"--address={self.address}"],
                env={**os.environ, **self.env},
                capture_output=True,
                text=True,
                timeout=60,
            )
            if r.returncode == 0 and f"/{cpus:.1f} CPU" in r.stdout:
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(1.0)
        logs = "\n".join(f.read_text(errors="replace")[-600:] for f in sorted(self.temp.glob("node*.log")))
        self.stop()
        raise RuntimeError(f"the Ray test cluster did not come up:\n{logs}")

    def start(self) -> Cluster:
        common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        self._node(
            "--head", f"--port={self.port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
            f"--temp-dir={self.temp}", "--object-store-memory=150000000", *common,
        )  # fmt: skip
        self._wait_for(2.0)
        self._node(
            f"--address={self.address}", "--num-cpus=1", "--num-gpus=1",
            '--resources={"accelerator_type:H100": 1}', "--object-store-memory=80000000", *common,
        )  # fmt: skip
        self._wait_for(3.0)
        return self

    def stop(self) -> None:
        import signal

        for proc in reversed(self.procs):
            # a head node can sit out SIGTERM for its 30 s grace period: a test cluster
            # gets 5 s, then SIGKILL
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.procs.clear()
        shutil.rmtree(self.temp, ignore_errors=True)


def ray_missing() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed (pip install 'mscompile[ray]')"
    return None
