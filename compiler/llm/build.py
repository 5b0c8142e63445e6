"""What task text-generation adds to the one build (build.py): the checkpoint folder
(a factory's output saved by content), the load_llm step (the transformers reference
every gate compares with), publishing what the deployed variant's backend serves,
and its plan and validate."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from mscompile.data import read_lines
from mscompile.passes.llm import LoadLlm, LoadLlmConfig

from ..artifacts import HfSource, sha256_path, walk_files
from ..backends import get
from ..data import text_file
from ..errors import ConfigError
from ..loading import get_factory, resolve_checkpoint
from ..pipeline import Step
from ..state import State
from ..tritonrepo.config import to_text
from ..tritonrepo.writer import publish
from .config import LlmModelConfig


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def describe_checkpoint(cfg: LlmModelConfig, state: Any = None) -> HfSource:
    """The checkpoint folder (a factory's output is saved under `state`, the build's state
    folder; default: the one --cache-dir / $MSCOMPILE_HOME name)."""
    if cfg.source.factory is not None:
        path = factory_checkpoint(cfg, state or State.resolve())
    else:
        path = resolve_checkpoint(cfg.source.checkpoint or "", "source.checkpoint", folder=True)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ConfigError(
            f"source.checkpoint: {path} is not a Hugging Face model folder (it needs config.json, "
            "*.safetensors and the tokenizer files)"
        )
    if not any(path.glob("*.safetensors")):
        raise ConfigError(f"source.checkpoint: {path} has no *.safetensors weights; save the model with safetensors")
    return HfSource(path, sha256_path(path), {"files": sum(1 for _ in walk_files(path))})


def factory_checkpoint(cfg: LlmModelConfig, state: Any) -> Path:
    """Run source.factory and save what it returns as a Hugging Face folder in the state
    folder, named by its content (the same model is the same folder, so the build's
    cache keys follow the weights, not the run)."""
    import os
    import shutil
    import tempfile

    spec = cfg.source.factory or ""
    fn = get_factory(spec)
    try:
        out = fn(**cfg.source.args)
    except Exception as exc:  # noqa: BLE001 - the user's code: its error is the report
        raise ConfigError(f"source.factory: {spec} raised {type(exc).__name__}: {exc}") from None
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ConfigError(f"source.factory: {spec} must return (model, tokenizer); it returned {type(out).__name__}")
    model, tok = out
    if not hasattr(model, "save_pretrained") or not hasattr(tok, "save_pretrained"):
        raise ConfigError(
            f"source.factory: {spec} must return a transformers causal LM and its tokenizer "
            f"(got {type(model).__name__}, {type(tok).__name__})"
        )
    root = state.root / "llm-sources" / cfg.name
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".saving-", dir=root))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        final = root / sha256_path(tmp)[:32]
        if final.is_dir():
            return final
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # else a parallel build saved the same files first
                raise
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _data(cfg: LlmModelConfig) -> dict[str, Any]:
    v = cfg.validation
    if v.text is None and v.prompts is None:
        return {}  # synthetic token ids (LoadLlm)
    missing = "validation.prompts" if v.prompts is None else "validation.text" if v.text is None else None
    if missing:
        raise ConfigError(f"{missing}: give both validation.text and validation.prompts, or neither (synthetic ids)")
    return {
        key: text_file(key, value)[0] for key, value in (("validation.text", v.text), ("validation.prompts", v.prompts))
    }


def load_step(cfg: LlmModelConfig) -> Step:
    data = _data(cfg)
    v = cfg.validation
    return Step(
        "load_llm",
        LoadLlm,
        LoadLlmConfig(
            texts=str(data["validation.text"]) if data else "",
            prompts=str(data["validation.prompts"]) if data else "",
            texts_sha256=_sha(data["validation.text"]) if data else "",
            prompts_sha256=_sha(data["validation.prompts"]) if data else "",
            max_texts=v.max_texts,
            max_prompts=v.max_prompts,
            max_tokens=v.max_tokens,
            new_tokens=v.new_tokens,
        ),
    )


def publish_served(
    cfg: LlmModelConfig, repo: Path, server_repo: str, served: list[Any], manifest: dict[str, Any]
) -> list[Any]:
    """Publish the backend's models in order (an ensemble last: members.json in its version
    folder records the member versions published with it)."""
    import json
    import tempfile

    published: list[Any] = []
    versions: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="mscompile-llm-") as tmp:
        for m in served:
            model_dir = f"{server_repo.rstrip('/')}/{m.name}"
            files = dict(m.files)
            if m.config.platform == "ensemble":
                members = Path(tmp) / f"{m.name}-members.json"
                members.write_text(json.dumps(versions, indent=2, sort_keys=True) + "\n")
                files["members.json"] = members
            templates = {k: (lambda version, f=f, d=model_dir: f(version, d)) for k, f in m.templates.items()}
            text: Any = to_text(m.config)
            if m.configure is not None:
                text = lambda version, m=m, d=model_dir: to_text(m.configure(version, d))  # noqa: E731
            p = publish(
                repo,
                m.name,
                files,
                text,
                manifest,
                lock_timeout=cfg.triton.lock_timeout_s,
                keep_last=cfg.triton.retention.keep_last if cfg.triton.retention else None,
                templates=templates,
            )
            versions[m.name] = p.version
            published.append(p)
    return published


def validate_llm(cfg: LlmModelConfig, config_path: Path) -> list[str]:
    """The checkpoint folder, the text files and the tokenizer, without building."""
    lines = [f"{config_path}: configuration is valid ({len(cfg.targets)} target(s), task text-generation)"]
    source = describe_checkpoint(cfg)
    lines.append(f"checkpoint: {source.path} ({source.meta['files']} files, digest {source.digest[:12]}...)")
    data = _data(cfg)
    for key, p in data.items():
        lines.append(f"{key}: {p}: {len(read_lines(str(p)))} lines")
    if not data:
        lines.append("validation: no text given: the gates use seeded synthetic token ids")
    try:
        from transformers import AutoConfig, AutoTokenizer

        conf = AutoConfig.from_pretrained(str(source.path))
        tok = AutoTokenizer.from_pretrained(str(source.path))
    except Exception as exc:  # noqa: BLE001 - the library's own message is the report
        raise ConfigError(f"source.checkpoint: transformers cannot load {source.path}: {exc}") from None
    lines.append(
        f"model: {conf.model_type} ({', '.join(getattr(conf, 'architectures', None) or ['?'])}), vocab {len(tok)}"
    )
    for t in cfg.targets:
        backend = get(t.backend)
        ok, why = backend.available(t)
        stop = backend.stops_at(t) if ok else None
        state = (
            "can be built here" if ok and not stop else (f"runs here until {stop}" if ok else f"SKIPPED here: {why}")
        )
        lines.append(f"target {t.name} ({t.backend}): {state}")
    return lines
