"""mscompile: PyTorch checkpoints to accuracy-gated Triton model repositories.

`mscompile.build(config)` and `mscompile.optimize(module, example_inputs)` are the
Python API (mscompile.api); `mscompile build model.yaml` is the command line."""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "build", "optimize"]


def __getattr__(name: str) -> Any:
    # the API loads the build machinery on first use, not when the package is imported
    if name in ("build", "optimize"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'mscompile' has no attribute {name!r}")
