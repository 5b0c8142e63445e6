"""The command group, and where errors become exit codes: an mscompile error prints its
problems and exits with its code; user code that exits, an interrupt, or anything else
never exits 0. Under --json stdout holds only the JSON."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..errors import EXIT_FAILURE, MscompileError, UserCodeExit

CONFIG_ARG = click.argument("config", type=click.Path(path_type=Path))

CACHE_DIR_OPT = click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The cache the build used (its state folder is beside it), as for build.",
)


def server_options(f: Any) -> Any:
    """Where a serve-check runs: a running server (--url/--grpc-url) or one started here."""
    for opt in reversed(
        [
            click.option("--url", default=None, help="HTTP address of a running Triton server (host:port)."),
            click.option("--grpc-url", default=None, help="gRPC address of a running Triton server (host:port)."),
            click.option(
                "--tritonserver",
                default=None,
                help="Start this tritonserver binary on loopback for the check (default: tritonserver on PATH).",
            ),
            click.option(
                "--tritonserver-arg",
                "tritonserver_args",
                multiple=True,
                help="Extra argument for the started server (repeat), e.g. --tritonserver-arg=--backend-directory=DIR.",
            ),
            click.option("--protocol", type=click.Choice(["both", "grpc", "http"]), default="both", show_default=True),
            click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True),
            click.option(
                "--load-timeout",
                type=click.FloatRange(1, 3600),
                default=None,
                help="Seconds the server may take to load the model or start: Triton 120, vLLM and Ray Serve 300 "
                "(they start a server process) unless given.",
            ),
            click.option("--model", "model_name", default=None, help="Triton model name (default: the config's name)."),
        ]
    ):
        f = opt(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mscompile")
@click.option("--debug", is_flag=True, help="Show tracebacks for every error.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Compile PyTorch checkpoints into accuracy-checked Triton model repositories."""
    ctx.obj = {"debug": debug}


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def progress(silent: bool, indent: str = "  ") -> Callable[[str], None]:
    """Where long work says what it does: stderr (stdout is the result's), or nowhere."""
    return (lambda _m: None) if silent else (lambda m: click.echo(f"{indent}{m}", err=True))


def fail(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc)
    if isinstance(exc, MscompileError):
        lines = exc.problems if getattr(exc, "problems", None) else [str(exc)]
        for line in lines:
            click.echo(f"error: {line}", err=True)
        sys.exit(exc.exit_code)
    click.echo(
        f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
        err=True,
    )
    sys.exit(EXIT_FAILURE)


def _where(tb: Any) -> str:
    """file:line of the innermost frame: where user code called sys.exit()."""
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return f" at {last.tb_frame.f_code.co_filename}:{last.tb_lineno}" if last is not None else ""


def run(ctx: click.Context, fn: Callable[[], Any]) -> Any:
    """Run a command's work; every way it can end becomes an exit code here."""
    try:
        return fn()
    except click.exceptions.Exit:
        raise
    except SystemExit as exc:
        # mscompile exits only in fail(), outside fn(): this exit came from the model's
        # code (a factory, tokenizer, generator or forward calling sys.exit)
        fail(
            UserCodeExit(
                f"the model's code called sys.exit({exc.code!r}){_where(exc.__traceback__)}; "
                "mscompile stopped there and published nothing (a model module must not exit the process)"
            ),
            ctx.obj["debug"],
        )
    except KeyboardInterrupt:
        click.echo("error: interrupted; nothing was published (finished passes stay cached)", err=True)
        sys.exit(130)
    except Exception as exc:  # the CLI is where errors become exit codes
        fail(exc, ctx.obj["debug"])
    except BaseException as exc:  # e.g. GeneratorExit raised by user code: never exit 0
        fail(
            RuntimeError(f"{type(exc).__name__} raised by the model's code{_where(exc.__traceback__)}"),
            ctx.obj["debug"],
        )


@contextlib.contextmanager
def json_stdout(enabled: bool) -> Iterator[Callable[[str], Any]]:
    """Under --json, stdout holds only the JSON: while the work runs, file
    descriptor 1 points at stderr, so prints of model code and native libraries
    land there; yields an echo that writes to the real stdout."""
    if not enabled:
        yield click.echo
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield lambda text: os.write(saved, (text + "\n").encode())
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
