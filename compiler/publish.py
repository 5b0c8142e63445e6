"""Publish the deployed variant(s) into the Triton model repository.

Not a pass and not cached: publishing is the build's side effect. Each deployed
variant's backend says what Triton gets (one or more models, each a
ModelConfig message and the files of its version folder); every config is
built, and so checked against Triton's schema, before anything is written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .artifacts import Artifact
from .backends import ServedModel, get
from .config import ModelConfig, resolve_path
from .tritonrepo.config import to_text
from .tritonrepo.writer import Published, publish


@dataclass
class Deployment:
    model_name: str
    target: str
    model: Artifact  # what the target's recipe made deployable (a graph, an engine, an IR)
    profile: dict[str, Any] | None = None


def deployment_names(cfg: ModelConfig, targets: list[str]) -> list[tuple[str, str]]:
    """(Triton model name, target) pairs: <name> for one variant, <name>_<target> for 'all'."""
    if cfg.triton.deploy == "all":
        return [(f"{cfg.name}_{t}", t) for t in targets]
    return [(cfg.name, targets[0])]


def served_models(cfg: ModelConfig, d: Deployment) -> list[ServedModel]:
    t = next(x for x in cfg.targets if x.name == d.target)
    return get(t.backend).serving(cfg, t, d.model_name, d.model.meta["io"], d.model, d.profile)


def write_repository(cfg: ModelConfig, deployments: list[Deployment], manifest: dict[str, Any]) -> list[Published]:
    repo = resolve_path(cfg.triton.repository)
    models = [(d, m) for d in deployments for m in served_models(cfg, d)]
    texts = [to_text(m.config) for _, m in models]
    t = cfg.triton
    vp = t.version_policy
    protect_latest = (
        vp.latest if vp is not None and vp.latest else (1 if vp is None else 0)
    )  # Triton's default: latest 1
    protect_specific = frozenset(vp.specific or []) if vp is not None else frozenset()
    return [
        publish(
            repo,
            m.name,
            m.files,
            text,
            dict(manifest, deployed_variant=d.target),
            lock_timeout=t.lock_timeout_s,
            keep_last=t.retention.keep_last if t.retention else None,
            protect_latest=protect_latest,
            protect_specific=protect_specific,
        )
        for (d, m), text in zip(models, texts, strict=True)
    ]


def model_config(
    cfg: ModelConfig,
    name: str,
    io_sig: dict[str, Any],
    target: Any = None,
    profile: dict[str, Any] | None = None,
) -> Any:
    """The config.pbtxt message the target's backend would publish (first target by default)."""
    t = target if target is not None else cfg.targets[0]
    return get(t.backend).serving(cfg, t, name, io_sig, None, profile)[0].config
