"""Helpers shared by the tests (importable as `helpers`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real console entry point in a child process (exit codes included)."""
    return subprocess.run(
        [sys.executable, "-m", "mscompile.cli", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
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


def make_driver(root: Path, force: bool = False):
    from mscompile.cache import Cache
    from mscompile.instruments import Instruments
    from mscompile.pipeline import Driver

    return Driver(
        Cache(root / "cache"),
        Instruments(root / "events.jsonl", quiet=True),
        force=force,
        log_dir=root / "logs",
    )


def tiny_steps(cfg_dict: dict):
    """The real shared pipeline (load, export, optimize) for a config dict."""
    from mscompile.build import assemble
    from mscompile.config import parse_config

    cfg = parse_config(cfg_dict)
    return cfg, assemble(cfg)
