"""`python -m mscompile.cli`: the same as the `mscompile` command."""

from .commands import main

main()
