"""MLflow tracking: every `mscompile build` is a run, every target variant a
child run, so CI builds leave a record.

Tracking URI: --tracking-uri, else model.yaml `mlflow.tracking_uri`, else
$MLFLOW_TRACKING_URI, else a local SQLite store in the state folder
(.mscompile/mlflow.db) with an explicit artifact location (mlflow 3 refuses a
plain folder store; FIELD-NOTES). The store is checked before the build starts.
mlflow is imported only when tracking is on.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ConfigError

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


def resolve(cfg: Any, state_dir: Path, cli_uri: str | None, cli_experiment: str | None) -> TrackingSettings:
    m = cfg.mlflow
    uri = cli_uri or (m.tracking_uri if m else None) or os.environ.get("MLFLOW_TRACKING_URI")
    artifact_location = None
    if not uri:
        state_dir.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{state_dir / 'mlflow.db'}"
        artifact_location = (state_dir / "mlartifacts").resolve().as_uri()
    experiment = cli_experiment or (m.experiment if m and m.experiment else None) or f"mscompile/{cfg.name}"
    return TrackingSettings(
        uri=uri,
        experiment=experiment,
        artifact_location=artifact_location,
        log_models=bool(m and m.log_models),
        register=bool(m and m.register),
        registered_model_name=(m.registered_model_name if m else None),
    )


def preflight(s: TrackingSettings, timeout: float = 5.0) -> None:
    """Fail fast (before any pass runs) when the tracking store is unusable."""
    if s.uri.startswith(("http://", "https://")):
        url = s.uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user-given tracking URL
                if resp.status != 200:
                    raise TrackingError(f"MLflow tracking server {s.uri} answered {resp.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"MLflow tracking server {s.uri} is unreachable ({reason}); start it, fix --tracking-uri / "
                "mlflow.tracking_uri / MLFLOW_TRACKING_URI, or pass --no-mlflow (or --mlflow-optional to build anyway)"
            ) from None
    elif s.uri.startswith("sqlite:///"):
        db = Path(s.uri[len("sqlite:///") :])
        if not db.parent.is_dir() or not os.access(db.parent, os.W_OK):
            raise TrackingError(f"MLflow store {s.uri}: folder {db.parent} is missing or not writable")


def git_info(path: Path) -> dict[str, str]:
    """Commit and dirty flag of the git repository holding `path` (empty outside one)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=path, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return {"git.commit": commit, "git.dirty": str(dirty).lower(), "git.root": git("rev-parse", "--show-toplevel")}
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
        out[prefix[:-1]] = json.dumps(d) if not isinstance(d, str) else d
    return out


def _metric_name(*parts: str) -> str:
    return "/".join("".join(c if c.isalnum() or c in "_-. /" else "_" for c in p) for p in parts)


class Tracker:
    """One MLflow run per build (child runs per variant), written through MlflowClient."""

    def __init__(self, settings: TrackingSettings) -> None:
        from mlflow.tracking import MlflowClient

        self.s = settings
        self.client = MlflowClient(tracking_uri=settings.uri)
        exp = self.client.get_experiment_by_name(settings.experiment)
        if exp is None:
            exp_id = self.client.create_experiment(settings.experiment, artifact_location=settings.artifact_location)
        else:
            exp_id = exp.experiment_id
        self.experiment_id = exp_id
        self.run_id: str | None = None

    def start(self, cfg: Any, config_path: Path) -> str:
        tags = {
            "mscompile.kind": "build",
            "mscompile.model": cfg.name,
            "mscompile.version": __version__,
            "mscompile.config_file": str(config_path.resolve()),
            **git_info(config_path.resolve().parent),
            **{f"ci.{k}": os.environ[k] for k in CI_VARIABLES if os.environ.get(k)},
        }
        from .build import TRACKED_LIBRARIES
        from .pipeline import library_versions

        tags.update({f"lib.{k}": v for k, v in library_versions(TRACKED_LIBRARIES).items()})
        run = self.client.create_run(
            self.experiment_id, run_name=f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags
        )
        self.run_id = run.info.run_id
        self._params(self.run_id, flatten(cfg.model_dump(mode="json")))
        return self.run_id

    def _params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def _metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def finish(self, result: Any, error: BaseException | None = None) -> None:
        """Log what the build produced (also for a failed build) and close the run."""
        from mlflow.entities import RunTag

        assert self.run_id is not None
        metrics: dict[str, float] = {}
        if result is not None:
            for r in result.records:
                metrics[_metric_name("pass", r.id, "seconds")] = r.seconds
                metrics[_metric_name("pass", r.id, "cache_hit")] = 1.0 if r.cached else 0.0
            metrics["passes_run"] = sum(1 for r in result.records if not r.cached)
            metrics["passes_cached"] = sum(1 for r in result.records if r.cached)
            metrics["build_seconds"] = result.seconds
            for v in result.variants:
                self._variant_run(v)
                for k, val in (v.to_json()["metrics"] or {}).items():
                    metrics[_metric_name(v.target, k)] = val
            tags = []
            for p in result.published:
                tags += [
                    RunTag(f"triton.{p.model}.version", str(p.version)),
                    RunTag(f"triton.{p.model}.path", str(p.path)),
                    RunTag(f"triton.{p.model}.new_version", str(not p.reused).lower()),
                ]
            if result.published:
                tags += [
                    RunTag("triton.repository", str(result.published[0].path.parent.parent)),
                    RunTag("triton.version", str(result.published[0].version)),
                ]
            if tags:
                self.client.log_batch(self.run_id, tags=tags)
            self._artifacts(result)
        self._metrics(self.run_id, metrics)
        if error is not None:
            self.client.set_tag(self.run_id, "mscompile.error", str(error)[:5000])
        if result is not None and error is None and self.s.register:
            self._register(result)
        self.client.set_terminated(self.run_id, status="FAILED" if error is not None else "FINISHED")

    def _variant_run(self, v: Any) -> None:
        j = v.to_json()
        child = self.client.create_run(
            self.experiment_id,
            run_name=v.target,
            tags={
                "mlflow.parentRunId": self.run_id,
                "mscompile.kind": "variant",
                "mscompile.variant": v.target,
                "mscompile.backend": v.backend,
                "mscompile.precision": v.precision,
                "mscompile.status": v.status,
                "mscompile.reason": (v.reason or "")[:5000],
                "mscompile.cached": str(v.cached).lower(),
            },
        )
        m = dict(j["metrics"] or {})
        if j["size_bytes"] is not None:
            m["size_bytes"] = j["size_bytes"]
        m["quantization_tries"] = len(j["tries"])
        self._metrics(child.info.run_id, m)
        self._params(
            child.info.run_id,
            {
                "backend": v.backend,
                "precision": v.precision,
                **({"quantizer": str(j["quantization"].get("quantizer"))} if j["quantization"] else {}),
            },
        )
        if self.s.log_models and v.model is not None:
            self.client.log_artifacts(child.info.run_id, str(v.model.path), artifact_path="model")
        self.client.set_terminated(
            child.info.run_id, status="FINISHED" if v.status == "OK" else "FAILED" if v.status == "FAIL" else "KILLED"
        )

    def _artifacts(self, result: Any) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            (t / "summary.json").write_text(json.dumps(result.to_json(), indent=2, default=str))
            self.client.log_artifact(self.run_id, str(t / "summary.json"))
            if result.manifest:
                (t / "build_manifest.json").write_text(json.dumps(result.manifest, indent=2, default=str))
                self.client.log_artifact(self.run_id, str(t / "build_manifest.json"))
            for p in result.published:
                cfg_file = p.path.parent / "config.pbtxt"
                if cfg_file.is_file():
                    self.client.log_artifact(self.run_id, str(cfg_file), artifact_path=f"triton/{p.model}")
            for v in result.variants:
                if v.report is not None:
                    self.client.log_artifact(self.run_id, str(v.report.path), artifact_path=f"reports/{v.target}")

    def _register(self, result: Any) -> None:
        from mlflow.exceptions import MlflowException

        for p in result.published:
            name = self.s.registered_model_name or p.model
            try:
                self.client.create_registered_model(name, tags={"mscompile.model": result.model})
            except MlflowException:
                pass  # exists already
            deployed = result.manifest.get("deployed_variant") if result.manifest else None
            self.client.create_model_version(
                name,
                source=p.path.resolve().as_uri(),
                run_id=self.run_id,
                tags={
                    "triton.repository": str(p.path.parent.parent),
                    "triton.model": p.model,
                    "triton.version": str(p.version),
                    "mscompile.variant": str(deployed or ""),
                },
                description=f"Triton model {p.model} version {p.version} at {p.path}",
            )


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
