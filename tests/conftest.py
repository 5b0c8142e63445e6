"""Shared fixtures: real torch models, real data, each build in its own folders."""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime.transformers.onnx_model  # noqa: F401
import pytest
import yaml
from helpers import REPO, TINY_MODEL_SRC
from perf_harness import perf_analyzer
from perf_harness import why as perf_why
from triton_harness import triton

# onnxruntime.transformers appends its own folder to sys.path on first import (its
# modules import each other as top-level modules). Imported inside a test that uses
# monkeypatch.syspath_prepend, that entry would vanish when sys.path is restored,
# and later fp16 conversions in this process fail (No module named
# 'shape_infer_helper'): import it once, before any test.


@pytest.fixture(scope="session")
def tri():
    """A real Triton server (with the stand-in backends), or a skip with the reason."""
    t = triton()
    if isinstance(t, str):
        pytest.skip(t)
    return t


@pytest.fixture(scope="session")
def pa():
    """A perf_analyzer command that runs here (perf_harness.py), or a skip with the reason."""
    cmd = perf_analyzer()
    if cmd is None:
        pytest.skip(perf_why())
    return cmd


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    """Every test gets its own cache/log folder and runs from the repository root
    (where the examples' relative paths start)."""
    home = tmp_path_factory.mktemp("mscompile-home")
    monkeypatch.setenv("MSCOMPILE_HOME", str(home))
    monkeypatch.setenv("MSCOMPILE_NO_MLFLOW", "1")  # tests/test_tracking.py turns tracking back on
    monkeypatch.chdir(REPO)
    yield


@pytest.fixture
def digits_config(tmp_path) -> dict:
    """The digits example's model.yaml as a dict, publishing into tmp_path."""
    cfg = yaml.safe_load((REPO / "examples/digits/model.yaml").read_text())
    cfg["triton"]["repository"] = str(tmp_path / "repo")
    return cfg


@pytest.fixture
def tiny_project(tmp_path, monkeypatch):
    """A tiny model module, its state_dict and validation data in tmp_path; cwd is tmp_path."""
    import torch

    (tmp_path / "tinymodels.py").write_text(TINY_MODEL_SRC)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tinymodels", None)
    import tinymodels  # noqa: F401  (the module under tmp_path)

    torch.manual_seed(0)
    model = tinymodels.Tiny()
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 4)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x, y=rng.integers(0, 3, 20))
    cfg = {
        "name": "tiny",
        "source": {"checkpoint": "tiny.pt", "factory": "tinymodels:Tiny"},
        "inputs": [
            {
                "name": "x",
                "dtype": "float32",
                "shape": [-1, 4],
                "range": {"min": [1, 4], "opt": [4, 4], "max": [16, 4]},
            }
        ],
        "outputs": [{"name": "y_hat"}],
        "export": {"exporter": "torchscript"},
        "validation": {"data": "val.npz"},
        "targets": [{"name": "fp32", "tolerance": {"max_abs": 1e-5}}],
        "triton": {"repository": "repo"},
    }
    yield tmp_path, cfg
    sys.modules.pop("tinymodels", None)


@pytest.fixture(scope="session")
def minilm_home(tmp_path_factory):
    """One state folder for the builds of the MiniLM example (tests of the xdist group
    "minilm"): the second build of the unchanged example is a cache hit, and other
    MiniLM configs share its export and graph steps."""
    return tmp_path_factory.mktemp("minilm-home")


@pytest.fixture(scope="session")
def digits_module():
    sys.path.insert(0, str(REPO))
    from examples.digits.model import DigitsNet

    return DigitsNet


FIGURES: list[str] = []


@pytest.fixture
def figures(request):
    """Lines printed at the end of the run (the safety tests' measured figures). They
    travel in the test's report, so that a run with workers (-n 2) prints them too."""
    lines: list[str] = []
    yield lines
    request.node.user_properties += [("mscompile-figure", line) for line in lines]


def pytest_runtest_logreport(report):
    if report.when == "teardown":
        FIGURES.extend(v for k, v in report.user_properties if k == "mscompile-figure")


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("mscompile figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


# server hand-off tests: real Triton / Ray / MLflow servers and perf_analyzer around
# mscompile's own code; what they check does not change with the onnx/onnxruntime pins
SERVER_FILES = {
    "test_triton.py",
    "test_rayserve.py",
    "test_farm.py",
    "test_tracking.py",
    "test_perf.py",
    "test_tune.py",
}


# tests of refusals and of crash and concurrency safety: what they check (exit codes,
# messages, nothing half-written, no poisoned cache) does not change with the
# onnx/onnxruntime pins, so CI runs them in its first leg only
ONCE_FILES = {"test_hostile.py", "test_hostile3.py", "test_cli_errors.py", "test_safety.py", "test_dataflow.py"}

# tests that run vLLM itself (minutes each): CI runs them in its second leg only
VLLM_FILES = {"test_vllm.py", "test_w8a8_architectures.py"}
# the architecture coverage set (about 5 minutes): CI runs it in its second leg only
ZOO_FILES = {"test_zoo.py"}

# With workers (-n 2, --dist loadgroup), tests of one group run on one worker, one at a
# time. Each file is a group of its own (its tests run on one worker, beside their module
# fixtures), and these files share one: the tests that
# start local Ray clusters (written for one at a time on a machine), the capacity
# measurements (perf_analyzer's figures would include one another's load), and the vLLM
# engines (several GB of memory each).
XDIST_GROUPS = {
    "test_farm.py": "ray",
    "test_rayserve.py": "ray",
    "test_perf.py": "perf",
    "test_tune.py": "perf",
    **dict.fromkeys(VLLM_FILES, "vllm"),
}


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the xdist_group marks added here
def pytest_collection_modifyitems(config, items):
    """Every test under tests/llm is marked `llm`, those of VLLM_FILES also `vllm`, every
    test of SERVER_FILES `servers`, of ZOO_FILES `zoo`, of ONCE_FILES `once`. CI's legs
    (.ci/run, noxfile.py), each on two workers: the first runs `not vllm and not zoo`, the
    second (Python 3.12 with the GPU machine's onnx/onnxruntime) runs
    `not servers and not once and (not llm or vllm)`: vLLM runs in its own environment and
    never loads either stack's onnx or onnxruntime, so the legs split it from the server
    tests; every test runs in one leg or both."""
    llm = REPO / "tests" / "llm"
    for item in items:
        if llm in item.path.parents:
            item.add_marker(pytest.mark.llm)
            if item.path.name in VLLM_FILES:
                item.add_marker(pytest.mark.vllm)
        if item.path.name in SERVER_FILES:
            item.add_marker(pytest.mark.servers)
        if item.path.name in ZOO_FILES:
            item.add_marker(pytest.mark.zoo)
        if item.path.name in ONCE_FILES:
            item.add_marker(pytest.mark.once)
        if item.path.name in XDIST_GROUPS:
            group = XDIST_GROUPS[item.path.name]
        elif item.path.name == "test_build_minilm.py" or "examples/minilm/" in item.nodeid:
            group = "minilm"  # they share minilm_home
        else:
            group = str(item.path.relative_to(REPO / "tests"))
        item.add_marker(pytest.mark.xdist_group(group))
