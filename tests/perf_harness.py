"""NVIDIA's perf_analyzer for the tests, from the registries, once, into
$MSCOMPILE_TEST_CACHE: the `perf-analyzer` 2.60 wheel (PyPI; its binary needs glibc
2.38). Where this system's glibc is older (Debian 12 has 2.36) the binary runs under
Debian 13's loader and libraries (libc6, libstdc++6, libgcc-s1 fetched with
`apt-get download` from Debian's archive and unpacked, never installed), through a
wrapper script. Without network, the tests that need it skip with the reason; or name
a working perf_analyzer with $MSCOMPILE_PERF_ANALYZER."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from provision import once
from triton_harness import CACHE

WHEEL = "perf-analyzer==2.60.0"
_STATE: dict[str, str] = {}

WRAPPER = """#!/bin/sh
# perf_analyzer under Debian 13's loader and libraries (this system's glibc is too old)
L={libs}
exec "$L/ld-linux-x86-64.so.2" --library-path "$L:/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu" {binary} "$@"
"""


def _runs(cmd: str) -> bool:
    try:
        r = subprocess.run([cmd], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "-m <model name>" in r.stdout + r.stderr


def _run(argv: list[str], cwd: Path | None = None) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=cwd)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} ... failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")


def _provision(root: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".perf-analyzer-"))
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--platform", "manylinux_2_38_x86_64",
          "--only-binary=:all:", WHEEL, "-d", str(tmp / "wheel")])  # fmt: skip
    with zipfile.ZipFile(next((tmp / "wheel").glob("*.whl"))) as z:
        z.extractall(tmp / "x")
    binary = tmp / "x" / "perf_analyzer" / "bin" / "perf_analyzer"
    binary.chmod(0o755)
    (tmp / "perf_analyzer").write_text(f'#!/bin/sh\nexec {root / "x/perf_analyzer/bin/perf_analyzer"} "$@"\n')
    if not _runs(str(binary)):  # an older glibc: Debian 13's loader and libraries beside it
        apt = tmp / "apt"
        for d in ("lists/partial", "cache/archives/partial", "etc", "debs", "root"):
            (apt / d).mkdir(parents=True, exist_ok=True)
        (apt / "etc/sources.list").write_text("deb [trusted=yes] http://deb.debian.org/debian trixie main\n")
        (apt / "etc/status").write_text("")
        opts = [
            f"-oDir::Etc::sourcelist={apt / 'etc/sources.list'}", "-oDir::Etc::sourceparts=-",
            f"-oDir::State::Lists={apt / 'lists'}", f"-oDir::Cache={apt / 'cache'}",
            f"-oDir::State::status={apt / 'etc/status'}", "-oAPT::Sandbox::User=root",
        ]  # fmt: skip
        _run(["apt-get", *opts, "update"])
        _run(["apt-get", *opts, "download", "libc6", "libstdc++6", "libgcc-s1"], cwd=apt / "debs")
        for deb in sorted((apt / "debs").glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(apt / "root")])
        libs = root / "apt/root/usr/lib/x86_64-linux-gnu"
        (tmp / "perf_analyzer").write_text(WRAPPER.format(libs=libs, binary=root / "x/perf_analyzer/bin/perf_analyzer"))
        shutil.rmtree(apt / "lists", ignore_errors=True)
        shutil.rmtree(apt / "cache", ignore_errors=True)
    (tmp / "perf_analyzer").chmod(0o755)
    shutil.rmtree(tmp / "wheel")
    shutil.rmtree(root, ignore_errors=True)
    os.rename(tmp, root)
    return root / "perf_analyzer"


def perf_analyzer() -> str | None:
    """A perf_analyzer command that runs here, or None (then `why()` says why)."""
    if "path" in _STATE:
        return _STATE["path"] or None
    given = os.environ.get("MSCOMPILE_PERF_ANALYZER")
    if given:
        _STATE["path"] = given
        return given
    root = CACHE / "perf-analyzer-2.60"
    cmd = root / "perf_analyzer"
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        once(root, lambda: cmd.exists() and _runs(str(cmd)), lambda: _provision(root))
        if not _runs(str(cmd)):
            raise RuntimeError(f"{cmd} does not run here")
    except Exception as exc:  # noqa: BLE001 - no network, no apt: the reason is the skip
        _STATE["path"], _STATE["why"] = "", f"perf_analyzer could not be provisioned: {exc}"
        return None
    _STATE["path"] = str(cmd)
    return str(cmd)


def why() -> str:
    return _STATE.get("why", "perf_analyzer is not provisioned")
