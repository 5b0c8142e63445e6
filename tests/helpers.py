"""Helpers shared by the tests (importable as `helpers`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import yaml
from provision import once

REPO = Path(__file__).resolve().parents[1]


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cli_argv(*args: str) -> list[str]:
    """The command line of the real console entry point (for Popen and kills)."""
    return [sys.executable, "-m", "mscompile.cli", *args]


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """The real console entry point in a child process (exit codes included); `env` adds
    to this process's environment. In-process tests use click's runner (tests/cli/)."""
    return subprocess.run(
        cli_argv(*args),
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def tree(path: Path) -> list[str]:
    if not path.exists():
        return []
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


TINY_MODEL_SRC = textwrap.dedent(
    '''
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self, hidden: int = 8):
            super().__init__()
            self.fc1 = nn.Linear(4, hidden)
            self.fc2 = nn.Linear(hidden, 3)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    class Branchy(nn.Module):
        """Data-dependent control flow: torch.export cannot capture it, tracing can."""
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x)
            return self.fc(-x)
    '''
)


def copy_example(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(REPO / "examples" / name, dst)
    return dst


def make_driver(root: Path, force: bool = False, plan=None):
    from mscompile.cache import Cache
    from mscompile.instruments import Instruments
    from mscompile.pipeline import Driver

    return Driver(
        Cache(root / "cache"),
        Instruments(root / "events.jsonl", quiet=True),
        force=force,
        log_dir=root / "logs",
        datasets=plan.datasets if plan is not None else None,
    )


def tiny_steps(cfg_dict: dict):
    """The real shared pipeline (load, export, optimize) for a config dict."""
    from mscompile.builder import assemble
    from mscompile.tasks import parse_config

    cfg = parse_config(cfg_dict)
    return cfg, assemble(cfg)


def make_tiny_project(root: Path, seeds: tuple[int, ...] = (0,)) -> dict:
    """A tiny model project on disk for subprocess builds: tinymodels.py, one
    state_dict per seed (tiny_<seed>.pt), val.npz; returns the model.yaml dict."""
    import numpy as np
    import torch

    root.mkdir(parents=True, exist_ok=True)
    (root / "tinymodels.py").write_text(TINY_MODEL_SRC)
    ns: dict = {}
    exec(compile(TINY_MODEL_SRC, "tinymodels", "exec"), ns)  # noqa: S102 - our own test source
    for seed in seeds:
        torch.manual_seed(seed)
        torch.save(ns["Tiny"]().state_dict(), root / f"tiny_{seed}.pt")
    rng = np.random.default_rng(0)
    np.savez(root / "val.npz", x=rng.standard_normal((16, 4)).astype(np.float32))
    return {
        "name": "tiny",
        "source": {"checkpoint": f"tiny_{seeds[0]}.pt", "factory": "tinymodels:Tiny"},
        "inputs": [{"name": "x", "shape": [-1, 4], "range": {"min": [1, 4], "opt": [4, 4], "max": [16, 4]}}],
        "outputs": [{"name": "y_hat"}],
        "export": {"exporter": "torchscript"},
        "validation": {"data": "val.npz"},
        "targets": [{"name": "fp32", "tolerance": {"max_abs": 1e-4}}, {"name": "fp16", "precision": "fp16"}],
        "triton": {"repository": "repo", "version_policy": {"latest": 2}},
    }


def check_repository(repo: Path) -> list[str]:
    """Problems in a Triton repository: version folders whose files do not match
    their manifest, unparsable configs. Empty when every version is whole."""
    import json as _json

    from mscompile.artifacts import sha256_file
    from mscompile.tritonrepo.config import parse

    problems = []
    for model in sorted(p for p in repo.iterdir() if p.is_dir()) if repo.is_dir() else []:
        cfg = model / "config.pbtxt"
        if cfg.exists():
            try:
                parse(cfg.read_text())
            except Exception as exc:  # noqa: BLE001 - report any parse failure
                problems.append(f"{cfg}: {exc}")
        for v in model.iterdir():
            if not (v.is_dir() and v.name.isdigit()):
                continue
            man = v / "build_manifest.json"
            if not man.is_file():
                problems.append(f"{v}: no build_manifest.json (partial version)")
                continue
            files = _json.loads(man.read_text())["files"]
            present = {f.name for f in v.iterdir()} - {"build_manifest.json"}
            if present != set(files):
                problems.append(f"{v}: files {sorted(present)} != manifest {sorted(files)}")
            for name, digest in files.items():
                if (v / name).is_file() and sha256_file(v / name) != digest:
                    problems.append(f"{v / name}: digest differs from its manifest")
    return problems


def check_cache(cache: Path) -> tuple[int, list[str]]:
    """(complete entries, poisoned entries): an entry with a manifest must verify."""
    import json as _json

    from mscompile.artifacts import sha256_path

    good, bad = 0, []
    for entry in cache.iterdir() if cache.is_dir() else []:
        man = entry / "manifest.json"
        if entry.name == "tmp" or not man.exists():
            continue
        art = _json.loads(man.read_text())["artifact"]
        p = entry / art["path"]
        if p.exists() and sha256_path(p) == art["digest"]:
            good += 1
        else:
            bad.append(entry.name)
    return good, bad


def hidden_modules_env(root: Path, modules: list[str]) -> dict:
    """Environment for a child process in which `modules` cannot be imported, as on a
    machine without them (a sitecustomize on PYTHONPATH installs an import blocker)."""
    d = root / "hide-modules"
    d.mkdir(exist_ok=True)
    (d / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import importlib.abc
            import sys

            HIDDEN = {sorted(modules)!r}

            class _Hide(importlib.abc.MetaPathFinder):
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] in HIDDEN:
                        raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)", name=name)
                    return None

            sys.meta_path.insert(0, _Hide())
            """
        )
    )
    return {"PYTHONPATH": os.pathsep.join([str(d), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def requires(*modules: str):
    """Skip (with the reason) where an optional package is absent."""
    import importlib.util

    import pytest

    gone = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(gone), reason=f"needs {', '.join(gone)} (an optional extra: see README)")


def message_fragments(source: str) -> list[list[str]]:
    """The literal pieces of every message a problems() source appends (`out.append(...)`)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(textwrap.dedent(source))):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "out.append" and node.args:
            parts = [
                n.value for n in ast.walk(node.args[0]) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            ]
            pieces = [p.strip() for p in parts if len(p.strip()) >= 10]
            if pieces:
                found.append(pieces)
    return found


def backend_sources(backend_cls: type) -> list[str]:
    """The source of a backend class and of its module's functions (its problems' helpers)."""
    import inspect

    module = inspect.getmodule(backend_cls)
    return [inspect.getsource(backend_cls)] + [
        inspect.getsource(f) for f in vars(module).values() if inspect.isfunction(f) and f.__module__ == module.__name__
    ]


def uncovered(sources: list[str], cases: list) -> list[str]:
    """Messages appended in `sources` that no case's (change, message) produces: the first
    literal piece of each."""
    import difflib

    def shared(a: str, b: str) -> int:
        return difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match().size

    expected = [m for _, m in cases]
    return [
        pieces[0]
        for src in sources
        for pieces in message_fragments(src)
        if not any(shared(p, m) >= min(20, len(p)) for p in pieces for m in expected)
    ]


VISION_PINS = ("torchvision==0.29.1", "timm==1.0.31")


def vision_libraries() -> Path | None:
    """A folder to put on the path where torchvision and timm import beside this torch;
    None where they import already. The registry's torchvision wheels are CUDA builds
    whose C++ ops do not load beside torch 2.13 CPU (../shared/FIELD-NOTES.md): the
    wheels are unpacked (cached in $MSCOMPILE_TEST_CACHE) without the compiled ops and
    without the import of their registrations. The model code is torchvision's and
    timm's own; what needs the C++ ops (nms, roi_align) is not usable there."""
    import importlib.util

    if importlib.util.find_spec("torchvision") and importlib.util.find_spec("timm"):
        probe = subprocess.run([sys.executable, "-c", "import torchvision, timm"], capture_output=True)
        if probe.returncode == 0:
            return None
    cache = Path(os.environ.get("MSCOMPILE_TEST_CACHE", Path.home() / ".cache" / "mscompile-tests"))
    root = cache / ("vision-" + "-".join(p.replace("==", "") for p in VISION_PINS))
    once(root, lambda: (root / ".complete").is_file(), lambda: _unpack_vision(cache, root))
    return root


def _unpack_vision(cache: Path, root: Path) -> None:
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), *VISION_PINS],
        check=True,
        capture_output=True,
    )
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for pin in VISION_PINS:
        name, ver = pin.split("==")
        (whl,) = wheels.glob(f"{name}-{ver}-*.whl")
        with zipfile.ZipFile(whl) as z:
            z.extractall(tmp)
    for so in (tmp / "torchvision").glob("*.so"):
        so.unlink()
    init = tmp / "torchvision/__init__.py"
    text = init.read_text()
    for line in ("    _autograd_registrations,\n", "    _meta_registrations,\n"):
        assert line in text, f"torchvision's __init__ changed: {line.strip()}"
        text = text.replace(line, "")
    init.write_text(text)
    (tmp / ".complete").write_text("\n".join(VISION_PINS) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)


TOKEN_MODEL_SRC = '''
import torch


class Tokens(torch.nn.Module):
    """Embeds tokens; padded positions get a value fp16 cannot hold (its graph says 65504)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 8)
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, input_ids, attention_mask):
        h = torch.tanh(self.proj(self.emb(input_ids)))
        keep = attention_mask.unsqueeze(-1) > 0
        return torch.where(keep, h, torch.full_like(h, 1.0e6)), h.mean(dim=1)
'''


def make_token_project(tmp_path: Path) -> dict:
    """A token model on disk (tokmodel.py, tok.pt, val.npz of 12 texts of 3..9 tokens
    padded to 10) whose padded positions of last_hidden_state hold 1e6, which an fp16
    graph cannot hold; returns its model.yaml dict (one fp16 target)."""
    import numpy as np
    import torch

    (tmp_path / "tokmodel.py").write_text(TOKEN_MODEL_SRC)
    ns: dict = {}
    exec(compile(TOKEN_MODEL_SRC, "tokmodel", "exec"), ns)  # noqa: S102 - our own test source
    torch.manual_seed(0)
    torch.save(ns["Tokens"]().state_dict(), tmp_path / "tok.pt")
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 20, size=(12, 10)).astype(np.int64)
    mask = np.ones_like(ids)
    for i in range(12):
        mask[i, 3 + i % 7 :] = 0  # texts of 3..9 tokens padded to 10
    ids[mask == 0] = 0
    np.savez(tmp_path / "val.npz", input_ids=ids, attention_mask=mask)
    rng_dims = {"min": [1, 1], "opt": [4, 10], "max": [16, 10]}
    return {
        "name": "tok",
        "source": {"checkpoint": "tok.pt", "factory": "tokmodel:Tokens"},
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": [-1, "sequence"], "range": rng_dims},
            {"name": "attention_mask", "dtype": "int64", "shape": [-1, "sequence"], "range": rng_dims},
        ],
        "outputs": [{"name": "last_hidden_state"}, {"name": "pooled"}],
        "export": {"exporter": "torchscript"},
        "validation": {"data": "val.npz"},
        "targets": [{"name": "fp16", "precision": "fp16", "tolerance": {"max_rel": 0.02}}],
        "triton": {"repository": "repo"},
        "profile": {"enabled": False},
    }
