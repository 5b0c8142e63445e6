"""The layering of docs/architecture.md holds: import-linter's contracts (pyproject.toml)
pass on the package, fail when a lower layer reaches up, cover every module, and list
the same layers the page shows.

import-linter's graph finds a package by its folder, and setuptools maps
`mscompile.passes` to passes/ beside compiler/: the tests copy both into one tree."""

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
from helpers import REPO

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("importlinter") is None, reason="import-linter is not installed (pip install -e '.[dev]')"
)


def _tree(tmp_path):
    root = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "compiler", root / "mscompile", ignore=ignore)
    shutil.copytree(REPO / "passes", root / "mscompile" / "passes", ignore=ignore)
    return root


def _lint(root):
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache", str(REPO / "pyproject.toml")],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _layers():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in cfg["contracts"] if c["type"] == "layers"]
    return [[m.strip() for m in re.split(r"[:|]", layer)] for layer in contract["layers"]]


def test_the_import_layers_hold(tmp_path):
    r = _lint(_tree(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_a_lower_layer_reaching_up_breaks_the_contract(tmp_path):
    root = _tree(tmp_path)
    errors = root / "mscompile" / "errors.py"  # the bottom layer, importing the CLI inside a function
    errors.write_text(errors.read_text() + "\n\ndef _up():\n    from .cli import main\n\n    return main\n")
    r = _lint(root)
    assert r.returncode != 0
    assert "layers of docs/architecture.md BROKEN" in r.stdout
    assert "mscompile.errors -> mscompile.cli" in r.stdout


def test_every_module_is_in_one_layer():
    """Every module of compiler/ (passes/ is one layer); a package whose __init__ imports
    nothing (llm/, whose modules sit in several layers) needs no layer of its own."""
    layers = [m for layer in _layers() for m in layer]
    modules = set()
    for p in (REPO / "compiler").rglob("*.py"):
        parts = p.relative_to(REPO / "compiler").with_suffix("").parts
        if parts[-1] == "__init__":
            if "import" not in p.read_text() or len(parts) == 1:  # the root: above every layer
                continue
            parts = parts[:-1]
        modules.add(".".join(("mscompile", *parts)))
    missing = [m for m in sorted(modules) if not any(m == layer or m.startswith(layer + ".") for layer in layers)]
    assert not missing, f"modules in no layer of pyproject.toml's contract: {missing}"


def test_the_architecture_page_shows_the_contract_layers():
    page = (REPO / "docs/architecture.md").read_text()
    section = page.split("## Layers", 1)[1].split("\n## ", 1)[0]
    items = re.split(r"\n\d+\. ", section)[1:]
    shown = [re.findall(r"`(mscompile(?:\.\w+)*)`", item) for item in items]
    assert shown == _layers()


def _imports_inside_functions(source: str) -> list[str]:
    import ast

    tree = ast.parse(source)
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for n in ast.walk(fn):
                if isinstance(n, ast.ImportFrom) and (n.level > 0 or (n.module or "").startswith("mscompile")):
                    found.append(f"line {n.lineno}: {ast.unparse(n)}")
    return found


def test_project_imports_sit_at_module_level():
    """With the layers acyclic, an import inside a function only hides a dependency:
    functions import heavy third-party libraries (torch, onnx, runtimes), never the project."""
    found = {
        str(p.relative_to(REPO)): hits
        for root in ("compiler", "passes")
        for p in sorted((REPO / root).rglob("*.py"))
        if (hits := _imports_inside_functions(p.read_text()))
    }
    # the one exception, named in the contract's ignore_imports: `import mscompile` stays light
    # (the tool workers import it under other Pythons); mscompile.build/optimize load the API
    assert found.pop("compiler/__init__.py", None) == ["line 16: from . import api"]
    assert not found, found
    assert _imports_inside_functions("def f():\n    from .build import build\n") == ["line 2: from .build import build"]
