"""Command line. Maps error types to exit codes; holds no build logic.

Exit codes: 0 success, 1 build failure, 2 configuration/usage error,
3 accuracy gate failed. User errors print one clear message (no traceback
unless --debug)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import EXIT_FAILURE, MscompileError
from .tasks import task_of

CONFIG_ARG = click.argument("config", type=click.Path(path_type=Path))


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _fmt_parity(metrics: dict[str, Any]) -> str:
    parts = []
    if "max_abs" in metrics:
        parts.append(f"max_abs={metrics['max_abs']:.2e}")
    if "cosine_min" in metrics:
        parts.append(f"cos_min={metrics['cosine_min']:.6f}")
    if "cosine" in metrics and "accuracy" not in metrics:
        parts.append(f"cos_mean={metrics['cosine']:.4f}")
    if "accuracy" in metrics:
        parts.append(f"acc={metrics['accuracy']:.2f}% (ref {metrics['reference_accuracy']:.2f}%)")
    if "perplexity" in metrics:  # an LLM variant
        parts.append(f"ppl={metrics['perplexity']:.3f} ({metrics['perplexity_increase']:+.2f}%)")
        parts.append(f"greedy={metrics['token_agreement']:.2f} first_div={metrics['first_divergence']:.1f}")
    return " ".join(parts) or "-"


def _fmt_speed(v: Any) -> str:
    """The variant's profile per batch, in the figure its backend measures (p50 ms, tok/s)."""
    from .backends import get

    if not v.profile:
        return "-"
    speed = get(v.backend).speed
    return " ".join(f"b{r['batch']}:{speed.fmt(r)}" for r in sorted(v.profile["batches"], key=lambda r: r["batch"]))


def print_summary(result: Any) -> None:
    from .build import passes_ran

    rows = [("variant", "backend", "precision", "size", "gated on", "parity vs PyTorch", "speed", "status", "cached")]
    for v in result.variants:
        j = v.to_json()
        rows.append(
            (
                j["name"],
                j["backend"],
                j["precision"],
                _fmt_size(j["size_bytes"]),
                "+".join(v.gated_on) or "-",
                _fmt_parity(j["metrics"]),
                _fmt_speed(v),
                j["status"],
                "yes" if j["cached"] else "no",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for v in result.variants:
        if v.status != "OK" and v.reason:
            click.echo(f"{v.target}: {v.status}: {v.reason}")
        elif v.note:
            click.echo(f"{v.target}: {v.note}")
    ran, cached = passes_ran(result.records)
    click.echo(f"passes: {ran} ran, {cached} from cache" + ("  (no pass ran)" if ran == 0 else ""))
    for p in result.published:
        state = "unchanged, latest version kept" if p.reused else "new version"
        click.echo(f"published {p.model} version {p.version} ({state}): {p.path}")
        if p.pruned:
            click.echo(f"retention: removed {p.model} version(s) {', '.join(map(str, p.pruned))}")
    if result.report_path:
        click.echo(f"report: {result.report_path}")
    click.echo(f"done in {result.seconds:.1f}s")


def _track(
    settings: Any,
    cfg: Any,
    config: Path,
    result: Any,
    error: BaseException | None,
    started: float,
    state: Path,
    sync: bool,
) -> dict[str, Any] | None:
    """Record the build in MLflow; a tracking failure never hides the build's own outcome."""
    from .tracking import flush, make_record, submit

    try:
        record = make_record(settings, cfg, config, result, error, started)
        if sync:
            flush(state, warn=lambda m: click.echo(f"warning: {m}", err=True))
        out = submit(record, state, sync)
        return {"tracking_uri": settings.uri, "experiment": settings.experiment, **out}
    except Exception as exc:  # the build is done; say what went wrong with its record
        click.echo(f"warning: could not record the build in MLflow: {type(exc).__name__}: {exc}", err=True)
        return None


def _fail(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc)
    if isinstance(exc, MscompileError):
        problems = getattr(exc, "problems", None)
        lines = problems if problems else [str(exc)]
        for line in lines:
            click.echo(f"error: {line}", err=True)
        sys.exit(exc.exit_code)
    click.echo(
        f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
        err=True,
    )
    sys.exit(EXIT_FAILURE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mscompile")
@click.option("--debug", is_flag=True, help="Show tracebacks for every error.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Compile PyTorch checkpoints into accuracy-checked Triton model repositories."""
    ctx.obj = {"debug": debug}


def _where(tb: Any) -> str:
    """file:line of the innermost frame: where user code called sys.exit()."""
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return f" at {last.tb_frame.f_code.co_filename}:{last.tb_lineno}" if last is not None else ""


def _run(ctx: click.Context, fn: Any) -> Any:
    try:
        return fn()
    except click.exceptions.Exit:
        raise
    except SystemExit as exc:
        # mscompile exits only in _fail, outside fn(): this exit came from the model's
        # code (a factory, tokenizer, generator or forward calling sys.exit)
        from .errors import UserCodeExit

        _fail(
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
        _fail(exc, ctx.obj["debug"])
    except BaseException as exc:  # e.g. GeneratorExit raised by user code: never exit 0
        _fail(
            RuntimeError(f"{type(exc).__name__} raised by the model's code{_where(exc.__traceback__)}"),
            ctx.obj["debug"],
        )


@contextlib.contextmanager
def _json_stdout(enabled: bool):
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


def _server_opts(f: Any) -> Any:
    """Where the check runs: a running server (--url/--grpc-url) or one started here."""
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
            click.option("--load-timeout", type=click.FloatRange(1, 3600), default=120.0, show_default=True),
            click.option("--model", "model_name", default=None, help="Triton model name (default: the config's name)."),
        ]
    ):
        f = opt(f)
    return f


@main.command()
@click.argument("configs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="CONFIG...")
@click.option("--force", is_flag=True, help="Re-run every pass, ignoring cached results.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS|auto]",
    help="Build the targets as tasks on a Ray cluster: ADDRESS joins it, auto the one this machine "
    "belongs to, nothing starts a local one. The cache folder must be shared by its nodes.",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Cache location (default .mscompile/cache, or $MSCOMPILE_HOME/cache).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
@click.option(
    "--require-all-targets", is_flag=True, help="Fail (exit 1) when a target is SKIPPED, e.g. TensorRT absent."
)
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking URI (default: model.yaml, $MLFLOW_TRACKING_URI, .mscompile/mlflow.db).",
)
@click.option(
    "--experiment", default=None, help="MLflow experiment (default: model.yaml mlflow.experiment, mscompile/<name>)."
)
@click.option(
    "--no-mlflow",
    is_flag=True,
    envvar="MSCOMPILE_NO_MLFLOW",
    help="Do not record the build in MLflow ($MSCOMPILE_NO_MLFLOW=1 too).",
)
@click.option("--mlflow-optional", is_flag=True, help="Warn and build anyway when the tracking store is unreachable.")
@click.option("--mlflow-sync", is_flag=True, help="Log to MLflow before exiting (default when $CI is set).")
@click.option(
    "--serve-check",
    "serve_check",
    is_flag=True,
    help="After publishing, run serve-check (a tritonserver on loopback, or --url/--grpc-url).",
)
@_server_opts
@click.pass_context
def build(
    ctx: click.Context,
    configs: tuple[Path, ...],
    force: bool,
    as_json: bool,
    ray_address: str | None,
    cache_dir: Path | None,
    quiet: bool,
    require_all_targets: bool,
    tracking_uri: str | None,
    experiment: str | None,
    no_mlflow: bool,
    mlflow_optional: bool,
    mlflow_sync: bool,
    serve_check: bool,
    **server: Any,
) -> None:
    """Build every target of each CONFIG and publish the deployed variant to the Triton repository.
    The build is recorded as an MLflow run unless --no-mlflow. Several CONFIGs build one
    after another, or, with --ray, as one farm."""
    from .build import BuildOptions
    from .config import load_config
    from .errors import AccuracyGateError, ConfigError, TargetSkippedError

    if len(configs) > 1 or ray_address is not None:
        if serve_check:
            _run(ctx, _raise(ConfigError("--serve-check: check one model at a time (mscompile serve-check CONFIG)")))
        _run(
            ctx,
            lambda: _build_many(
                ctx,
                list(configs),
                force,
                as_json,
                ray_address,
                cache_dir,
                quiet,
                require_all_targets,
                None if no_mlflow else (tracking_uri, experiment, mlflow_optional, mlflow_sync),
            ),
        )
        return
    config = configs[0]

    def go() -> None:
        cfg = load_config(config)
        opts = BuildOptions(
            cache_dir=cache_dir.resolve() if cache_dir else None,
            force=force,
            quiet=quiet or as_json,
            require_all_targets=require_all_targets,
        )
        state = opts.state.root
        settings = None if no_mlflow else _tracking(cfg, state, tracking_uri, experiment, mlflow_optional)
        sync = mlflow_sync or bool(os.environ.get("CI"))
        started = time.time()
        result = None
        builder = _builder(cfg)
        with _json_stdout(as_json) as emit:
            try:
                result = builder(cfg, config, opts)
            except BaseException as exc:
                res = exc.result if isinstance(exc, MscompileError) else None
                if settings is not None and isinstance(exc, MscompileError):
                    _track(settings, cfg, config, res, exc, started, state, sync)
                if isinstance(exc, (AccuracyGateError, TargetSkippedError)) and res is not None:
                    if as_json:
                        emit(json.dumps(dict(res.to_json(), error=str(exc)), indent=2))
                    else:
                        print_summary(res)
                raise
            tracked = _track(settings, cfg, config, result, None, started, state, sync) if settings else None
            checked = None
            if serve_check:
                from .handoff import summary_lines

                say = (lambda m: None) if as_json else (lambda m: click.echo(f"  {m}", err=True))
                try:
                    checked = task_of(cfg).serve_check(cfg, opts.state, None, say, server)
                except MscompileError as exc:
                    if as_json:
                        emit(
                            json.dumps(
                                dict(result.to_json(), serve_check=exc.summary, error=str(exc)),
                                indent=2,
                                default=str,
                            )
                        )
                    else:
                        print_summary(result)
                        for line in summary_lines(exc.summary or {"model": cfg.name, "version": "?"}):
                            click.echo(line)
                    raise
        if as_json:
            out = result.to_json()
            if tracked is not None:
                out["mlflow"] = tracked
            if checked is not None:
                out["serve_check"] = checked
            click.echo(json.dumps(out, indent=2, default=str))
        else:
            print_summary(result)
            if tracked is not None:
                click.echo(_mlflow_line(tracked))
            if checked is not None:
                from .handoff import summary_lines

                for line in summary_lines(checked):
                    click.echo(line)
                click.echo("serve-check: OK, the server answers within the gate")

    _run(ctx, go)


def _raise(exc: Exception) -> Any:
    def go() -> None:
        raise exc

    return go


def _builder(cfg: Any) -> Any:
    """The build of the config's task."""
    return task_of(cfg).build


def _tracking(cfg: Any, state: Path, uri: str | None, experiment: str | None, optional: bool) -> Any:
    """MLflow settings for the model, its store checked reachable before any work; None
    when unreachable and --mlflow-optional (said)."""
    from .tracking import TrackingError, preflight, resolve

    settings = resolve(cfg, state, uri, experiment)
    try:
        preflight(settings)
    except TrackingError as exc:
        if not optional:
            raise
        click.echo(f"warning: {exc}; building without tracking (--mlflow-optional)", err=True)
        return None
    return settings


def _mlflow_line(tracked: dict[str, Any]) -> str:
    how = f"run {tracked['run_id']}" if tracked["run_id"] else "recorded in the background"
    return f"mlflow: {how}, experiment {tracked['experiment']!r} ({tracked['tracking_uri']})"


def _build_many(
    ctx: click.Context,
    configs: list[Path],
    force: bool,
    as_json: bool,
    ray_address: str | None,
    cache_dir: Path | None,
    quiet: bool,
    require_all_targets: bool,
    mlflow: tuple[str | None, str | None, bool, bool] | None,
) -> None:
    """Several models, or a farm: every config is checked first (exit 2 before any work);
    with --ray the shared steps run here, the targets on the cluster; then each model is
    built (replayed from the cache) and published here. One summary; the exit code is the
    worst of the models' (2, 1, 3, 0)."""
    from .build import BuildOptions
    from .config import load_config
    from .errors import ConfigError

    loaded = [(load_config(c), c) for c in configs]
    names = [cfg.name for cfg, _ in loaded]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(
            f"name: {', '.join(dup)} is the name of more than one of the given configs; names must differ"
        )
    base = BuildOptions(cache_dir=cache_dir.resolve() if cache_dir else None, force=force, quiet=quiet or as_json)
    say = (lambda m: None) if (quiet or as_json) else (lambda m: click.echo(m, err=True))
    tracking: dict[str, Any] = {}
    if mlflow is not None:  # every store is reachable before any work, as for one model
        uri, experiment, optional, _ = mlflow
        tracking = {cfg.name: _tracking(cfg, base.state.root, uri, experiment, optional) for cfg, _ in loaded}
    results: dict = {}
    farm = None
    with _json_stdout(as_json) as emit:
        if ray_address is not None:
            from .farm import Farm, run_shared

            for cfg, path in loaded:
                run_shared(cfg, path, base, say)
            farm = Farm(ray_address, base.state.cache, say)
            results = farm.run(loaded, force)
        from .farm import merge

        summaries, codes = [], []
        for cfg, path in loaded:
            remote = {target: merge(rs) for (p, target), rs in results.items() if p == path} if farm else None
            opts = BuildOptions(
                cache_dir=base.cache_dir,
                force=force and farm is None,  # the farm forced its tasks; here they replay
                quiet=base.quiet,
                require_all_targets=require_all_targets,
                farm=remote,
            )
            try:
                started = time.time()
                result = _builder(cfg)(cfg, path, opts)
                settings = tracking.get(cfg.name)
                tracked = None
                if settings is not None:
                    sync = mlflow[3] or bool(os.environ.get("CI"))  # type: ignore[index]
                    tracked = _track(settings, cfg, path, result, None, started, base.state.root, sync)
                out = result.to_json()
                if tracked is not None:
                    out["mlflow"] = tracked
                summaries.append(out)
                codes.append(0)
                if not as_json:
                    print_summary(result)
                    if tracked is not None:
                        click.echo(_mlflow_line(tracked))
            except MscompileError as exc:
                res = exc.result
                summaries.append(dict(res.to_json() if res else {"model": cfg.name}, error=str(exc)))
                codes.append(exc.exit_code)
                if not as_json:
                    if res is not None:
                        print_summary(res)
                    click.echo(f"error: {cfg.name}: {exc}", err=True)
        code = next((c for c in (2, 1, 3) if c in codes), 0)
        if as_json:
            emit(
                json.dumps(
                    {"models": summaries, "farm": farm.report.to_json() if farm else None, "exit_code": code},
                    indent=2,
                    default=str,
                )
            )
        elif farm is not None:
            c = farm.report.counts()
            click.echo(
                f"farm: {c['tasks']} task(s) in {farm.report.seconds:.1f}s: {c['done']} done ({c['cached']} all from "
                f"cache), {c['skipped']} skipped, {c['failed']} failed, {c['retried']} retried after a lost worker"
            )
    if code:
        ctx.exit(code)


@main.command()
@CONFIG_ARG
@click.pass_context
def validate(ctx: click.Context, config: Path) -> None:
    """Check CONFIG, its files, the factory and the declared shapes, without building."""

    def go() -> None:
        from .config import load_config

        cfg = load_config(config)
        for line in task_of(cfg).validate(cfg, config):
            click.echo(line)

    _run(ctx, go)


@main.command()
@CONFIG_ARG
@click.option("--force", is_flag=True, help="Plan as if nothing were cached.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def plan(ctx: click.Context, config: Path, force: bool, cache_dir: Path | None, as_json: bool) -> None:
    """Dry run: which passes would run, which come from the cache, and per target
    the TensorRT profiles and the config.pbtxt it would write."""
    from .build import BuildOptions
    from .config import load_config

    def go() -> None:
        cfg = load_config(config)
        with _json_stdout(as_json):
            result = task_of(cfg).plan(
                cfg, BuildOptions(cache_dir=cache_dir.resolve() if cache_dir else None, force=force)
            )
        if as_json:
            click.echo(json.dumps(result, indent=2))
            return
        rows = result["steps"]
        width = max(len(r["step"]) for r in rows) + 2
        for r in rows:
            key = r["key"][:16] if r["key"] else "- (key follows from an earlier step)"
            click.echo(f"{r['step']:<{width}} {r['action']:<7} {key}")
        n = sum(r["action"] == "run" for r in rows)
        skip = sum(r["action"] == "skip" for r in rows)
        click.echo(
            f"{n} pass(es) would run, {len(rows) - n - skip} from cache" + (f", {skip} skipped here" if skip else "")
        )
        for name, t in result["targets"].items():
            click.echo(
                f"\n== target {name} ({t['backend']}, {t['precision']}; served by {t['served_by']}); "
                f"I/O from {t['io_from']}"
            )
            if not t["available"]:
                click.echo(f"SKIPPED here: {t['reason']}")
            if t["if_needed"]:
                click.echo(
                    f"if a try misses its gate, up to {len(t['if_needed'])} more step(s): {', '.join(t['if_needed'])}"
                )
            for line in t["lines"]:
                click.echo(line)
            for model, text in t["models"].items():
                click.echo(f"config.pbtxt of {model}:")
                click.echo("  " + text.rstrip().replace("\n", "\n  "))

    _run(ctx, go)


CACHE_DIR_OPT = click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The cache the build used (its state folder is beside it), as for build.",
)


@main.command()
@CONFIG_ARG
@click.option("--tracking-uri", default=None)
@click.option("--experiment", default=None)
@click.option("-n", "--limit", default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@CACHE_DIR_OPT
@click.pass_context
def runs(
    ctx: click.Context,
    config: Path,
    tracking_uri: str | None,
    experiment: str | None,
    limit: int,
    as_json: bool,
    cache_dir: Path | None,
) -> None:
    """Recent builds of CONFIG's model from MLflow: version, status, headline metrics."""
    from .config import load_config
    from .state import State
    from .tracking import flush, list_runs, preflight, resolve

    def go() -> None:
        cfg = load_config(config)
        state = State.resolve(cache_dir).root
        settings = resolve(cfg, state, tracking_uri, experiment)
        preflight(settings)
        flush(state, warn=lambda m: click.echo(f"warning: {m}", err=True))
        rows = list_runs(settings, cfg.name, limit)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            click.echo(f"no builds of {cfg.name} in experiment {settings.experiment!r} ({settings.uri})")
            return
        for r in rows:
            head = " ".join(f"{k}={v:.4g}" for k, v in sorted(r["headline"].items()))
            click.echo(
                f"{r['start']}  {r['run_id'][:12]}  {r['status']:<8}  version {r['version'] or '-':<4} "
                f"git {r['git_commit'] or '-':<10}  ran {r['passes_run']:.0f} cached {r['passes_cached']:.0f}  {head}"
            )

    _run(ctx, go)


@main.command()
@CONFIG_ARG
@click.option("--version", "version", type=int, default=None, help="Published version (default: the latest).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Where to write the HTML page.")
@click.option("--model", "model_name", default=None, help="Triton model name (default: the config's name).")
@CACHE_DIR_OPT
@click.pass_context
def report(
    ctx: click.Context,
    config: Path,
    version: int | None,
    out: Path | None,
    model_name: str | None,
    cache_dir: Path | None,
) -> None:
    """Write the HTML report of CONFIG's published build (variants, latency plots,
    parity distributions, excluded layers, pass timings)."""
    from .config import load_config, resolve_path
    from .report import latest_manifest, write_report
    from .state import State

    def go() -> None:
        cfg = load_config(config)
        name = model_name or cfg.name
        manifest, path = latest_manifest(resolve_path(cfg.triton.repository), name, version)
        dest = out or State.resolve(cache_dir).reports / name / f"v{manifest['version']}.html"
        click.echo(f"report of {path.parent}: {write_report(manifest, dest)}")

    _run(ctx, go)


@main.command("serve-check")
@CONFIG_ARG
@_server_opts
@click.option("--version", "version", type=int, default=None, help="Published version (default: the latest).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option(
    "--rayserve",
    is_flag=True,
    help="Check the Ray Serve app instead of Triton: `serve run` on loopback, or --url of a running Serve proxy.",
)
@CACHE_DIR_OPT
@click.pass_context
def serve_check_cmd(
    ctx: click.Context,
    config: Path,
    version: int | None,
    as_json: bool,
    rayserve: bool,
    cache_dir: Path | None,
    **kw: Any,
) -> None:
    """Prove that a Triton server serves CONFIG's published model as the gate measured:
    load it (explicit mode), replay the validation set over gRPC and HTTP, compare with
    the PyTorch reference under the deployed target's tolerance, report latency,
    throughput and Triton's statistics, unload it. Exit 0: within the gate; 3: wrong
    answers; 1: it does not load (the server's message); 2: bad arguments."""
    from .config import load_config
    from .handoff import dumps, summary_lines
    from .state import State

    def go() -> None:
        cfg = load_config(config)
        state = State.resolve(cache_dir)
        say = (lambda m: None) if as_json else (lambda m: click.echo(f"  {m}", err=True))
        if rayserve:
            from .rayserve import serve_check_rayserve

            def check() -> Any:
                return serve_check_rayserve(cfg, state, kw.get("url"), version, kw["concurrency"], say)
        else:

            def check() -> Any:
                return task_of(cfg).serve_check(cfg, state, version, say, kw)

        with _json_stdout(as_json) as emit:
            try:
                out = check()
            except MscompileError as exc:
                if as_json and exc.summary:
                    emit(dumps(dict(exc.summary, error=str(exc))))
                elif exc.summary:
                    for line in summary_lines(exc.summary):
                        click.echo(line)
                raise
        if as_json:
            click.echo(dumps(out))
        else:
            for line in summary_lines(out):
                click.echo(line)
            click.echo("serve-check: OK, the server answers within the gate")

    _run(ctx, go)


@main.command()
@CONFIG_ARG
@_server_opts
@click.option("--version", "version", type=int, default=None, help="Published version to deploy (default: the latest).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@CACHE_DIR_OPT
@click.pass_context
def deploy(
    ctx: click.Context, config: Path, version: int | None, as_json: bool, cache_dir: Path | None, **kw: Any
) -> None:
    """Hand CONFIG's published version to a running explicit-mode Triton server that
    reads the same repository (--url/--grpc-url): load it, serve-check it, and when
    either fails put back the versions it served before (exit 1 or 3)."""
    from .config import load_config
    from .handoff import dumps, summary_lines
    from .state import State

    def go() -> None:
        if not (kw.get("url") or kw.get("grpc_url")):
            from .errors import ConfigError

            raise ConfigError("deploy: give --url and/or --grpc-url of the running server that reads this repository")
        cfg = load_config(config)
        state = State.resolve(cache_dir)
        say = (lambda m: None) if as_json else (lambda m: click.echo(f"  {m}", err=True))
        with _json_stdout(as_json) as emit:
            try:
                out = task_of(cfg).deploy(cfg, state, version, say, kw)
            except MscompileError as exc:
                if as_json and exc.summary:
                    emit(dumps(dict(exc.summary, error=str(exc))))
                raise
        if as_json:
            click.echo(dumps(out))
        else:
            for line in summary_lines(out["check"]):
                click.echo(line)
            click.echo(
                f"deploy: {out['model']} version {out['version']} serves (before: {out['served_before'] or 'nothing'})"
            )

    _run(ctx, go)


@main.command()
def doctor() -> None:
    """What this machine offers: libraries, ONNX Runtime providers, GPU, TensorRT."""
    from .device import doctor as rows

    table = rows()
    width = max(len(r[0]) for r in table) + 2
    for name, status, detail in table:
        click.echo(f"{name:<{width}} {status:<8} {detail}")


@main.command()
@click.option("--markdown", is_flag=True, help="The reference page (docs/reference/model-yaml.md) instead.")
def schema(markdown: bool) -> None:
    """Print the JSON Schema of model.yaml, every task's (for editors)."""
    if markdown:
        from .reference import markdown as page

        click.echo(page(), nl=False)
        return
    from .config import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
