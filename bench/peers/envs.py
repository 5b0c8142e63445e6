"""The real peers, each installed in a virtual environment of its own:

  python -m bench.peers.envs [--only optimum,olive,optimum_intel,navigator,model_analyzer] [--force]

Environments live in $MSCOMPILE_BENCH_ENVS (default ~/.cache/mscompile-bench/peers),
one folder per peer with a `status.json` ({"ok": bool, "error": str, "versions": ...}).
torch is installed first at this project's pin (the CPU build), then the peer the way
its documentation tells a user to, with what this registry needs on top (measured,
../shared/FIELD-NOTES.md): Olive imports requests and psutil without declaring them;
Model Navigator hard-requires GPU packages (tensorrt, onnxruntime-gpu, modelopt), so it
is installed with --no-deps and its CPU dependencies named here; optimum-intel pulls a
torchvision whose CUDA-built ops do not load beside the CPU torch (removed: its export
of transformers models does not need it). A peer that cannot be installed keeps its
error in status.json and the bench reports it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("MSCOMPILE_BENCH_ENVS", Path.home() / ".cache" / "mscompile-bench" / "peers"))
TORCH = "torch==2.13.0"

# peer -> (pip install steps after torch, packages whose versions are recorded, packages removed after)
PEERS: dict[str, tuple[list[list[str]], list[str], list[str]]] = {
    # datasets: what its static quantization API (ORTQuantizer.fit) takes the calibration set as
    "optimum": ([["optimum-onnx[onnxruntime]==0.1.0", "datasets", "huggingface-hub<1.0"]], ["optimum", "optimum-onnx", "onnxruntime", "transformers"], []),
    "olive": (
        [["olive-ai==0.13.0", "onnxruntime", "onnx", "transformers<5", "requests", "psutil", "optimum"]],
        ["olive-ai", "onnxruntime", "onnx", "transformers"],
        [],
    ),
    "optimum_intel": (
        # datasets: what its quantizer takes an image model's calibration set as
        [["optimum-intel[openvino,nncf]==2.2.0", "datasets", "huggingface-hub<1.22"]],
        ["optimum-intel", "openvino", "nncf", "transformers"],
        ["torchvision"],
    ),
    "navigator": (
        [
            ["--no-deps", "triton-model-navigator==0.14.0"],
            # its CPU-usable dependencies (the package declares GPU-only ones too)
            ["onnx", "onnxruntime", "polygraphy", "numpy<2", "pyyaml", "psutil", "py-cpuinfo", "packaging~=24.1",
             "jsonlines", "loguru", "pynvml~=11.5", "tabulate", "tritonclient[grpc]", "wrapt", "dacite", "fire",
             "pyee", "coloredlogs", "protobuf", "sympy", "onnxscript", "onnx-graphsurgeon", "GitPython",
             "transformers<5", "onnxruntime-extensions", "python-slugify~=8.0", "rich>=13.7.1"],
        ],
        ["triton-model-navigator", "onnxruntime", "onnx", "polygraphy"],
        [],
    ),
    # Triton Model Analyzer (bench/bench_tune.py): it drives a tritonserver and perf_analyzer
    # given by path, so it needs neither torch nor a runtime of its own
    "model_analyzer": ([["triton-model-analyzer==1.58.0"]], ["triton-model-analyzer"], []),
}  # fmt: skip
NO_TORCH = {"model_analyzer"}


def env_dir(peer: str) -> Path:
    return ROOT / peer


def python_of(peer: str) -> Path:
    return env_dir(peer) / "bin" / "python"


def status(peer: str) -> dict:
    f = env_dir(peer) / "status.json"
    if not f.is_file():
        return {"ok": False, "error": f"not installed: python -m bench.peers.envs --only {peer}"}
    return json.loads(f.read_text())


def _pip(py: Path, args: list[str], log: Path) -> None:
    with log.open("a") as f:
        f.write(f"$ pip install {' '.join(args)}\n")
        f.flush()
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", *args], stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"pip install {' '.join(args)} failed: {' | '.join(tail)}")


def make(peer: str, force: bool = False) -> dict:
    """Create (or reuse) the peer's environment; returns its status."""
    d = env_dir(peer)
    if not force and (d / "status.json").is_file():
        return status(peer)
    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    steps, recorded, removed = PEERS[peer]
    log = d.parent / f"{peer}.install.log"
    log.write_text("")
    t0 = time.time()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(d)], check=True)
        py = python_of(peer)
        if peer not in NO_TORCH:
            _pip(py, [TORCH], log)
        for step in steps:
            _pip(py, step, log)
        for pkg in removed:
            subprocess.run([str(py), "-m", "pip", "uninstall", "-q", "-y", pkg], capture_output=True)
        code = (
            "import importlib.metadata as m, json; "
            f"print(json.dumps({{p: m.version(p) for p in {recorded + ([] if peer in NO_TORCH else ['torch'])!r}}}))"
        )
        versions = json.loads(subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True).stdout)
        st = {"ok": True, "error": "", "versions": versions, "install_s": round(time.time() - t0, 1)}
    except Exception as exc:  # the reason is the result
        st = {"ok": False, "error": str(exc)[-600:], "install_s": round(time.time() - t0, 1)}
    d.mkdir(parents=True, exist_ok=True)
    (d / "status.json").write_text(json.dumps(st, indent=2))
    return st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(PEERS))
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    for peer in [p for p in a.only.split(",") if p]:
        st = make(peer, a.force)
        print(f"{peer:14s} {'ok' if st['ok'] else 'FAILED'}  {st.get('versions') or st.get('error')}", flush=True)


if __name__ == "__main__":
    main()
