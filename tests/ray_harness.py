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

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ray(self, *args: str) -> None:
        r = subprocess.run(
            [self.ray, *args], env={**os.environ, **self.env}, capture_output=True, text=True, timeout=180
        )
        if r.returncode != 0:
            raise RuntimeError(f"ray {args[0]} {args[1]}: {(r.stderr or r.stdout).strip()[-800:]}")

    def start(self) -> Cluster:
        common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        self._ray(
            "start", "--head", f"--port={self.port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
            f"--temp-dir={self.temp}", "--object-store-memory=150000000", *common,
        )  # fmt: skip
        self._ray(
            "start", f"--address={self.address}", "--num-cpus=1", "--num-gpus=1",
            '--resources={"accelerator_type:H100": 1}', "--object-store-memory=80000000", *common,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        subprocess.run([self.ray, "stop", "--force"], capture_output=True, timeout=120, env={**os.environ, **self.env})
        shutil.rmtree(self.temp, ignore_errors=True)


def ray_missing() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed (pip install 'mscompile[ray]')"
    return None
