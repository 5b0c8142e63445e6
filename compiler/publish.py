"""Publish the deployed variant(s) into the Triton model repository.

Not a pass and not cached: publishing is the build's side effect. Each deployed
variant's backend says what Triton gets (one or more models, each a
ModelConfig message and the files of its version folder); every config is
built, and so checked against Triton's schema, before anything is written."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import Artifact
from .backends import ServedModel, get
from .config import ModelConfig, resolve_path, unit_names
from .ensemble import members_file, pin_steps, step_sources
from .ensemble import served_models as ensemble_models
from .errors import ConfigError
from .tritonrepo.config import to_text
from .tritonrepo.writer import MANIFEST, Published, publish, versions


@dataclass
class Deployment:
    model_name: str
    target: str
    model: Artifact  # what the target's recipe made deployable (a graph, an engine, an IR)
    engines: dict[str, Artifact] | None = None  # compute capability -> engine (several GPU kinds)


def deployment_names(cfg: ModelConfig, targets: list[str]) -> list[tuple[str, str]]:
    """(Triton model name, target) pairs: <name> for one variant, <name>_<target> for 'all'."""
    if cfg.triton.deploy == "all":
        return [(f"{cfg.name}_{t}", t) for t in targets]
    return [(cfg.name, targets[0])]


def served_models(cfg: ModelConfig, d: Deployment) -> list[ServedModel]:
    t = next(x for x in cfg.targets if x.name == d.target)
    extra = {"engines": d.engines} if d.engines else {}
    return get(t.backend).serving(cfg, t, d.model_name, d.model.meta["io"], d.model, **extra)


def preflight(cfg: ModelConfig) -> None:
    """Where the build will publish, checked before any work (exit 2)."""
    repo = resolve_path(cfg.triton.repository)
    key = "triton.repository"
    if repo.exists() and not repo.is_dir():
        raise ConfigError(f"{key}: {repo} is a file, not a folder; name a folder for the Triton repository")
    probe = repo
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {repo} cannot be written ({probe} is read-only); choose a writable folder")
    names = [n for n, _ in deployment_names(cfg, [t.name for t in cfg.targets])]
    units = {n: "model" for n in names}
    if cfg.pipeline is not None:
        units.update({n: role for role, n in unit_names(cfg) if role != "model"})
        for label in ("preprocess", "postprocess"):  # the files it would publish, before any work
            step = getattr(cfg.pipeline, label)
            if step is not None:
                step_sources(step, f"pipeline.{label}")
    for n, role in units.items():
        key = "name" if role == "model" else "pipeline.name"
        d = repo / n
        if d.is_symlink() or (d.exists() and not d.is_dir()):
            raise ConfigError(
                f"{key}: {d} exists and is not a model folder (a file or a link); remove it or choose another name"
            )
        owner = repository_owner(d)
        mine = (cfg.name, role)
        # the model's own folder may hold what the writer handles (hand edits, planted links);
        # a pipeline unit never takes a folder it did not publish
        if owner is not None and owner != mine and not (role == "model" and owner == ("", "")):
            what = f"the {owner[1]} of model {owner[0]!r}" if owner[0] else "not published by mscompile"
            raise ConfigError(
                f"{key}: {d} is {what}; this build would publish its {role} there. Choose another name "
                "(or remove that folder)"
            )
    specific = set(cfg.triton.version_policy.specific or []) if cfg.triton.version_policy else set()
    for n in names:
        d = repo / n
        existing = versions(d)
        possible = [*existing, (existing[-1] + 1) if existing else 1]
        if specific and not specific & set(possible):
            raise ConfigError(
                f"triton.version_policy.specific: {sorted(specific)} names no version of {n} (it has "
                f"{', '.join(map(str, existing)) or 'none'}; this build would add {possible[-1]}); Triton would "
                "serve nothing. Name an existing version, or use latest"
            )


def repository_owner(model_dir: Path) -> tuple[str, str] | None:
    """(model.yaml name, role) of the unit that published `model_dir` (its latest
    version's build_manifest.json); ("", "") for a model folder mscompile did not
    write; None for a folder that serves nothing yet (free to take)."""
    import json

    vs = versions(model_dir)
    if not vs:
        return ("", "") if (model_dir / "config.pbtxt").exists() else None
    try:
        m = json.loads((model_dir / str(vs[-1]) / MANIFEST).read_text())
        return str(m["config"]["name"]), str(m.get("role", "model"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ("", "")


def write_repository(cfg: ModelConfig, deployments: list[Deployment], manifest: dict[str, Any]) -> list[Published]:
    repo = resolve_path(cfg.triton.repository)
    models = [(d, m) for d in deployments for m in served_models(cfg, d)]
    if cfg.pipeline is not None and cfg.triton.version_policy is None:
        # the ensemble being served pins a version of the model: keep the previous one
        # loaded until the new ensemble config is in place (a polling server never sees
        # an ensemble whose member is gone)
        for _, m in models:
            m.config.version_policy.latest.num_versions = 2
    texts = [to_text(m.config) for _, m in models]
    t = cfg.triton
    published = [
        publish(
            repo,
            m.name,
            m.files,
            text,
            dict(manifest, deployed_variant=d.target),
            lock_timeout=t.lock_timeout_s,
            keep_last=t.retention.keep_last if t.retention else None,
        )
        for (d, m), text in zip(models, texts, strict=True)
    ]
    if cfg.pipeline is not None:
        published += publish_pipeline(cfg, published[0], deployments[0], manifest)
    return published


def publish_pipeline(cfg: ModelConfig, main: Published, d: Deployment, manifest: dict[str, Any]) -> list[Published]:
    """The step models, then the ensemble pinned to the member versions just published:
    the members first, so the ensemble's switch is the last (atomic) step."""
    import tempfile
    from pathlib import Path

    repo = resolve_path(cfg.triton.repository)
    t = cfg.triton
    keep = t.retention.keep_last if t.retention else None
    out: list[Published] = []
    with tempfile.TemporaryDirectory(prefix="mscompile-ensemble-") as tmp:
        steps, (ename, ens, _) = ensemble_models(cfg, main.model, main.version, d.model.meta["io"], Path(tmp))
        versions: dict[str, int] = {}
        for name, mc, files in steps:
            mc.version_policy.latest.num_versions = 2  # the previous stays until the ensemble switches
            p = publish(
                repo,
                name,
                files,
                to_text(mc),
                dict(manifest, deployed_variant=d.target, role="pipeline step"),
                lock_timeout=t.lock_timeout_s,
                keep_last=keep,
            )
            versions[name] = p.version
            out.append(p)
        pin_steps(ens, versions)
        members = members_file(Path(tmp), ens)
        out.append(
            publish(
                repo,
                ename,
                {"members.json": members},
                to_text(ens),
                dict(manifest, deployed_variant=d.target, role="ensemble"),
                lock_timeout=t.lock_timeout_s,
                keep_last=keep,
            )
        )
    return out


def model_config(
    cfg: ModelConfig,
    name: str,
    io_sig: dict[str, Any],
    target: Any = None,
) -> Any:
    """The config.pbtxt message the target's backend would publish (first target by default)."""
    t = target if target is not None else cfg.targets[0]
    return get(t.backend).serving(cfg, t, name, io_sig, None)[0].config
