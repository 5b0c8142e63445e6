"""What this machine offers: libraries, accelerators, and the fingerprint that
keys device-dependent pass results (TensorRT engines)."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import platform
import subprocess
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def tensorrt_status() -> tuple[bool, str]:
    """(available, reason): TensorRT importable and an NVIDIA GPU present. The tensorrt
    backend's available() adds its Python requirements to this; its passes check it
    again when they run."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, (
            "TensorRT is not installed (no 'tensorrt' Python module); build TensorRT targets "
            "in the Docker image on an NVIDIA GPU (see README)"
        )
    gpus = nvidia_gpus()
    if not gpus:
        return False, "TensorRT is installed but no NVIDIA GPU is visible (nvidia-smi found none)"
    return True, ""


@functools.lru_cache(maxsize=1)
def nvidia_gpus() -> list[dict[str, str]]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "compute_capability": parts[1], "driver": parts[2]})
    return gpus


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


ISA_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
)


def cpu_flags() -> list[str]:
    """The instruction-set extensions that change which kernels a CPU runtime picks."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return []


@functools.lru_cache(maxsize=1)
def cpu_fingerprint() -> dict[str, Any]:
    """What a CPU latency profile depends on: the CPU model and its ISA extensions
    (not the core count: a CI runner's count changes while its CPU does not)."""
    return {"cpu": cpu_model(), "isa": cpu_flags(), "machine": platform.machine()}


@functools.lru_cache(maxsize=1)
def gpu_fingerprint() -> dict[str, Any]:
    """What a TensorRT engine depends on: TensorRT version, GPU model and compute capability."""
    gpus = nvidia_gpus()
    gpu = gpus[0] if gpus else None
    return {
        "tensorrt": _version("tensorrt") or _version("tensorrt-cu12") or _version("tensorrt-cu13"),
        "gpu": gpu["name"] if gpu else None,
        "compute_capability": gpu["compute_capability"] if gpu else None,
        "machine": platform.machine(),
    }


def doctor() -> list[tuple[str, str, str]]:
    """(component, status, detail) rows of this machine for `mscompile doctor` (the
    backends add theirs: `backends.doctor`)."""
    rows: list[tuple[str, str, str]] = [("python", "ok", platform.python_version())]
    for dist, what in (
        ("torch", "PyTorch"),
        ("onnx", "ONNX"),
        ("onnxruntime", "ONNX Runtime"),
        ("onnxruntime-gpu", "ONNX Runtime (GPU build)"),
        ("nvidia-modelopt", "ModelOpt"),
        ("polygraphy", "Polygraphy"),
        ("tritonclient", "Triton client (model config schema)"),
        ("mlflow", "MLflow"),
        ("openvino", "OpenVINO"),
        ("nncf", "NNCF (OpenVINO INT8)"),
        ("ray", "Ray (build farm --ray, Ray Serve apps)"),
    ):
        v = _version(dist)
        rows.append((what, "ok" if v else "missing", v or f"pip install {dist}"))
    try:
        import onnxruntime as ort

        rows.append(("ONNX Runtime providers", "ok", ", ".join(ort.get_available_providers())))
    except ImportError:
        pass
    try:
        import torch

        cuda = torch.cuda.is_available()
        rows.append(
            ("torch CUDA", "ok" if cuda else "missing", torch.cuda.get_device_name(0) if cuda else "no CUDA device")
        )
    except ImportError:
        pass
    gpus = nvidia_gpus()
    rows.append(
        (
            "NVIDIA GPU",
            "ok" if gpus else "missing",
            "; ".join(f"{g['name']} (compute capability {g['compute_capability']})" for g in gpus) or "none found",
        )
    )
    import shutil

    server = shutil.which("tritonserver")
    rows.append(
        (
            "tritonserver (serve-check)",
            "ok" if server else "missing",
            server or "not on PATH: give serve-check --tritonserver PATH, or --url of a running server",
        )
    )
    return rows
