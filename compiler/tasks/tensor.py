"""task: tensor (the default): a PyTorch module exported to ONNX, optimized, turned
into one variant per target by its backend, gated against PyTorch, published to
Triton (and optionally a Ray Serve app)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..accuracy import coverage_lines, shape_coverage
from ..backends import get
from ..builder import Prepared, assemble, choose, selection_note
from ..cache import Cache
from ..config import ModelConfig, resolve_path, semantic_problems
from ..ensemble import chain_gate
from ..errors import AccuracyGateError, ConfigError
from ..handoff import (
    CheckOptions,
    LocalServer,
    ServeLoadError,
    TuneOptions,
    deploy,
    find_tritonserver,
    require_deploy_all,
    serve_check,
    tune,
    tune_variants,
)
from ..hf import SYNTHETIC
from ..hf import expand as expand_hf
from ..instruments import Instruments
from ..named import SYNTHETIC as SYNTHETIC_IMAGES
from ..named import expand as expand_named
from ..named import library_of
from ..pipeline import Driver, Status
from ..publish import Deployment, deployment_names, preflight, write_repository
from ..rayserve import problems as rayserve_problems
from ..rayserve import servable, serve_check_rayserve, write_app
from ..report import latest_manifest, load_serving, save_serving, write_report
from ..serving.perf import PerfOptions, find_perf_analyzer
from ..tracking import preflight as tracking_preflight
from ..tracking import resolve as tracking_settings
from ..tracking import serving_record, submit
from ..tritonrepo.config import to_text
from ..validate import probe_io, validate_all
from .base import Task


class TensorTask(Task):
    name = "tensor"
    description = "tensor models through ONNX: onnxruntime, openvino, tensorrt targets"

    def parse(self, data: dict[str, Any], where: str) -> Any:
        """A Hugging Face folder source (hf.expand) or a torchvision/timm model by name
        (named.expand) is expanded to the plain form first."""
        src = data.get("source")
        if isinstance(src, dict) and "huggingface" in src and "checkpoint" not in src:  # not yet expanded
            data = expand_hf(data, where)
        elif isinstance(src, dict) and library_of(src):
            data = expand_named(data, where)
        elif data.get("pipeline") == "auto" or (isinstance(data.get("pipeline"), dict) and "auto" in data["pipeline"]):
            raise ConfigError(
                f"{where}: pipeline: auto derives the steps from a Hugging Face folder's tokenizer "
                "(source: {huggingface: ...}); for other sources write the steps (pipeline: {preprocess: ...})"
            )
        return super().parse(data, where)

    def config_model(self) -> Any:
        return ModelConfig

    def problems(self, cfg: Any, where: str) -> list[str]:
        return semantic_problems(cfg, where) + rayserve_problems(cfg, where)

    def preflight(self, cfg: Any) -> None:
        preflight(cfg)

    def prepare(self, cfg: Any, state: Any, devices: dict[str, Any]) -> Any:
        plan = assemble(cfg, state, devices=devices)
        sources = {
            "checkpoint": {"path": str(plan.source.path), **plan.source.meta, "digest": plan.source.digest},
            "validation": {"path": str(plan.validation.path), "digest": plan.validation.digest},
        }
        return Prepared(plan.source, plan.common, plan.recipes, plan.inputs, plan.datasets, {"sources": sources})

    def choose(self, cfg: Any, variants: list[Any]) -> tuple[list[str], str | None]:
        passing = [v.target for v in variants if v.status is Status.OK]
        wanted = cfg.deployed_targets()
        if wanted is None:
            chosen = choose(cfg, [v for v in variants if v.status is Status.OK])
            if chosen and cfg.triton.deploy in ("fastest", "smallest"):
                why = selection_note(cfg, variants, chosen[0])
                return chosen, f"{cfg.triton.deploy} passing variant is {chosen[0]} ({why})"
            return chosen, None
        missing = [w for w in wanted if w not in passing]
        if missing and cfg.triton.deploy != "all":
            why = next(v.reason for v in variants if v.target == missing[0])
            raise AccuracyGateError(
                f"triton.deploy: variant {missing[0]!r} did not pass ({why}); nothing was published"
            )
        return [w for w in wanted if w in passing], None

    def deployments(self, cfg: Any, chosen: list[Any]) -> list[Any]:
        by_name = {v.target: v for v in chosen}
        return [
            Deployment(name, t, by_name[t].model, by_name[t].engines or None)
            for name, t in deployment_names(cfg, [v.target for v in chosen])
        ]

    def before_publish(self, cfg: Any, deployments: list[Any], result: Any, instruments: Any, prep: Any = None) -> None:
        """The ensemble's end-to-end gate on the deployed variant, and whether the Ray Serve
        app can serve it."""
        deployed = next(t for t in cfg.targets if t.name == deployments[0].target)
        feeds, _ = prep.datasets.get(prep.inputs.validation)  # the arrays the gates read, not read again
        if cfg.validation.generator in (SYNTHETIC, SYNTHETIC_IMAGES):
            instruments.warn(
                "validation: no data given, so the gates ran on seeded synthetic inputs made with the model's "
                "own tokenizer/processor or preprocessing preset (a parity check); set validation.data to a "
                ".txt file or an image folder of what you serve"
            )
        result.shape_coverage = shape_coverage(
            cfg.io, feeds, cfg.validation.batch_size, generated=cfg.validation.shapes == "generate"
        )
        gaps = coverage_lines(result.shape_coverage)
        for line in gaps:
            instruments.warn(f"not gated: {line}")
        if gaps and cfg.validation.shapes == "strict":
            err = AccuracyGateError(
                f"validation.shapes: strict, and {len(gaps)} declared size(s) were never gated: {gaps[0]}"
                + (f" (and {len(gaps) - 1} more)" if len(gaps) > 1 else "")
                + "; nothing was published"
            )
            err.result = result
            raise err
        if cfg.pipeline is not None:
            rep = chain_gate(cfg, deployed, deployments[0].model, instruments.say)
            result.pipeline = rep
            instruments.say(
                f"pipeline {rep['ensemble']}: {'OK' if rep['passed'] else 'FAIL'} on {rep['samples']} raw samples "
                + " ".join(f"{k}={v:.6g}" for k, v in rep["metrics"].items() if isinstance(v, float))
            )
            if not rep["passed"]:
                err = AccuracyGateError(
                    f"pipeline: the chain {rep['ensemble']} (preprocess -> {deployed.name} -> postprocess) "
                    f"misses its gate against the PyTorch chain: {'; '.join(rep['failures'])}; nothing was published"
                )
                err.result = result
                raise err
        if cfg.rayserve is not None:
            servable(cfg, deployed)

    def manifest_extras(self, cfg: Any, prep: Any, result: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"shape_coverage": result.shape_coverage}
        if result.pipeline is not None:
            out["pipeline"] = result.pipeline
        return out

    def publish(self, cfg: Any, deployments: list[Any], manifest: dict, result: Any, instruments: Any) -> list:
        published = write_repository(cfg, deployments, manifest)
        if cfg.rayserve is not None:
            d = deployments[0]
            target = next(t for t in cfg.targets if t.name == d.target)
            result.rayserve = str(write_app(cfg, target, d.model, published[0].version, manifest))
            instruments.say(f"Ray Serve app: {result.rayserve} (serve run {result.rayserve}/serve_config.yaml)")
        return published

    def plan_io(self, cfg: Any, base: Any) -> tuple[dict[str, Any], str]:
        if base is not None and "io" in base.meta:  # the shared graph is cached
            return base.meta["io"], "the cached ONNX graph"

        return probe_io(cfg), "a PyTorch forward pass (no cached graph yet)"

    def plan_served(self, cfg: Any, target: Any, io_sig: dict[str, Any]) -> dict[str, Any]:
        names = {t: n for n, t in deployment_names(cfg, [t.name for t in cfg.targets])}
        served = get(target.backend).serving(cfg, target, names.get(target.name, cfg.name), io_sig, None)
        return {"config_pbtxt": to_text(served[0].config), "models": {m.name: to_text(m.config) for m in served}}

    def validate(self, cfg: Any, config_path: Path) -> list[str]:
        return validate_all(cfg, config_path)

    def shared_steps(self, cfg: Any, state: Any, stamp: str, force: bool) -> tuple[Any, Any, Any]:
        log_dir = state.build_logs(cfg.name, stamp)
        plan = assemble(cfg, state)
        driver = Driver(
            Cache(state.cache), Instruments(log_dir / "events.jsonl", quiet=True), force=force, log_dir=log_dir,
            datasets=plan.datasets,
        )  # fmt: skip
        base = driver.run(plan.common, plan.source).output
        return driver, base, lambda t: plan.recipes[t.name]

    def serve_check(self, cfg: Any, state: Any, version: int | None, say: Any, server: dict[str, Any]) -> dict:
        """Against --url/--grpc-url, or a tritonserver started on loopback for it; with
        `rayserve`, the Ray Serve app (--url of a running proxy, or serve run here)."""
        if server.get("rayserve"):
            if server.get("perf"):
                raise ConfigError("--perf measures a Triton-served model (perf_analyzer); leave out --rayserve")
            return serve_check_rayserve(
                cfg,
                state,
                server.get("url"),
                version,
                server.get("concurrency", 8),
                say,
                start_timeout=server.get("load_timeout") or 300.0,
            )
        if server.get("url") or server.get("grpc_url"):
            out = serve_check(cfg, state, check_options(server, version, say))
        else:
            out = _on_local_server(cfg, state, server, version, say, serve_check)
        if "capacity" in out:
            record_serving(cfg, state, "capacity", out, say, mlflow=not server.get("no_mlflow"))
        return out

    def tune(self, cfg: Any, state: Any, version: int | None, say: Any, server: dict[str, Any]) -> dict:
        """The serving-config search, against --grpc-url or a tritonserver started here; with
        --variants, of every published variant (deploy: all), ranked."""
        topts = TuneOptions(
            p99_ms=float(server["slo_p99_ms"]),
            max_trials=int(server.get("max_trials") or 12),
            max_instances=int(server.get("max_instances") or 0),
            write=not server.get("dry_run"),
            confirm_rounds=int(server.get("confirm_rounds", 2)),
        )
        every = bool(server.get("variants"))
        if every and version is not None:
            raise ConfigError("tune --variants tunes each variant's latest version: leave out --version")
        if every:
            require_deploy_all(cfg)  # before a server starts
        work = tune_variants if every else tune
        server = dict(server, perf=True, protocol="grpc")
        if server.get("grpc_url"):
            out = work(cfg, state, check_options(server, version, say), topts)
        else:
            out = _on_local_server(cfg, state, server, version, say, lambda c, st, o: work(c, st, o, topts))
        mlflow = not server.get("no_mlflow")
        for run in out["variants"].values() if every else [out]:
            if "best" in run:
                record_serving(cfg, state, "tune", run, say, mlflow=mlflow)
        return out

    def deploy(self, cfg: Any, state: Any, version: int | None, say: Any, server: dict[str, Any]) -> dict:
        return deploy(cfg, state, check_options(server, version, say))


def record_serving(cfg: Any, state: Any, kind: str, out: dict[str, Any], say: Any, mlflow: bool) -> None:
    """Keep a measurement on the server (capacity or tune) of a published version: its
    record under the state folder, the version's HTML report rendered again with it, and
    an MLflow run (unless --no-mlflow). Where each went is `out["recorded"]`; a record
    that cannot be written is said (`out["recorded"]["warnings"]`), never hiding the
    measurement itself."""
    model, version = out["model"], out["version"]
    saved = save_serving(state.reports, model, version, kind, out)
    rec: dict[str, Any] = {"file": str(saved), "warnings": []}
    files = [saved]
    try:
        manifest, _ = latest_manifest(resolve_path(cfg.triton.repository), model, version)
        page = write_report(
            manifest, state.reports / model / f"v{version}.html", load_serving(state.reports, model, version)
        )
        rec["report"] = str(page)
        files.append(page)
    except ConfigError as exc:
        rec["warnings"].append(f"report not written: {exc}")
    if mlflow:
        settings = tracking_settings(cfg, state.root, None, None)
        try:
            tracking_preflight(settings)
            logged = submit(serving_record(settings, cfg, kind, out, files), state.root, sync=True)
            rec["mlflow"] = {"tracking_uri": settings.shown, "experiment": settings.experiment, **logged}
        except Exception as exc:  # noqa: BLE001 - the measurement stands; say why it was not logged
            rec["warnings"].append(f"not recorded in MLflow ({settings.shown}): {type(exc).__name__}: {exc}")
    for w in rec["warnings"]:
        say(f"warning: {w}")
    out["recorded"] = rec


def _on_local_server(cfg: Any, state: Any, server: dict[str, Any], version: int | None, say: Any, work: Any) -> dict:
    """`work(cfg, state, opts)` against a tritonserver started on loopback for it (its log
    under the state folder; a load failure names it)."""
    binary = find_tritonserver(server.get("tritonserver"))
    log = state.logs / f"tritonserver-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    say(f"starting {binary} on loopback (explicit model control, no auto-complete); log {log}")
    with LocalServer(binary, resolve_path(cfg.triton.repository), log, server.get("tritonserver_args", ())) as s:
        opts = check_options(dict(server, url=s.http_url, grpc_url=s.grpc_url), version, say)
        opts.server_log = lambda: s.log_tail(200)
        try:
            out = work(cfg, state, opts)
        except ServeLoadError as exc:
            exc.args = (f"{exc} (server log: {log})",)
            raise
        out["server"] = {"binary": str(binary), "log": str(log)}
        return out


def _points(text: str, key: str, kind: type) -> tuple:
    try:
        values = tuple(kind(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not a comma-separated list of numbers (e.g. 1,2,4,8)") from None
    if any(v <= 0 or v > 100_000 for v in values):
        raise ConfigError(f"{key}: every point must be above 0 and at most 100000 (got {text!r})")
    return values


def perf_options(server: dict[str, Any]) -> PerfOptions | None:
    """serve-check --perf's settings, checked (exit 2 on a bad list)."""
    if not server.get("perf"):
        return None
    conc = _points(server.get("perf_concurrency") or "1,2,4,8", "--perf-concurrency", int)
    rates = _points(server.get("perf_request_rate") or "", "--perf-request-rate", float)
    if not conc and not rates:
        raise ConfigError("--perf: give at least one --perf-concurrency or --perf-request-rate point")
    return PerfOptions(
        concurrency=conc,
        request_rate=rates,
        measurement_ms=int(server.get("perf_window") or 2000),
        stability_percent=float(server.get("perf_stability") or 10.0),
        binary=find_perf_analyzer(server.get("perf_analyzer")),  # before any load: exit 2 naming the fix
    )


def check_options(server: dict[str, Any], version: int | None, say: Any) -> Any:
    """The CLI's server options as the check's."""
    protocol = server.get("protocol", "both")
    return CheckOptions(
        http_url=server.get("url") if protocol in ("both", "http") else None,
        grpc_url=server.get("grpc_url") if protocol in ("both", "grpc") else None,
        model_name=server.get("model_name"),
        version=version,
        concurrency=server.get("concurrency", 8),
        load_timeout=server.get("load_timeout") or 120.0,
        progress=say,
        perf=perf_options(server),
    )


TASK = TensorTask()
