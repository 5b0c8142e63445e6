"""A real Triton server for the tests.

The `nvidia-pytriton` wheel (PyPI) carries a tritonserver 2.51 binary with only
the python backend; Triton's onnxruntime backend is not installable here. So the
harness adds a test-only *Python-based backend* named `onnxruntime`
(backends/onnxruntime/model.py, Triton's mechanism for backends written in
Python) that runs the published model.onnx with ONNX Runtime. The configs
mscompile generates (`platform: onnxruntime_onnx`, `backend: onnxruntime`) then
load unchanged, through Triton's own validation, batching, versions and
explicit or polled loading.

Facts that shape it (FIELD-NOTES): the python backend stub must run under a
Python whose libpython matches the stdlib it loads (Debian's /usr/bin/python3.11),
it ignores PYTHONPATH (model.py puts its packages on sys.path), and it needs
numpy<2 (plus onnxruntime, and tokenizers for the MiniLM ensemble's
preprocessing). Everything is fetched from PyPI once into $MSCOMPILE_TEST_CACHE
(default ~/.cache/mscompile-tests); without network or that Python, the tests
that need a server skip with the reason."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

PYTRITON = "nvidia-pytriton==0.7.0"
STUB_PYTHON = Path("/usr/bin/python3.11")
CACHE = Path(os.environ.get("MSCOMPILE_TEST_CACHE", Path.home() / ".cache" / "mscompile-tests"))

BACKEND = '''
"""Test-only Python-based backend named onnxruntime: runs model.onnx with ONNX Runtime."""
import json
import os
import sys

sys.path.insert(0, {site!r})
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        name = cfg.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], name)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in cfg["input"]]
        self.outputs = [o["name"] for o in cfg["output"]]
        self.batching = int(cfg.get("max_batch_size", 0)) > 0

    def execute(self, requests):
        # the requests the dynamic batcher merged run as one batch, as a real backend does
        feeds = [{{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs}} for r in requests]
        sizes = [next(iter(f.values())).shape[0] for f in feeds]
        same = self.batching and all(
            f[n].shape[1:] == feeds[0][n].shape[1:] for f in feeds for n in self.inputs
        )
        if same and len(feeds) > 1:
            merged = {{n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}}
            outs = self.sess.run(self.outputs, merged)
            cuts = np.cumsum(sizes)[:-1]
            parts = [np.split(o, cuts) for o in outs]
            results = [[p[i] for p in parts] for i in range(len(feeds))]
        else:
            results = [self.sess.run(self.outputs, f) for f in feeds]
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in zip(self.outputs, res)])
            for res in results
        ]
'''


@dataclass
class Triton:
    binary: Path
    backends: Path
    site: Path

    @property
    def args(self) -> list[str]:
        return [f"--backend-directory={self.backends}"]


_PROVISIONED: Triton | str | None = None


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")


def _server_tree() -> Path:
    root = CACHE / "pytriton-0.7.0"
    if (root / ".complete").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".pytriton-"))
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PYTRITON, "-d", str(tmp / "wheel")])
    wheel = next((tmp / "wheel").glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp / "x")
    shutil.rmtree(tmp / "wheel")
    server = tmp / "x" / "pytriton" / "tritonserver"
    stub = server / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
    shutil.copy2(stub, server / "backends" / "python" / "triton_python_backend_stub")
    for exe in (server / "bin" / "tritonserver", server / "backends" / "python" / "triton_python_backend_stub"):
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    (tmp / "x" / ".complete").write_text(PYTRITON + "\n")
    shutil.rmtree(root, ignore_errors=True)
    os.rename(tmp / "x", root)
    shutil.rmtree(tmp, ignore_errors=True)
    return root


def _stub_site() -> Path:
    site = CACHE / "stub-site-py311-v2"
    if (site / ".complete").exists():
        return site
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".stub-site-"))
    # the stub's own Python resolves the wheels (cp311, numpy<2 as the stub needs)
    _run([str(STUB_PYTHON), "-m", "pip", "install", "-q", "--target", str(tmp), "numpy<2", "onnxruntime", "tokenizers"])
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(site, ignore_errors=True)
    os.rename(tmp, site)
    return site


def triton() -> Triton | str:
    """The provisioned server, or why there is none (a skip reason)."""
    global _PROVISIONED
    if _PROVISIONED is not None:
        return _PROVISIONED
    if os.environ.get("MSCOMPILE_TEST_NO_TRITON"):
        _PROVISIONED = "MSCOMPILE_TEST_NO_TRITON is set"
        return _PROVISIONED
    if not STUB_PYTHON.exists() or not Path("/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0").exists():
        _PROVISIONED = (
            f"a real Triton server needs {STUB_PYTHON} and its libpython3.11.so (Debian's python3.11) for the "
            "python backend stub"
        )
        return _PROVISIONED
    try:
        root = _server_tree()
        site = _stub_site()
    except Exception as exc:  # noqa: BLE001 - no network, no pip: the reason is the skip
        _PROVISIONED = f"could not fetch {PYTRITON} or the stub's packages from PyPI: {exc}"
        return _PROVISIONED
    server = root / "pytriton" / "tritonserver"
    backend = server / "backends" / "onnxruntime"
    backend.mkdir(exist_ok=True)
    (backend / "model.py").write_text(BACKEND.format(site=str(site)))
    _PROVISIONED = Triton(server / "bin" / "tritonserver", server / "backends", site)
    return _PROVISIONED
