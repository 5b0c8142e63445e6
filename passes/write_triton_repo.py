"""Write the deployed variant(s) into the Triton model repository.

Not cached: publishing is the build's side effect. Each deployed variant
becomes a version of its Triton model with a config.pbtxt built from the ONNX
graph's real inputs and outputs (compiler/tritonrepo)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mscompile.artifacts import Artifact, TrtEngine
from mscompile.config import ModelConfig, resolve_path
from mscompile.tritonrepo.config import build_model_config, to_text
from mscompile.tritonrepo.writer import Published, publish


@dataclass
class Deployment:
    model_name: str
    target: str
    model: Artifact  # OnnxModel or TrtEngine
    profile: dict[str, Any] | None = None


def deployment_names(cfg: ModelConfig, targets: list[str]) -> list[tuple[str, str]]:
    """(Triton model name, target) pairs: <name> for one variant, <name>_<target> for 'all'."""
    if cfg.triton.deploy == "all":
        return [(f"{cfg.name}_{t}", t) for t in targets]
    return [(cfg.name, targets[0])]


def model_files(model: Artifact) -> dict[str, Path]:
    """The files Triton loads: model.onnx (+ external data), or model.plan."""
    if isinstance(model, TrtEngine):
        return {"model.plan": model.plan_file}
    return {f.name: f for f in sorted(model.path.iterdir()) if f.is_file() and f.name.startswith("model.onnx")}


def model_config_text(
    cfg: ModelConfig, name: str, target: str, model: Artifact, profile: dict[str, Any] | None = None
) -> str:
    from mscompile.passes.profile import preferred_batch

    t = next(x for x in cfg.targets if x.name == target)
    profiles = [p["name"] for p in model.meta.get("profiles", [])] if isinstance(model, TrtEngine) else None
    preferred = [preferred_batch(profile["batches"])] if profile and len(profile["batches"]) > 1 else None
    return to_text(
        build_model_config(cfg, name, model.meta["io"], target=t, profiles=profiles, preferred_batch_size=preferred)
    )


def write_repository(cfg: ModelConfig, deployments: list[Deployment], manifest: dict[str, Any]) -> list[Published]:
    repo = resolve_path(cfg.triton.repository)
    # every config is built (and so checked) before anything is written
    texts = [model_config_text(cfg, d.model_name, d.target, d.model, d.profile) for d in deployments]
    t = cfg.triton
    vp = t.version_policy
    protect_latest = (
        vp.latest if vp is not None and vp.latest else (1 if vp is None else 0)
    )  # Triton's default: latest 1
    protect_specific = frozenset(vp.specific or []) if vp is not None else frozenset()
    return [
        publish(
            repo,
            d.model_name,
            model_files(d.model),
            text,
            dict(manifest, deployed_variant=d.target),
            lock_timeout=t.lock_timeout_s,
            keep_last=t.retention.keep_last if t.retention else None,
            protect_latest=protect_latest,
            protect_specific=protect_specific,
        )
        for d, text in zip(deployments, texts, strict=True)
    ]
