"""MLflow tracking: every `mscompile build` is an MLflow run, every target
variant a child run, so CI builds leave a record.

Tracking URI: --tracking-uri, else model.yaml `mlflow.tracking_uri`, else
$MLFLOW_TRACKING_URI, else a local SQLite store in the state folder
(.mscompile/mlflow.db) with an explicit artifact location (mlflow 3 refuses a
plain folder store; FIELD-NOTES). A tracking server is checked before the build
starts (exit 2 when unreachable, unless --mlflow-optional).

Importing mlflow and opening its store costs about 3 s here, more than a cached
build. So a build writes its record (a JSON file) into .mscompile/mlflow-spool/
and logs it: in the same process when `CI` is set or with --mlflow-sync, else in
a detached child process. A record is deleted only once MLflow has it; records
left behind (a killed or failed child) are logged by the next build or
`mscompile runs`, so none is lost.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .builder import passes_ran
from .child import module_argv, safe_env
from .errors import ConfigError
from .faults import point
from .pipeline import tracked_libraries
from .sections import redact_url
from .state import file_lock

CI_VARIABLES = (
    "CI",
    "GITHUB_SHA",
    "GITHUB_RUN_ID",
    "GITHUB_REF",
    "GITHUB_REPOSITORY",
    "CI_PIPELINE_ID",
    "CI_COMMIT_SHA",
    "CI_JOB_ID",
    "BUILD_ID",
    "BUILD_NUMBER",
    "JENKINS_URL",
)


class TrackingError(ConfigError):
    """The tracking server cannot be reached or the store cannot be opened (exit 2)."""


@dataclass
class TrackingSettings:
    uri: str
    experiment: str
    artifact_location: str | None  # set for the embedded default store
    log_models: bool = False
    register: bool = False
    registered_model_name: str | None = None

    @property
    def shown(self) -> str:
        """The URI as printed and recorded: credentials redacted."""
        return redact_url(self.uri)


def resolve(cfg: Any, state_dir: Path, cli_uri: str | None, cli_experiment: str | None) -> TrackingSettings:
    m = cfg.mlflow
    uri = cli_uri or (m.tracking_uri if m else None) or os.environ.get("MLFLOW_TRACKING_URI")
    artifact_location = None
    if not uri:
        state_dir.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{state_dir.resolve() / 'mlflow.db'}"
    if uri.startswith("sqlite:"):
        # a local store: artifacts under the state folder, never ./mlruns in the working directory
        artifact_location = (state_dir / "mlartifacts").resolve().as_uri()
    experiment = cli_experiment or (m.experiment if m and m.experiment else None) or f"mscompile/{cfg.name}"
    return TrackingSettings(
        uri=uri,
        experiment=experiment,
        artifact_location=artifact_location,
        log_models=bool(m and m.log_models),
        register=bool(m and m.register_model),
        registered_model_name=(m.registered_model_name if m else None),
    )


def preflight(s: TrackingSettings, timeout: float = 5.0) -> None:
    """Fail fast, before any pass runs, when the tracking store is unusable. A URI with
    `user:password@` is asked with those as HTTP basic credentials (as MLflow's client
    does), and never printed with them."""
    if s.uri.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(s.uri)
        host = parts.netloc.rsplit("@", 1)[-1]
        url = urllib.parse.urlunsplit((parts.scheme, host, parts.path.rstrip("/") + "/health", "", ""))
        request = urllib.request.Request(url)
        if parts.username is not None:
            pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - the user's tracking URL
                if resp.status != 200:
                    raise TrackingError(f"MLflow tracking server {s.shown} answered {resp.status} on /health")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"MLflow tracking server {s.shown} is unreachable ({reason}); start it, fix --tracking-uri / "
                "mlflow.tracking_uri / MLFLOW_TRACKING_URI, or pass --no-mlflow (or --mlflow-optional to build anyway)"
            ) from None
    elif s.uri.startswith("sqlite:///"):
        db = Path(s.uri[len("sqlite:///") :])
        if not db.parent.is_dir() or not os.access(db.parent, os.W_OK):
            raise TrackingError(f"MLflow store {s.shown}: folder {db.parent} is missing or not writable")
    elif s.uri.startswith(("file:", "/")) or "://" not in s.uri:
        raise TrackingError(
            f"MLflow tracking URI {s.shown!r}: mlflow 3 refuses plain folder stores; use sqlite:///path/mlflow.db "
            "or an http(s):// tracking server"
        )


def git_info(path: Path) -> dict[str, str]:
    """Commit and dirty flag of the git repository holding `path` (empty outside one)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=path, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return {
            "git.commit": git("rev-parse", "HEAD"),
            "git.dirty": str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower(),
            "git.root": git("rev-parse", "--show-toplevel"),
        }
    except (OSError, subprocess.SubprocessError):
        return {}


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d if isinstance(d, str) else json.dumps(d)
    return out


def _metric_name(*parts: str) -> str:
    return "/".join("".join(c if c.isalnum() or c in "_-. /" else "_" for c in p) for p in parts)


# -- the record: everything MLflow gets, captured when the build ends ------------------


def _record(settings: TrackingSettings, kind: str, model: str, run_name: str, started: float, **fields: Any) -> dict:
    """What every record holds (a build's, a serving measurement's); `fields` add to it."""
    rec: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "settings": asdict(settings),
        "run_name": f"{run_name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}",
        "start_ms": int(started * 1000),
        "end_ms": int(time.time() * 1000),
        "params": {},
        "tags": {
            "mscompile.kind": kind,
            "mscompile.model": model,
            "mscompile.version": __version__,
            **{f"ci.{k}": os.environ[k] for k in CI_VARIABLES if os.environ.get(k)},
        },
        "error": None,
        "metrics": {},
        "series": [],  # [metric, value, step]: curves
        "variants": [],
        "artifacts": [],
        "published": [],
        "summary": None,
        "manifest": None,
    }
    tags = fields.pop("tags", {})
    rec.update(fields)
    rec["tags"].update(tags)
    return rec


def make_record(
    settings: TrackingSettings, cfg: Any, config_path: Path, result: Any, error: BaseException | None, started: float
) -> dict[str, Any]:
    # the versions the build recorded (its passes' libraries); the core's when it ended early
    libraries = (getattr(result, "manifest", None) or {}).get("libraries") or tracked_libraries([])
    tags = {
        "mscompile.config_file": str(config_path.resolve()),
        **git_info(config_path.resolve().parent),
        **{f"lib.{k}": v for k, v in libraries.items()},
    }
    rec = _record(
        settings,
        "build",
        cfg.name,
        cfg.name,
        started,
        tags=tags,
        params=flatten(cfg.model_dump(mode="json")),
        error=str(error) if error is not None else None,
    )
    if result is None:
        return rec
    m = rec["metrics"]
    for r in result.records:
        m[_metric_name("pass", r.id, "seconds")] = r.seconds
        m[_metric_name("pass", r.id, "cache_hit")] = 1.0 if r.cached else 0.0

    m["passes_run"], m["passes_cached"] = passes_ran(result.records)
    m["build_seconds"] = result.seconds
    for v in result.variants:
        j = v.to_json()
        vm = dict(j["metrics"] or {})
        if j["size_bytes"] is not None:
            vm["size_bytes"] = j["size_bytes"]
        vm["quantization_tries"] = len(j["tries"])
        for k, val in vm.items():
            m[_metric_name(v.target, k)] = val
        rec["variants"].append(
            {
                "name": v.target,
                "backend": v.backend,
                "precision": v.precision,
                "status": j["status"],
                "reason": v.reason or "",
                "cached": v.cached,
                "metrics": vm,
                "quantizer": (j["quantization"] or {}).get("quantizer"),
                "model_dir": str(v.model.path) if v.model is not None else None,
                "report": str(v.report.path) if v.report is not None else None,
            }
        )
    for p in result.published:
        rec["published"].append({"model": p.model, "version": p.version, "path": str(p.path), "new": not p.reused})
        rec["artifacts"].append([str(p.path.parent / "config.pbtxt"), f"triton/{p.model}"])
    if getattr(result, "report_path", None):
        rec["artifacts"].append([str(result.report_path), "report"])
    rec["summary"] = result.to_json()
    rec["manifest"] = result.manifest or None
    return rec


def serving_record(settings: TrackingSettings, cfg: Any, kind: str, data: dict[str, Any], files: list[Path]) -> dict:
    """An MLflow run for a measurement on the server (kind: capacity or tune) of a
    published version: tagged with the model and version, its points as metrics whose
    step is the concurrency (capacity: one curve per protocol and figure) or the trial
    (tune), the whole record and the report as artifacts."""
    model, version = data.get("model", cfg.name), data.get("version")
    series: list[list[Any]] = []
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    if kind == "capacity":
        cap = data.get("capacity") or {}
        params = flatten(cap.get("settings") or {})
        for proto in ("grpc", "http"):
            for p in cap.get(proto) or []:
                if not p.get("stable"):
                    continue
                step = int(p["value"])
                pre = f"{proto}.{p['mode']}"
                series.append([f"{pre}.throughput", p["throughput"], step])
                for q, v in p["latency_ms"].items():
                    series.append([f"{pre}.{q}_ms", v, step])
                if (p.get("triton") or {}).get("mean_batch") is not None:
                    series.append([f"{pre}.mean_batch", p["triton"]["mean_batch"], step])
        best = [p["throughput"] for proto in ("grpc", "http") for p in cap.get(proto) or [] if p.get("stable")]
        if best:
            metrics["max_throughput"] = max(best)
    else:
        params = {"slo_p99_ms": str(data["objective"]["slo"]["p99_ms"]), "variant": str(data.get("variant"))}
        for t in data.get("trials") or []:
            series.append(["trial.throughput_under_slo", t["throughput_under_slo"], int(t["trial"])])
        metrics["published.throughput_under_slo"] = data["published"]["throughput_under_slo"]
        metrics["best.throughput_under_slo"] = (data.get("best") or {}).get("throughput_under_slo", 0.0)
        if data.get("speedup_vs_published") is not None:
            metrics["speedup_vs_published"] = data["speedup_vs_published"]
        metrics["written"] = 1.0 if data.get("written") else 0.0
    return _record(
        settings,
        f"serve-check-{kind}" if kind == "capacity" else kind,
        cfg.name,
        f"{model}-v{version}-{kind}",
        time.time(),
        tags={"triton.model": str(model), "triton.version": str(version)},
        params=params,
        metrics=metrics,
        series=series,
        artifacts=[[str(f), "serving"] for f in files],
    )


def spool_dir(state_dir: Path) -> Path:
    return state_dir / "mlflow-spool"


def spool_record(record: dict[str, Any], state_dir: Path) -> Path:
    """Write the record into the spool, atomically. It holds the tracking URI the logger
    connects with (credentials included): readable by this user only."""
    d = spool_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{record['id']}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record, default=str))
    os.replace(tmp, path)
    return path


def submit(record: dict[str, Any], state_dir: Path, sync: bool) -> dict[str, Any]:
    """Spool the record, then log it now (sync) or in a detached child process."""
    path = spool_record(record, state_dir)
    if sync:
        run_id = log_spooled(path)
        return {"run_id": run_id, "pending": None}
    spawn_logger(path)
    return {"run_id": None, "pending": str(path)}


def spawn_logger(path: Path) -> subprocess.Popen:
    """The detached logger for one spooled record; it imports nothing from the
    working directory (-P)."""
    with open(path.with_suffix(".log"), "ab") as out:
        return subprocess.Popen(
            module_argv("mscompile.tracking", str(path)),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=safe_env(),
        )


def flush(state_dir: Path, warn: Any = None) -> int:
    """Log records left by earlier builds (a killed or failed logger); returns how
    many were logged now. A record another process is logging (its lock held) is
    left to it; a lock whose holder died is free again (the kernel drops it)."""
    d = spool_dir(state_dir)
    n = 0
    for path in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            n += log_spooled(path) is not None
        except Exception as exc:  # keep the record; say why (never with its credentials)
            if warn:
                warn(scrub(f"MLflow record {path.name} not logged yet: {type(exc).__name__}: {exc}", path))
    return n


def scrub(text: str, record: Path) -> str:
    """`text` without the credentials of the spooled record's tracking URI."""
    try:
        uri = json.loads(record.read_text())["settings"]["uri"]
    except (OSError, ValueError, KeyError, TypeError):
        return text
    return scrub_uri(text, uri)


def scrub_uri(text: str, uri: str) -> str:
    """`text` with every mention of `uri` (with or without a trailing /) redacted: what
    mlflow and its errors print is built from the URI, credentials included."""
    bare = uri.rstrip("/")
    return text.replace(bare, redact_url(bare)) if bare != redact_url(bare) else text


def _store_lock(record: dict[str, Any], spool: Path) -> Path:
    """One writer per tracking store at a time: two builds opening a fresh SQLite
    store together race in its schema migration."""
    import hashlib

    return spool / f"store-{hashlib.sha256(record['settings']['uri'].encode()).hexdigest()[:16]}.lock"


def log_spooled(path: Path) -> str | None:
    """Log one spooled record into MLflow, then delete it. Returns the run id (None
    when another process holds the record, or it is gone)."""
    with file_lock(path.with_suffix(".lock"), blocking=False) as mine:
        if not mine or not path.exists():
            return None
        record = json.loads(path.read_text())
        point("mlflow:log")
        try:
            with file_lock(_store_lock(record, path.parent), blocking=True):
                run_id = log_record(record)
        except Exception as exc:
            path.with_suffix(".error").write_text(
                scrub_uri(f"{type(exc).__name__}: {exc}\n", record["settings"]["uri"])
            )
            raise
        path.unlink()
        for suffix in (".error", ".log", ".lock"):
            path.with_suffix(suffix).unlink(missing_ok=True)
        return run_id


def log_record(rec: dict[str, Any]) -> str:
    """Write one build record as an MLflow run (+ one child run per variant).
    mlflow prints run links on stdout: they go to stderr, stdout is the build's."""
    with contextlib.redirect_stdout(_Scrubbed(sys.stderr, str(rec["settings"]["uri"]))):
        return _log_record(rec)


class _Scrubbed:
    """A text stream that writes to `out` with the URI's credentials redacted (mlflow
    prints run links built from the tracking URI)."""

    def __init__(self, out: Any, uri: str) -> None:
        self.out, self.uri = out, uri

    def write(self, text: str) -> int:
        return self.out.write(scrub_uri(text, self.uri))

    def flush(self) -> None:
        self.out.flush()


def _log_record(rec: dict[str, Any]) -> str:
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    s = TrackingSettings(**rec["settings"])
    client = MlflowClient(tracking_uri=s.uri)
    exp = client.get_experiment_by_name(s.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(s.experiment, artifact_location=s.artifact_location)

    def params(run_id: str, p: dict[str, str]) -> None:
        items = [Param(k[:250], str(v)[:6000]) for k, v in p.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=items[i : i + 100])

    def metrics(run_id: str, m: dict[str, Any]) -> None:
        items = [
            Metric(k, float(v), rec["end_ms"], 0)
            for k, v in m.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
        ]
        for i in range(0, len(items), 1000):
            client.log_batch(run_id, metrics=items[i : i + 1000])

    tags = dict(rec["tags"])
    for p in rec["published"]:
        tags[f"triton.{p['model']}.version"] = str(p["version"])
        tags[f"triton.{p['model']}.path"] = p["path"]
        tags[f"triton.{p['model']}.new_version"] = str(p["new"]).lower()
    if rec["published"]:
        tags["triton.repository"] = str(Path(rec["published"][0]["path"]).parent.parent)
        tags["triton.version"] = str(rec["published"][0]["version"])
    if rec["error"]:
        tags["mscompile.error"] = rec["error"][:5000]
    run = client.create_run(exp_id, start_time=rec["start_ms"], run_name=rec["run_name"], tags=tags)
    run_id = run.info.run_id
    params(run_id, rec["params"])
    metrics(run_id, rec["metrics"])
    steps = [Metric(k, float(v), rec["end_ms"], int(step)) for k, v, step in rec.get("series", [])]
    for i in range(0, len(steps), 1000):
        client.log_batch(run_id, metrics=steps[i : i + 1000])
    for v in rec["variants"]:
        child = client.create_run(
            exp_id,
            start_time=rec["start_ms"],
            run_name=v["name"],
            tags={
                "mlflow.parentRunId": run_id,
                "mscompile.kind": "variant",
                "mscompile.model": rec["tags"]["mscompile.model"],
                "mscompile.variant": v["name"],
                "mscompile.backend": v["backend"],
                "mscompile.precision": v["precision"],
                "mscompile.status": v["status"],
                "mscompile.reason": v["reason"][:5000],
                "mscompile.cached": str(v["cached"]).lower(),
            },
        )
        cid = child.info.run_id
        metrics(cid, v["metrics"])
        params(
            cid,
            {
                "backend": v["backend"],
                "precision": v["precision"],
                **({"quantizer": v["quantizer"]} if v["quantizer"] else {}),
            },
        )
        if v["report"] and Path(v["report"]).is_file():
            client.log_artifact(cid, v["report"])
        if s.log_models and v["model_dir"] and Path(v["model_dir"]).is_dir():
            client.log_artifacts(cid, v["model_dir"], artifact_path="model")
        status = {"OK": "FINISHED", "FAIL": "FAILED"}.get(v["status"], "KILLED")
        client.set_terminated(cid, status=status, end_time=rec["end_ms"])
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("summary", "manifest"):
            if rec[name]:
                f = Path(tmp) / ("build_manifest.json" if name == "manifest" else "summary.json")
                f.write_text(json.dumps(rec[name], indent=2, default=str))
                client.log_artifact(run_id, str(f))
    for local, where in rec["artifacts"]:
        if Path(local).is_file():
            client.log_artifact(run_id, local, artifact_path=where)
    if s.register and not rec["error"]:
        for p in rec["published"]:
            name = s.registered_model_name or p["model"]
            try:
                client.create_registered_model(name, tags={"mscompile.model": rec["tags"]["mscompile.model"]})
            except MlflowException:
                pass  # registered already
            # a registry source must lie in the run's artifacts: log the published Triton model
            # (config.pbtxt + its version folder) there; the repository path and version go in tags
            where = f"triton/{p['model']}"
            client.log_artifacts(run_id, p["path"], artifact_path=f"{where}/{p['version']}")
            client.create_model_version(
                name,
                source=f"{run.info.artifact_uri.rstrip('/')}/{where}",
                run_id=run_id,
                tags={
                    "triton.repository": str(Path(p["path"]).parent.parent),
                    "triton.model": p["model"],
                    "triton.version": str(p["version"]),
                    "triton.path": p["path"],
                },
                description=f"Triton model {p['model']} version {p['version']} at {p['path']}",
            )
    client.set_terminated(run_id, status="FAILED" if rec["error"] else "FINISHED", end_time=rec["end_ms"])
    return run_id


def list_runs(settings: TrackingSettings, model: str, limit: int) -> list[dict[str, Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.uri)
    exp = client.get_experiment_by_name(settings.experiment)
    if exp is None:
        return []
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`mscompile.kind` = 'build' and tags.`mscompile.model` = '{model}'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    out = []
    for r in runs:
        m, t = r.data.metrics, r.data.tags
        headline = {k: v for k, v in m.items() if k.split("/")[-1] in ("accuracy", "cosine_min", "max_abs")}
        out.append(
            {
                "run_id": r.info.run_id,
                "status": r.info.status,
                "start": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.info.start_time / 1000)),
                "version": t.get("triton.version"),
                "git_commit": t.get("git.commit", "")[:10],
                "passes_run": m.get("passes_run"),
                "passes_cached": m.get("passes_cached"),
                "headline": headline,
            }
        )
    return out


if __name__ == "__main__":  # the detached logger: python -m mscompile.tracking <spooled record>
    record = Path(sys.argv[1])
    log_spooled(record)
    flush(record.parent.parent)  # and what earlier builds left in the spool
