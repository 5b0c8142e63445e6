"""The commands: each parses its options, loads the config, calls the layer below
(jobs, the config's task, the registries) and hands the answer to render. Exit codes
come from app.run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..backends import doctor as doctor_rows
from ..builder import BuildOptions
from ..config import resolve_path
from ..errors import AccuracyGateError, ConfigError, MscompileError, TargetSkippedError
from ..handoff import dumps, tune_lines, tune_variants_lines
from ..jobs import Tracking, build_many, build_one, error_summary, tracking_settings
from ..llm.tools import TOOLS
from ..llm.tools import setup as setup_tool
from ..reference import markdown as reference_page
from ..report import latest_manifest, load_serving, write_report
from ..scaffold import init_hf_yaml, init_yaml
from ..state import State
from ..tasks import json_schema, load_config, task_of
from ..tracking import flush, list_runs, preflight, resolve
from . import render
from .app import CACHE_DIR_OPT, CONFIG_ARG, json_stdout, main, progress, run, server_options, warn

__all__ = ["main"]


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
@server_options
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
    tracking = None if no_mlflow else Tracking(tracking_uri, experiment, mlflow_optional, mlflow_sync)
    opts = BuildOptions(
        cache_dir=cache_dir.resolve() if cache_dir else None,
        force=force,
        quiet=quiet or as_json,
        require_all_targets=require_all_targets,
    )
    if len(configs) > 1 or ray_address is not None:

        def many() -> None:
            if serve_check:
                raise ConfigError("--serve-check: check one model at a time (mscompile serve-check CONFIG)")
            _build_many(ctx, list(configs), opts, ray_address, tracking, as_json)

        run(ctx, many)
        return
    config = configs[0]

    def go() -> None:
        with json_stdout(as_json) as emit:
            try:
                cfg = load_config(config)
                settings = None if tracking is None else tracking_settings(cfg, opts.state.root, tracking, warn)
                sync = tracking is not None and tracking.synchronous()
                outcome = build_one(cfg, config, opts, settings, sync, warn)
            except MscompileError as exc:
                if as_json:  # what ran before the error (the gates that passed), then the error
                    emit(json.dumps(error_summary(exc, exc.result), indent=2, default=str))
                elif isinstance(exc, (AccuracyGateError, TargetSkippedError)) and exc.result is not None:
                    render.print_summary(exc.result)
                raise
            checked = None
            if serve_check:
                say = progress(as_json)
                try:
                    checked = task_of(cfg).serve_check(cfg, opts.state, None, say, server)
                except MscompileError as exc:
                    if as_json:
                        out = dict(error_summary(exc, outcome.result), serve_check=exc.summary)
                        emit(json.dumps(out, indent=2, default=str))
                    else:
                        render.print_summary(outcome.result)
                        render.print_check(exc.summary or {"model": cfg.name, "version": "?"})
                    raise
        if as_json:
            out = outcome.to_json()
            if checked is not None:
                out["serve_check"] = checked
            click.echo(json.dumps(out, indent=2, default=str))
            return
        render.print_summary(outcome.result)
        if outcome.tracked is not None:
            click.echo(render.mlflow_line(outcome.tracked))
        if checked is not None:
            render.print_check(checked)
            click.echo("serve-check: OK, the server answers within the gate")

    run(ctx, go)


def _build_many(
    ctx: click.Context,
    configs: list[Path],
    opts: BuildOptions,
    ray_address: str | None,
    tracking: Tracking | None,
    as_json: bool,
) -> None:
    """Several models, or a farm (jobs.build_many): one summary each as it ends, then the
    farm's line; the exit code is the worst of the models' (2, 1, 3, 0)."""
    say = progress(opts.quiet, indent="")
    with json_stdout(as_json) as emit:
        try:
            many = build_many(
                configs,
                opts,
                ray_address,
                tracking,
                say,
                warn,
                done=(lambda o: None) if as_json else render.print_outcome,
            )
        except MscompileError as exc:  # before any model was built (a config, the farm's address)
            if as_json:
                emit(json.dumps(dict(error_summary(exc, None), models=[]), indent=2))
            raise
        if as_json:
            emit(json.dumps(many.to_json(), indent=2, default=str))
        elif many.farm is not None:
            click.echo(render.farm_line(many.farm))
    if many.exit_code:
        ctx.exit(many.exit_code)


@main.command()
@CONFIG_ARG
@click.pass_context
def validate(ctx: click.Context, config: Path) -> None:
    """Check CONFIG, its files, the factory and the declared shapes, without building."""

    def go() -> None:
        cfg = load_config(config)
        for line in task_of(cfg).validate(cfg, config):
            click.echo(line)

    run(ctx, go)


@main.command()
@CONFIG_ARG
@click.option("--force", is_flag=True, help="Plan as if nothing were cached.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def plan(ctx: click.Context, config: Path, force: bool, cache_dir: Path | None, as_json: bool) -> None:
    """Dry run: which passes would run, which come from the cache, and per target
    the TensorRT profiles and the config.pbtxt it would write."""

    def go() -> None:
        cfg = load_config(config)
        opts = BuildOptions(cache_dir=cache_dir.resolve() if cache_dir else None, force=force)
        with json_stdout(as_json):
            result = task_of(cfg).plan(cfg, opts)
        if as_json:
            click.echo(json.dumps(result, indent=2))
        else:
            render.print_plan(result)

    run(ctx, go)


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

    def go() -> None:
        cfg = load_config(config)
        state = State.resolve(cache_dir).root
        settings = resolve(cfg, state, tracking_uri, experiment)
        preflight(settings)
        flush(state, warn=warn)
        rows = list_runs(settings, cfg.name, limit)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        elif not rows:
            click.echo(f"no builds of {cfg.name} in experiment {settings.experiment!r} ({settings.shown})")
        else:
            render.print_runs(rows)

    run(ctx, go)


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

    def go() -> None:
        cfg = load_config(config)
        name = model_name or cfg.name
        manifest, path = latest_manifest(resolve_path(cfg.triton.repository), name, version)
        reports = State.resolve(cache_dir).reports
        dest = out or reports / name / f"v{manifest['version']}.html"
        serving = load_serving(reports, name, int(manifest["version"]))
        click.echo(f"report of {path.parent}: {write_report(manifest, dest, serving)}")

    run(ctx, go)


def _checked(as_json: bool, check: Any, after: Any, lines_on_failure: bool) -> None:
    """Run a serve-check or deploy; its summary as JSON or lines (a failed one's too: as
    JSON always, as lines when `lines_on_failure`)."""
    with json_stdout(as_json) as emit:
        try:
            out = check()
        except MscompileError as exc:
            if as_json and exc.summary:
                emit(dumps(dict(exc.summary, error=str(exc))))
            elif exc.summary and lines_on_failure:
                render.print_check(exc.summary)
            raise
    if as_json:
        click.echo(dumps(out))
    else:
        after(out)


@main.command("serve-check")
@CONFIG_ARG
@server_options
@click.option("--version", "version", type=int, default=None, help="Published version (default: the latest).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option(
    "--rayserve",
    is_flag=True,
    help="Check the Ray Serve app instead of Triton: `serve run` on loopback, or --url of a running Serve proxy.",
)
@click.option(
    "--perf",
    is_flag=True,
    help="After the answers pass, measure capacity with NVIDIA's perf_analyzer: a concurrency sweep "
    "(and a request-rate sweep with --perf-request-rate) per protocol, with Triton's statistics.",
)
@click.option(
    "--perf-concurrency",
    default="1,2,4,8",
    show_default=True,
    help="Concurrency points of the sweep (comma-separated).",
)
@click.option("--perf-request-rate", default="", help="Request rates (requests/s) to measure too, comma-separated.")
@click.option(
    "--perf-window",
    type=click.IntRange(100, 600_000),
    default=2000,
    show_default=True,
    help="perf_analyzer's measurement window (ms); an unstable point is measured again with twice the window.",
)
@click.option(
    "--perf-stability",
    type=click.FloatRange(1, 100),
    default=10.0,
    show_default=True,
    help="perf_analyzer's stability (%): a point is measured when three windows' throughput and latency "
    "lie within this of their mean. Raise it on a noisy or shared host.",
)
@click.option(
    "--perf-analyzer",
    "perf_analyzer",
    default=None,
    help="The perf_analyzer binary (or a wrapper); default: $MSCOMPILE_PERF_ANALYZER, else perf_analyzer on PATH.",
)
@click.option(
    "--no-mlflow",
    is_flag=True,
    envvar="MSCOMPILE_NO_MLFLOW",
    help="--perf: do not record the capacity as an MLflow run (it is still kept for the version's report; "
    "$MSCOMPILE_NO_MLFLOW=1 too).",
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
    answers; 1: it does not load (the server's message); 2: bad arguments (or --perf
    without a perf_analyzer that runs here). Its latency columns are the check's own
    client-side figures; --perf measures capacity with perf_analyzer."""

    def go() -> None:
        cfg = load_config(config)
        state = State.resolve(cache_dir)
        say = progress(as_json)

        def check() -> Any:
            return task_of(cfg).serve_check(cfg, state, version, say, dict(kw, rayserve=rayserve))

        def ok(out: dict[str, Any]) -> None:
            render.print_check(out)
            click.echo("serve-check: OK, the server answers within the gate")

        _checked(as_json, check, ok, lines_on_failure=True)

    run(ctx, go)


@main.command()
@CONFIG_ARG
@server_options
@click.option("--version", "version", type=int, default=None, help="Published version (default: the latest).")
@click.option(
    "--slo-p99-ms",
    type=click.FloatRange(0.001, 3_600_000),
    required=True,
    help="The latency objective: the highest throughput whose p99 (ms) stays at or under this.",
)
@click.option("--max-trials", type=click.IntRange(1, 200), default=12, show_default=True, help="Configs measured.")
@click.option(
    "--max-instances", type=click.IntRange(0, 64), default=0, help="Most instances tried (default: CPUs, at most 4)."
)
@click.option("--perf-concurrency", default="1,2,4,8", show_default=True, help="Concurrency points per trial.")
@click.option("--perf-window", type=click.IntRange(100, 600_000), default=2000, show_default=True, help="ms")
@click.option(
    "--perf-stability", type=click.FloatRange(1, 100), default=10.0, show_default=True, help="perf_analyzer's %."
)
@click.option("--perf-analyzer", "perf_analyzer", default=None, help="The perf_analyzer binary (or a wrapper).")
@click.option(
    "--no-mlflow",
    is_flag=True,
    envvar="MSCOMPILE_NO_MLFLOW",
    help="Do not record the search as an MLflow run (the report still shows it; $MSCOMPILE_NO_MLFLOW=1 too).",
)
@click.option("--dry-run", is_flag=True, help="Search and report; do not write the config.")
@click.option(
    "--confirm-rounds",
    type=click.IntRange(0, 10),
    default=2,
    show_default=True,
    help="Measure the published and the best config again, interleaved, this many times; the best one is "
    "written only if its median beats the published one's by more than 5% (0: trust the search's figures).",
)
@click.option(
    "--variants",
    is_flag=True,
    help="Tune every published variant (triton.deploy: all publishes each as <name>_<target>) on the one "
    "server and rank them by throughput under the SLO: the variant and config that serve best there.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@CACHE_DIR_OPT
@click.pass_context
def tune(
    ctx: click.Context, config: Path, version: int | None, as_json: bool, cache_dir: Path | None, **kw: Any
) -> None:
    """Search the deployed model's serving config on a real Triton server: max_batch_size,
    the batcher's queue delay and preferred batch size, and the instance count, each
    trial loaded as a config override and measured by perf_analyzer. The config with the
    highest throughput whose p99 meets --slo-p99-ms is measured again beside the
    published one (--confirm-rounds) and, if it still leads by more than 5%, written to
    config.pbtxt (the replaced one kept beside it), reloaded and its answers checked.
    Every trial is reported. Exit 2: no perf_analyzer or no config meets the SLO; 1: the
    server fails; 3: the tuned config answers wrongly."""

    def go() -> None:
        cfg = load_config(config)
        state = State.resolve(cache_dir)
        say = progress(as_json)
        t = task_of(cfg)
        if not hasattr(t, "tune"):
            raise ConfigError(f"tune: {cfg.name} is a {t.name} model; tune searches Triton configs of tensor models")

        def ok(out: dict[str, Any]) -> None:
            for line in tune_variants_lines(out) if kw.get("variants") else tune_lines(out):
                click.echo(line)

        _checked(as_json, lambda: t.tune(cfg, state, version, say, kw), ok, lines_on_failure=False)

    run(ctx, go)


@main.command()
@CONFIG_ARG
@server_options
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

    def go() -> None:
        if not (kw.get("url") or kw.get("grpc_url")):
            raise ConfigError("deploy: give --url and/or --grpc-url of the running server that reads this repository")
        cfg = load_config(config)
        state = State.resolve(cache_dir)
        say = progress(as_json)

        def ok(out: dict[str, Any]) -> None:
            render.print_check(out["check"])
            click.echo(
                f"deploy: {out['model']} version {out['version']} serves (before: {out['served_before'] or 'nothing'})"
            )

        _checked(as_json, lambda: task_of(cfg).deploy(cfg, state, version, say, kw), ok, lines_on_failure=False)

    run(ctx, go)


@main.command()
@click.option("--checkpoint", default=None, help="state_dict / safetensors / TorchScript / torch.export file.")
@click.option("--huggingface", default=None, help="A local Hugging Face model folder (instead of --checkpoint).")
@click.option(
    "--task", "hf_task", default=None, help="With --huggingface: text-classification, image-classification, ..."
)
@click.option("--factory", default=None, help="module:callable that builds the nn.Module (for weights-only files).")
@click.option("--factory-args", default="{}", help="JSON object of keyword arguments for the factory.")
@click.option(
    "--data", type=click.Path(path_type=Path), default=None, help=".npz with one array per input (samples first)."
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    default=None,
    help=".npz of INT8 calibration samples (other than --data's).",
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    help="name:SHAPE[:dtype] (e.g. images:8x3x224x224) when there is no --data; repeat per input.",
)
@click.option("--name", default=None, help="The model's name (default: the checkpoint's file name).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("model.yaml"), show_default=True)
@click.option("--force", is_flag=True, help="Overwrite OUTPUT.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def init(
    ctx: click.Context,
    checkpoint: str | None,
    huggingface: str | None,
    hf_task: str | None,
    factory: str | None,
    factory_args: str,
    data: Path | None,
    calibration: Path | None,
    inputs: tuple[str, ...],
    name: str | None,
    output: Path,
    force: bool,
    as_json: bool,
) -> None:
    """Write a commented model.yaml for a checkpoint from one forward pass: input names,
    dtypes and shapes (and which dims take other sizes), output names, and the targets
    this machine can build. Paths in it are as given (relative ones start at the
    directory you build from)."""

    def go() -> None:
        if output.exists() and not force:
            raise ConfigError(f"--output: {output} exists; pass --force to overwrite it, or -o another path")
        try:
            args = json.loads(factory_args)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--factory-args: not JSON ({exc})") from None
        if not isinstance(args, dict):
            raise ConfigError("--factory-args: give a JSON object, e.g. '{\"num_classes\": 10}'")
        if bool(checkpoint) == bool(huggingface):
            raise ConfigError(
                "init: give --checkpoint (with --factory for weights) or --huggingface FOLDER --task TASK"
            )
        model = name or Path((checkpoint or huggingface or "model").removeprefix("pkg:").rstrip("/")).stem.replace(
            ".", "_"
        )
        with json_stdout(as_json) as emit:
            if huggingface:
                text, notes = init_hf_yaml(name=model, folder=huggingface, task=hf_task or "")
            else:
                text, notes = init_yaml(
                    name=model,
                    checkpoint=checkpoint or "",
                    factory=factory,
                    factory_args=args,
                    data=str(data) if data else None,
                    calibration=str(calibration) if calibration else None,
                    inputs=inputs,
                    out_dir=output.parent,
                )
            tmp = output.with_name(output.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(output)
            for line in notes:
                warn(line)
            if as_json:
                emit(json.dumps({"path": str(output), "notes": notes}, indent=2))
            else:
                click.echo(f"wrote {output}; check it, then: mscompile build {output}")

    run(ctx, go)


@main.command()
@click.argument("tool", type=click.Choice(sorted(TOOLS)))
@click.option(
    "--dir",
    "root",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the environments go (default: $MSCOMPILE_TOOLS or ~/.cache/mscompile/tools).",
)
@click.pass_context
def setup(ctx: click.Context, tool: str, root: Path | None) -> None:
    """Make TOOL's environment of its own (vllm: vLLM's CPU build; llmcompressor), where
    builds find it; prints its python."""

    def go() -> None:
        py = setup_tool(tool, root.resolve() if root else None, progress(False))
        click.echo(str(py))

    run(ctx, go)


@main.command()
def doctor() -> None:
    """What this machine offers: libraries, ONNX Runtime providers, GPU, TensorRT."""
    render.print_doctor(doctor_rows())


@main.command()
@click.option("--markdown", is_flag=True, help="The reference page (docs/reference/model-yaml.md) instead.")
def schema(markdown: bool) -> None:
    """Print the JSON Schema of model.yaml, every task's (for editors)."""
    if markdown:
        click.echo(reference_page(), nl=False)
    else:
        click.echo(json.dumps(json_schema(), indent=2))
