"""Command line: click commands (commands.py) that parse options, call the layer below
and hand what it returns to the renderers (render.py); app.py maps errors to exit codes.

Exit codes: 0 success, 1 build failure, 2 configuration/usage error, 3 accuracy gate
failed. User errors print one clear message (no traceback unless --debug)."""

from __future__ import annotations

from .commands import main
from .render import print_summary

__all__ = ["main", "print_summary"]
