"""A build farm on Ray: `mscompile build a.yaml b.yaml --ray [ADDRESS]`.

The driver (this process) runs each model's shared steps (load, export,
optimize; load_llm for LLMs) once, into the cache; then every target (for a
TensorRT target with `gpus:`, every GPU kind) runs as a Ray task on a node that
has what the target's backend declares (`Backend.resources`: CPUs, GPUs,
memory, an accelerator-type resource). A task loads the model.yaml, finds the
shared steps in the cache and runs the target's recipe and profile through the
same cached driver as a local build, so the keys are the local build's and a
farm build and a local build share results. The cache folder (and the
model.yaml, data and working folder) must be visible at the same path on every
node: one machine, or a shared mount.

Then each model is built here as usual, replaying the targets from the cache
(device-bound steps keyed with the fingerprint of the node that ran them) and
publishing with the one atomic, locked writer. A task whose worker dies
(SIGKILL, node lost) is retried by Ray; a pass that fails stays a pass error
(exit 1), never a Ray traceback."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import Artifact
from .backends import get
from .builder import BuildOptions
from .errors import ConfigError, MscompileError
from .pipeline import Driver, Status
from .targets import run_recipe
from .tasks import load_config, task_of

RETRIES = 3  # a task whose worker process or node dies is run again up to this many times


@dataclass
class FarmTask:
    config: Path
    model: str
    target: str
    kind: str | None  # a GPU kind (Ray accelerator type) for TensorRT targets with gpus:
    options: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.model}/{self.target}" + (f"@{self.kind}" if self.kind else "")

    def row(self, **result: Any) -> dict[str, Any]:
        """The task's line in the farm report."""
        return {"model": self.model, "target": self.target, "kind": self.kind, "key": self.key, **result}


@dataclass
class FarmReport:
    address: str
    tasks: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        out = {"tasks": len(self.tasks), "done": 0, "cached": 0, "skipped": 0, "failed": 0, "retried": 0}
        for t in self.tasks:
            st = t.get("status")
            if st in ("OK", "FAIL"):
                out["done"] += 1
                if not t.get("ran"):
                    out["cached"] += 1
            if st == "FAIL" or st == "ERROR":
                out["failed"] += 1
            if st == "SKIPPED":
                out["skipped"] += 1
            out["retried"] += int(t.get("attempt", 1) > 1)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "seconds": round(self.seconds, 3), **self.counts(), "results": self.tasks}


def _options(res: dict[str, Any], kind: str | None) -> dict[str, Any]:
    opts: dict[str, Any] = {"num_cpus": res.get("num_cpus", 1)}
    if res.get("num_gpus"):
        opts["num_gpus"] = res["num_gpus"]
    if res.get("memory"):
        opts["memory"] = int(res["memory"])
    custom = dict(res.get("resources") or {})
    if kind:
        custom[f"accelerator_type:{kind}"] = 0.001
    if custom:
        opts["resources"] = custom
    return opts


def tasks_for(cfg: Any, config: Path) -> list[FarmTask]:
    out = []
    for t in cfg.targets:
        backend = get(t.backend)
        res = backend.resources(t)
        kinds = list(getattr(t, "gpus", []) or []) or [None]
        for kind in kinds:
            out.append(FarmTask(config, cfg.name, t.name, kind, _options(res, kind)))
    return out


def unschedulable(task: FarmTask, cluster: dict[str, float]) -> str | None:
    """Why no node of the cluster can take the task (Ray would wait forever), or None."""
    o = task.options
    if o.get("num_gpus") and cluster.get("GPU", 0) < o["num_gpus"]:
        return f"no node of the Ray cluster has {o['num_gpus']} GPU(s) (cluster: {cluster.get('GPU', 0):g})"
    for name, amount in (o.get("resources") or {}).items():
        if cluster.get(name, 0) < amount:
            what = f"no node of kind {name.split(':', 1)[1]}" if name.startswith("accelerator_type:") else "no node"
            return f"{what} in the Ray cluster (resource {name})"
    if cluster.get("CPU", 0) < o.get("num_cpus", 1):
        return f"the Ray cluster has {cluster.get('CPU', 0):g} CPUs, the task needs {o.get('num_cpus', 1)}"
    return None


def _node_info() -> dict[str, Any]:
    try:
        import ray

        node = ray.get_runtime_context().get_node_id()
        custom = []
        for n in ray.nodes():
            if n.get("NodeID") == node:
                custom = sorted(k for k in n.get("Resources", {}) if ":" in k and not k.startswith("node:"))
        return {"node_id": node, "node_resources": custom}
    except Exception:  # noqa: BLE001 - outside Ray (a direct call): no node facts
        return {"node_id": None, "node_resources": []}


def run_target_here(config: str, target: str, kind: str | None, cache_dir: str, force: bool) -> dict[str, Any]:
    """One target of one model, on this node, through the shared cache: the shared steps
    are found there (the driver ran them), the target's recipe and profile run here."""
    t0 = time.perf_counter()
    cfg = load_config(config)
    opts = BuildOptions(cache_dir=Path(cache_dir), force=force, quiet=True)
    state = opts.state
    t = next(x for x in cfg.targets if x.name == target)
    backend = get(t.backend)
    info = {"host": socket.gethostname(), "pid": os.getpid(), **_node_info()}
    ok, why = backend.available(t)
    fingerprint = backend.fingerprint(t)
    if not ok:
        return {"status": "SKIPPED", "reason": why, "fingerprint": fingerprint, "ran": [], **info}
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-farm-{target}" + (f"-{kind}" if kind else "")
    driver, base, recipes = shared_steps(cfg, state, stamp, force=False)
    if base is None:
        raise ConfigError(f"{cfg.name}: the shared steps did not produce a model on this node")
    recipe = recipes(t)
    shared = set(driver.records)
    driver.force = force  # --force re-runs the target's steps; the shared ones are the driver's
    out = run_recipe(driver, recipe, base)
    if out.status is Status.OK and out.model is not None and recipe.profile is not None:
        driver.run_step(recipe.profile, out.model)
    records = [r for k, r in driver.records.items() if k not in shared]
    return {
        "status": out.status.value,
        "reason": out.reason,
        "fingerprint": fingerprint,
        "ran": [r.id for r in records if not r.cached and r.status is not Status.SKIPPED],
        "cached_steps": [r.id for r in records if r.cached],
        "seconds": round(time.perf_counter() - t0, 3),
        **info,
    }


def _attempt_file(cache_dir: str, run: str, config: str, target: str, kind: str | None) -> Path:
    """Where a task records its attempts (a line per start): the driver counts the
    running tasks from these, the report the retries."""
    name = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run}/{config}/{target}/{kind}"))
    return Path(cache_dir).parent / "farm" / "attempts" / name


def farm_task(
    config: str, target: str, kind: str | None, cache_dir: str, cwd: str, force: bool, env: dict[str, str]
) -> dict[str, Any]:
    """The Ray task: errors come back as data (the driver reports them as the pass errors
    they are); only a dead worker raises, and Ray retries that."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    attempt_file = _attempt_file(cache_dir, env.get("MSCOMPILE_FARM_RUN", ""), config, target, kind)
    attempt_file.parent.mkdir(parents=True, exist_ok=True)
    with open(attempt_file, "a") as f:
        f.write(f"{os.getpid()}\n")
    attempt = len(attempt_file.read_text().splitlines())
    try:
        os.chdir(cwd)
        res = run_target_here(config, target, kind, cache_dir, force)
    except MscompileError as exc:
        res = {"status": "ERROR", "error": str(exc), "exit_code": exc.exit_code}
    except Exception as exc:  # noqa: BLE001 - a bug or a library failure: reported, not a Ray traceback
        res = {"status": "ERROR", "error": f"{type(exc).__name__}: {exc}", "exit_code": 1}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return dict(res, attempt=attempt)


class Farm:
    def __init__(self, address: str | None, cache_dir: Path, say: Any) -> None:
        self.address_given = address
        self.cache_dir = cache_dir
        self.say = say
        self.report = FarmReport(address or "local")
        self.address_checked = False

    def check_address(self, timeout: float = 10.0) -> None:
        """Before any work: Ray is installed, and a given address answers as a Ray cluster's
        GCS does (gRPC over HTTP/2 within `timeout`: a port that accepts and never answers
        would hang ray.init without limit)."""
        try:
            import grpc
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("--ray: Ray is not installed: pip install 'mscompile[ray]'") from None
        addr = self.address_given or ""
        if self.address_checked or addr in ("", "local", "auto"):
            return
        hostport = addr.split("://", 1)[-1]
        host, _, port = hostport.rpartition(":")
        hint = "give the head's address (host:port of its GCS, as `ray start --head` printed), auto, or nothing for a local one"
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"--ray {addr}: cannot join the Ray cluster: nothing answers there ({exc}); {hint}"
            ) from None
        channel = grpc.insecure_channel(f"{host or '127.0.0.1'}:{port}")
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise ConfigError(
                f"--ray {addr}: cannot join the Ray cluster: the port accepts connections but does not answer as "
                f"a Ray GCS (gRPC) within {timeout:.0f} s; {hint}"
            ) from None
        finally:
            channel.close()
        self.address_checked = True

    def _connect(self, timeout: float = 300.0) -> Any:
        """ray.init, bounded: a cluster that does not let us join within `timeout` is exit 2."""
        self.check_address()  # once: jobs.build_many checked it before any work
        import ray

        kwargs: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False}
        if self.address_given in (None, "", "local"):
            kwargs.update(address="local", include_dashboard=False)  # a new one, never another's
        else:
            kwargs.update(address=self.address_given)
        outcome: dict[str, Any] = {}

        def init() -> None:
            try:
                ray.init(**kwargs)
                outcome["ok"] = True
            except (ConnectionError, RuntimeError, ValueError) as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=init, name="ray-init", daemon=True)
        worker.start()
        worker.join(timeout)
        if "error" in outcome:
            raise ConfigError(f"--ray {self.address_given}: cannot join the Ray cluster: {outcome['error']}")
        if not outcome:
            raise ConfigError(
                f"--ray {self.address_given or 'local'}: Ray did not start or join within {timeout:.0f} s"
            )
        self.report.address = ray.get_runtime_context().gcs_address
        return ray

    def run(self, models: list[tuple[Any, Path]], force: bool) -> dict[tuple[Path, str], list[dict[str, Any]]]:
        """Run every target of every model; (config, target) -> the task results (one per GPU kind)."""
        t0 = time.perf_counter()
        ray = self._connect()
        try:
            cluster = ray.cluster_resources()
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            self.say(
                f"farm: Ray cluster {self.report.address}: {len(nodes)} node(s), "
                f"{cluster.get('CPU', 0):g} CPU, {cluster.get('GPU', 0):g} GPU"
            )
            remote = ray.remote(farm_task)
            env = {"MSCOMPILE_FARM_RUN": uuid.uuid4().hex}
            kill = os.environ.get("MSCOMPILE_FARM_KILL_AT")  # test hook: SIGKILL the first worker at a point
            if kill:
                env["MSCOMPILE_KILL_AT"] = kill
                if not os.environ.get("MSCOMPILE_FARM_KILL_ALWAYS"):  # default: only the first worker there
                    marker = self.cache_dir.parent / "farm" / f"kill-once-{env['MSCOMPILE_FARM_RUN']}"
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    env["MSCOMPILE_KILL_ONCE"] = str(marker)
            pending: dict[Any, FarmTask] = {}
            results: dict[tuple[Path, str], list[dict[str, Any]]] = {}
            for cfg, path in models:
                for task in tasks_for(cfg, path):
                    why = unschedulable(task, cluster)
                    if why:
                        res = task.row(status="SKIPPED", reason=why, ran=[])
                        results.setdefault((path, task.target), []).append(res)
                        self.report.tasks.append(res)
                        continue
                    ref = remote.options(max_retries=RETRIES, retry_exceptions=False, **task.options).remote(
                        str(path), task.target, task.kind, str(self.cache_dir), os.getcwd(), force, env
                    )
                    pending[ref] = task
            total = len(pending)
            self.say(
                f"farm: {total} task(s) queued" + (f", {len(self.report.tasks)} skipped" if self.report.tasks else "")
            )
            done = 0
            shown = (-1, -1)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
                if not ready:
                    running = sum(
                        _attempt_file(
                            str(self.cache_dir), env["MSCOMPILE_FARM_RUN"], str(t.config), t.target, t.kind
                        ).exists()
                        for t in pending.values()
                    )
                    if (running, done) != shown:
                        shown = (running, done)
                        self.say(f"farm: {len(pending) - running} queued, {running} running, {done} done")
                    continue
                ref = ready[0]
                task = pending.pop(ref)
                try:
                    res = task.row(**ray.get(ref))
                except Exception as exc:  # noqa: BLE001 - the worker died more often than Ray retries
                    res = task.row(
                        status="ERROR",
                        error=f"the farm task died {RETRIES + 1} times ({type(exc).__name__}); see the Ray logs",
                        exit_code=1,
                        ran=[],
                    )
                done += 1
                results.setdefault((task.config, task.target), []).append(res)
                self.report.tasks.append(res)
                where = f" on {res.get('host')}" if res.get("host") else ""
                detail = res.get("reason") or res.get("error") or f"{len(res.get('ran', []))} step(s) ran"
                retry = f", attempt {res['attempt']}" if res.get("attempt", 1) > 1 else ""
                self.say(
                    f"farm: [{done}/{total}] {task.key}: {res['status']}{where}{retry} ({detail}); "
                    f"{len(pending)} queued or running"
                )
            return results
        finally:
            self.report.seconds = time.perf_counter() - t0
            ray.shutdown()


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's outcome from its tasks (one per GPU kind)."""
    if len(results) == 1:
        return results[0]
    ok = [r for r in results if r["status"] in ("OK", "FAIL")]
    errors = [r for r in results if r["status"] == "ERROR"]
    if errors:
        return errors[0]
    if len(ok) > 1:  # one engine per GPU kind: replayed and published together
        return dict(ok[0], kinds=ok)
    if ok:
        return ok[0]
    reasons = "; ".join(f"{r['kind']}: {r.get('reason')}" for r in results)
    return dict(results[0], status="SKIPPED", reason=reasons)


def shared_steps(cfg: Any, state: Any, stamp: str, force: bool) -> tuple[Driver, Artifact | None, Any]:
    """A model's shared steps through the cache (its task's: load, export, optimize; or
    load_llm): (the driver that ran them, their output, target -> its recipe)."""
    return task_of(cfg).shared_steps(cfg, state, stamp, force)


def run_shared(cfg: Any, path: Path, opts: Any, say: Any) -> None:
    """The model's shared steps, here, into the cache the farm's nodes read."""
    task_of(cfg).preflight(cfg)
    stamp = time.strftime("%Y%m%d-%H%M%S") + "-farm-shared"
    driver, _, _ = shared_steps(cfg, opts.state, stamp, force=opts.force)
    last = list(driver.records.values())[-1]
    say(f"farm: {cfg.name}: shared steps {'from cache' if last.cached else 'done'} ({last.id})")
