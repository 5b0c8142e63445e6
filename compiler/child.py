"""Run a conversion in a child process (as Triton Model Navigator does).

Some converters patch other libraries in place (ModelOpt patches ONNX Runtime's
quantization classes, after which ONNX Runtime's own static quantization fails
in that process), and a crash in native code should fail a pass, not the build.
`run_child("pkg.module:function", {...}, log)` calls the function with JSON
keyword arguments in `python -m mscompile.child`; its output goes to the log."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def module_argv(module: str, *args: str) -> list[str]:
    """`python -P -m module args` under this Python: -P keeps the working directory
    off sys.path, so a `mlflow.py` or `json.py` left there is never imported."""
    return [sys.executable, "-P", "-m", module, *args]


def safe_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for any Python child (ours or a tool's): PYTHONSAFEPATH=1 keeps
    the working directory (for -m/-c) and a script's own folder off its sys.path."""
    return {**(os.environ if env is None else env), "PYTHONSAFEPATH": "1"}


def run_child(target: str, kwargs: dict[str, Any], log_path: Path, timeout: float = 3600) -> None:
    spec = log_path.with_suffix(".child.json")
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({"target": target, "kwargs": kwargs}))
    with open(log_path, "ab") as log:
        proc = subprocess.run(
            module_argv("mscompile.child", str(spec)),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            env=safe_env(),
        )
    if proc.returncode != 0:
        lines = log_path.read_text(errors="replace").strip().splitlines()
        last = next((ln for ln in reversed(lines) if ln.strip()), "")
        raise RuntimeError(f"{target} failed in a child process (exit {proc.returncode}): {last}; log: {log_path}")


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    module, _, func = spec["target"].partition(":")
    getattr(importlib.import_module(module), func)(**spec["kwargs"])


if __name__ == "__main__":
    main()
