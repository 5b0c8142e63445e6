"""`mscompile build` for task: text-generation.

load_llm (the checkpoint and the transformers reference) runs once; each target's
backend recipe runs its steps through the same cached driver as every other
build; a variant that misses its gate fails the build (exit 3) unless on_fail:
skip; the deployed variant is published for Triton (its backend says what
Triton gets) with the same atomic, locked writer."""

from __future__ import annotations

import hashlib
import platform
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..artifacts import HfSource, sha256_path, walk_files
from ..backends import RecipeInputs, TargetOutcome, get
from ..build import BuildOptions, BuildResult, Variant, make_variant, stop_on_failures
from ..cache import Cache
from ..config import resolve_path
from ..errors import AccuracyGateError, ConfigError
from ..farm import farm_fingerprints, farm_outcome
from ..instruments import Instruments
from ..pipeline import Driver, Status, Step, tracked_libraries
from ..targets import run_recipe
from .config import LlmModelConfig, text_file


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def describe_checkpoint(cfg: LlmModelConfig, state: Any = None) -> HfSource:
    """The checkpoint folder (a factory's output is saved under `state`, the build's state
    folder; default: the one --cache-dir / $MSCOMPILE_HOME name)."""
    from ..loading import resolve_checkpoint

    if cfg.source.factory is not None:
        from ..state import State

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

    from ..loading import get_factory

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
        os.rename(tmp, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _data(cfg: LlmModelConfig) -> dict[str, Any]:
    v = cfg.validation
    return {
        key: text_file(key, value)[0] for key, value in (("validation.text", v.text), ("validation.prompts", v.prompts))
    }


def load_step(cfg: LlmModelConfig) -> Step:
    from mscompile.passes.llm import LoadLlm, LoadLlmConfig

    data = _data(cfg)
    v = cfg.validation
    return Step(
        "load_llm",
        LoadLlm,
        LoadLlmConfig(
            texts=str(data["validation.text"]),
            prompts=str(data["validation.prompts"]),
            texts_sha256=_sha(data["validation.text"]),
            prompts_sha256=_sha(data["validation.prompts"]),
            max_texts=v.max_texts,
            max_prompts=v.max_prompts,
            max_tokens=v.max_tokens,
            new_tokens=v.new_tokens,
        ),
    )


def _choose(cfg: LlmModelConfig, ok: list[Variant]) -> Variant | None:
    if not ok:
        return None
    want = cfg.triton.deploy
    if want == "fastest":  # by the figure each backend's profile measures, at its best batch

        def rank(v: Variant) -> float:
            speed = get(v.backend).speed
            return min((speed.rank(r) for r in (v.profile or {}).get("batches", [])), default=float("inf"))

        return min(ok, key=rank)
    if want:
        return next((v for v in ok if v.target == want), None)
    return ok[0]


def build_llm(cfg: LlmModelConfig, config_path: Path, opts: BuildOptions) -> BuildResult:

    from ..tasks import task_of

    task = task_of(cfg)
    t0 = time.perf_counter()
    state = opts.state
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = state.build_logs(cfg.name, stamp)
    instruments = Instruments(log_dir / "events.jsonl", quiet=opts.quiet)
    repo = resolve_path(cfg.triton.repository)
    if repo.exists() and not repo.is_dir():
        raise ConfigError(f"triton.repository: {repo} is a file, not a folder")
    source = describe_checkpoint(cfg, state)
    step = load_step(cfg)
    remote = opts.farm or {}
    inputs = RecipeInputs(None, None, reference=step.id, devices=farm_fingerprints(remote))  # type: ignore[arg-type]
    recipes = {t.name: get(t.backend).recipe(cfg, t, inputs) for t in cfg.targets}
    availability = {t.name: get(t.backend).available(t) for t in cfg.targets if t.name not in remote}
    driver = Driver(Cache(state.cache), instruments, force=opts.force, log_dir=log_dir)
    instruments.say(f"mscompile build {cfg.name} (text-generation): {len(cfg.targets)} target(s)")
    rec = driver.run_step(step, source)
    base = rec.output
    if rec.status is not Status.OK or base is None:  # as for a tensor model's shared steps
        raise ConfigError(f"pass {rec.id} was skipped: {rec.reason}")
    variants: list[Variant] = []
    for t in cfg.targets:
        recipe = recipes[t.name]
        if t.name in remote:
            out = farm_outcome(driver, cfg.name, t.name, remote[t.name], recipe, base, instruments)
        else:
            ok, why = availability[t.name]
            out = run_recipe(driver, recipe, base) if ok else TargetOutcome(Status.SKIPPED, reason=why)
        variants.append(make_variant(driver, t, task.precision(t), out, recipe.served_by))
    result = BuildResult(cfg.name, variants, list(driver.records.values()))
    stop_on_failures(result, opts, instruments, t0)
    ok = [v for v in variants if v.status is Status.OK]
    for v in ok:
        prof = recipes[v.target].profile
        if prof is not None and v.model is not None:
            r = driver.run_step(prof, v.model)
            if r.status is Status.OK and r.output is not None:
                v.profile = dict(r.output.meta)
    result.records = list(driver.records.values())
    chosen = _choose(cfg, ok)
    if chosen is None:
        reasons = "; ".join(f"{v.target}: {v.status.value} {v.reason}" for v in variants)
        err2 = AccuracyGateError(f"no variant to deploy, nothing was published ({reasons})")
        err2.result = result
        raise err2
    if cfg.triton.deploy == "fastest":
        result.selection = f"fastest passing variant is {chosen.target}"
        instruments.say(f"deploy: {result.selection}")
    target = next(t for t in cfg.targets if t.name == chosen.target)
    backend = get(target.backend)
    served = backend.serving(cfg, target, cfg.name, {}, chosen.model, chosen.profile)
    manifest = {
        "mscompile": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"platform": platform.platform(), "python": platform.python_version()},
        "task": "text-generation",
        "config_file": str(config_path),
        "config": cfg.model_dump(mode="json"),
        "sources": {"checkpoint": {"path": str(source.path), "digest": source.digest}},
        "reference": {"runtime": "transformers (CPU, float32)", **(base.meta or {})},
        "libraries": tracked_libraries([step, *(s for r in recipes.values() for s in r.planned())]),
        "passes": [r.to_json() for r in result.records],
        "variants": [v.to_json() for v in variants],
        "lineage": {r.id: r.key for r in result.records},
    }
    server_repo = cfg.triton.server_repository or str(repo)
    published = publish_served(cfg, repo, server_repo, served, dict(manifest, deployed_variant=chosen.target))
    result.published = published
    result.manifest = manifest
    result.seconds = time.perf_counter() - t0
    from ..report import write_report

    first = published[0]
    page = dict(manifest, model=first.model, version=first.version, deployed_variant=chosen.target)
    result.report_path = write_report(page, state.reports / cfg.name / f"{stamp}-v{first.version}.html")
    instruments.event("build_end", **result.to_json())
    return result


def publish_served(
    cfg: LlmModelConfig, repo: Path, server_repo: str, served: list[Any], manifest: dict[str, Any]
) -> list[Any]:
    """Publish the backend's models in order (an ensemble last: members.json in its version
    folder records the member versions published with it)."""
    import json
    import tempfile

    from ..tritonrepo.config import to_text
    from ..tritonrepo.writer import publish

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


def plan_llm(cfg: LlmModelConfig, opts: BuildOptions) -> dict[str, Any]:
    """The steps a build would run (cached or not) and what each target would publish."""
    from ..targets import plan_rows
    from ..tasks import task_of
    from ..tritonrepo.config import to_text
    from ..tritonrepo.writer import versions
    from .trtllm_repo import check_wiring

    state = opts.state
    driver = Driver(Cache(state.cache), Instruments(None, quiet=True), force=opts.force, log_dir=state.logs / "plan")
    source = describe_checkpoint(cfg, state)
    step = load_step(cfg)
    how, key, base = driver.plan_step(step, source)
    rows = [{"step": step.id, "pass": step.pass_cls.name, "action": how, "key": key, "target": None}]
    targets = {}
    server_repo = cfg.triton.server_repository or str(resolve_path(cfg.triton.repository))
    for t in cfg.targets:
        backend = get(t.backend)
        ok, why = backend.available(t)
        recipe = backend.recipe(cfg, t, RecipeInputs(None, None, reference=step.id))  # type: ignore[arg-type]
        rows += plan_rows(driver, recipe, base, backend, t)
        served = backend.serving(cfg, t, cfg.name, {}, None)
        files = {}
        configs = {}
        for m in served:
            d = f"{server_repo.rstrip('/')}/{m.name}"
            nxt = (versions(resolve_path(cfg.triton.repository) / m.name) or [0])[-1] + 1
            configs[m.name] = m.configure(nxt, d) if m.configure is not None else m.config
            for k, f in m.templates.items():
                if k != "model.py":  # generated step code: shown by its name only
                    files[f"{m.name}/{nxt}/{k}"] = f(nxt, d)
        details = backend.plan_details(cfg, t)
        stop = backend.stops_at(t) if ok else None
        targets[t.name] = {
            "backend": t.backend,
            "precision": task_of(cfg).precision(t),
            "available": ok,
            "reason": why,
            "served_by": recipe.served_by,
            "steps": [s.id for s in recipe.planned()],
            "if_needed": [],
            "stops_at": stop,
            "lines": details.get("lines", [])
            + [f"{name}:\n  " + text.rstrip().replace("\n", "\n  ") for name, text in files.items()],
            "models": {name: to_text(mc) for name, mc in configs.items()},
            "wiring_problems": check_wiring(configs),
            "io_from": "the backend's fixed text tensors",
        }
    return {"steps": rows, "targets": targets}


def validate_llm(cfg: LlmModelConfig, config_path: Path) -> list[str]:
    """The checkpoint folder, the text files and the tokenizer, without building."""
    from mscompile.passes.llm import read_lines

    lines = [f"{config_path}: configuration is valid ({len(cfg.targets)} target(s), task text-generation)"]
    source = describe_checkpoint(cfg)
    lines.append(f"checkpoint: {source.path} ({source.meta['files']} files, digest {source.digest[:12]}...)")
    for key, p in _data(cfg).items():
        lines.append(f"{key}: {p}: {len(read_lines(str(p)))} lines")
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
