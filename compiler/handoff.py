"""Hand-off to a Triton server: `serve-check` and `deploy`.

serve-check takes a published version to a Triton server (one it starts on
loopback, or a running one), loads it in explicit mode, replays the validation
set over gRPC and HTTP at a chosen concurrency, compares what the server
answers with the PyTorch reference under the deployed target's own tolerance,
reports client latency percentiles, throughput and Triton's own statistics
(queue and compute time per request, executions: dynamic batching made
visible), and unloads what it loaded.

deploy hands the latest published version to a running explicit-mode server
that reads the same repository (a shared volume): the server loads it through
the repository API, the same check runs, and when either fails the config on
disk is put back to the versions the server served before, the server loads
those again, and the command exits non-zero (1: did not load, 3: wrong answers).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from mscompile.accuracy import load_reference

from .builder import assemble
from .cache import Cache
from .config import ensemble_name, resolve_path, step_names
from .ensemble import chain_reference
from .errors import ConfigError, MscompileError, ServedWrongError, ServeLoadError
from .instruments import Instruments
from .pipeline import Driver
from .report import latest_manifest
from .sections import IOSpec, OutputSpec
from .serving.check import Replay, check_clients, deployed_target, tensor_judge, verdict
from .serving.perf import PerfOptions, input_data, sweep, table_lines
from .serving.process import LocalProcess, free_port
from .serving.tune import NOISE, Candidate, pareto, score, search, start_point
from .tritonrepo.config import parse, to_text, triton_pb
from .tritonrepo.writer import replace_config, roll_back, serve_only


def find_tritonserver(given: str | None) -> Path:
    """--tritonserver PATH, or `tritonserver` on PATH (exit 2 when neither)."""
    if given:
        p = Path(given).expanduser()
        if not p.is_file() or not os.access(p, os.X_OK):
            raise ConfigError(
                f"--tritonserver: {p} is not an executable file; give the path of the tritonserver binary"
            )
        return p
    found = shutil.which("tritonserver")
    if not found:
        raise ConfigError(
            "no Triton server to check against: give --url of a running server, --tritonserver PATH, "
            "or put tritonserver on PATH (NVIDIA's container has it at /opt/tritonserver/bin/tritonserver)"
        )
    return Path(found)


class LocalServer:
    """tritonserver on loopback: free ports, explicit model control by default, no
    auto-complete (so the generated config is what gets checked), log to a file."""

    def __init__(
        self,
        binary: Path,
        repository: Path,
        log_path: Path,
        extra_args: list[str] | tuple[str, ...] = (),
        mode: str = "explicit",
        start_timeout: float = 120.0,
    ) -> None:
        self.binary, self.repository, self.log_path = binary, repository, log_path
        self.extra_args, self.mode, self.start_timeout = list(extra_args), mode, start_timeout
        self.process: LocalProcess | None = None
        self.http_port = self.grpc_port = 0

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.process.proc if self.process else None

    def log_tail(self, lines: int = 15) -> str:
        return self.process.log_tail(lines) if self.process else ""

    def start(self) -> LocalServer:
        import tritonclient.http as http

        self.http_port, self.grpc_port = free_port(), free_port()
        cmd = [
            str(self.binary),
            f"--model-repository={self.repository}",
            f"--model-control-mode={self.mode}",
            "--disable-auto-complete-config",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            # its requests are done when it is stopped: do not wait the default 30 s for the
            # clients' idle keep-alive connections (a later --tritonserver-arg overrides it)
            "--exit-timeout-secs=3",
            *self.extra_args,
        ]
        env = dict(os.environ)
        env.pop("LD_LIBRARY_PATH", None)  # the server's own libraries, not this Python's
        if self.log_path.exists():
            self.log_path.unlink()  # this start's log only
        client = http.InferenceServerClient(self.http_url)
        self.process = LocalProcess(
            "tritonserver", cmd, self.log_path, client.is_server_live, env=env, start_timeout=self.start_timeout
        ).start()
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the check -------------------------------------------------------------------------


@dataclass
class CheckOptions:
    http_url: str | None = None
    grpc_url: str | None = None
    model_name: str | None = None
    version: int | None = None
    concurrency: int = 8
    load_timeout: float = 120.0
    unload: bool = True  # unload what this check loaded
    load: bool = True  # ask the server to load (explicit mode); False: it must already serve it
    server_log: Callable[[], str] | None = None  # the log of a server started for the check
    progress: Callable[[str], None] = field(default=lambda _m: None)
    perf: PerfOptions | None = None  # also measure capacity with perf_analyzer (serve-check --perf)


def _served_version(repo: Path, name: str, version: int | None) -> tuple[int, dict[str, Any]]:
    manifest, _ = latest_manifest(repo, name, version)
    return int(manifest["version"]), manifest


def validation_reference(
    cfg: Any, state: Any
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
    """Validation feeds, labels, and the PyTorch reference outputs (the build's cached step)."""
    plan = assemble(cfg, state)
    log_dir = state.build_logs(cfg.name, "serve-check-" + time.strftime("%Y%m%d-%H%M%S"))
    driver = Driver(
        Cache(state.cache), Instruments(log_dir / "events.jsonl", quiet=True), log_dir=log_dir, datasets=plan.datasets
    )
    rec = driver.run_step(plan.common.steps[0], plan.source)
    feeds, labels = plan.datasets.get(plan.validation)
    return feeds, load_reference(rec.output), labels  # type: ignore[arg-type]


def _clients(opts: CheckOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if opts.grpc_url:
        import tritonclient.grpc as grpc

        out["grpc"] = grpc
    if opts.http_url:
        import tritonclient.http as http

        out["http"] = http
    return out


def _connect(opts: CheckOptions, command: str) -> tuple[dict[str, Any], Any]:
    """The client libraries for the given addresses and a control client to a live server
    (ServeLoadError when it cannot be reached, ConfigError without an address)."""
    libs = _clients(opts)
    if not libs:
        raise ConfigError(f"{command} needs the server's address: --url (HTTP) and/or --grpc-url")
    first = next(iter(libs))
    where = opts.grpc_url if first == "grpc" else opts.http_url
    control = libs[first].InferenceServerClient(where)
    try:
        live = control.is_server_live()
    except Exception as exc:  # noqa: BLE001 - connection refused and the like
        raise ServeLoadError(f"cannot reach a Triton server at {where}: {_triton_error(exc)}") from None
    if not live:
        raise ServeLoadError(f"the Triton server at {where} is not live")
    return libs, control


def _triton_error(exc: BaseException) -> str:
    msg = getattr(exc, "message", None)
    text = msg() if callable(msg) else str(exc)
    return " ".join(str(text).split())


def _stats(client: Any, name: str, version: int) -> dict[str, int]:
    s = (
        client.get_inference_statistics(name, str(version), as_json=True)
        if _is_grpc(client)
        else (client.get_inference_statistics(name, str(version)))
    )
    m = next((x for x in s.get("model_stats", []) if str(x.get("version")) == str(version)), None) or {}
    inf = m.get("inference_stats", {})

    def pick(k: str, f: str) -> int:
        return int(inf.get(k, {}).get(f, 0))

    return {
        "inference_count": int(m.get("inference_count", 0)),
        "execution_count": int(m.get("execution_count", 0)),
        "success": pick("success", "count"),
        "fail": pick("fail", "count"),
        "queue_ns": pick("queue", "ns"),
        "compute_input_ns": pick("compute_input", "ns"),
        "compute_infer_ns": pick("compute_infer", "ns"),
        "compute_output_ns": pick("compute_output", "ns"),
    }


def _is_grpc(client: Any) -> bool:
    return type(client).__module__.startswith("tritonclient.grpc")


def _served_config(client: Any, name: str, version: int) -> dict[str, Any]:
    if _is_grpc(client):
        return client.get_model_config(name, str(version), as_json=True)["config"]
    return client.get_model_config(name, str(version))


class TritonClient:
    """Triton over one protocol (tritonclient's gRPC or HTTP module): one request per
    validation sample (the server's batcher may merge them), a client per thread; the
    row gets Triton's own statistics of the requests."""

    prefix_failures = True

    def __init__(
        self,
        lib: Any,
        url: str,
        control: Any,
        name: str,
        version: int,
        served: dict[str, Any],
        feeds: dict[str, np.ndarray],
        proto: str,
        batch_axis: bool = True,
    ) -> None:
        self.protocol, self.lib, self.url, self.control = proto, lib, url, control
        self.name, self.version, self.feeds = name, version, feeds
        # one request per sample where the server takes a batch dimension: Triton's own
        # (max_batch_size > 0), or the model's batch axis left variable in a config
        # without batching (its model runs each request at its own shape)
        first = [list(i.get("dims", []))[:1] for i in served.get("input", [])]
        self.batching = int(served.get("max_batch_size", 0)) > 0 or (
            batch_axis and bool(first) and all(d in (["-1"], [-1]) for d in first)
        )
        inputs = [(i["name"], i["data_type"].replace("TYPE_", "")) for i in served.get("input", [])]
        self.outputs = [o["name"] for o in served.get("output", [])]
        missing = [k for k, _ in inputs if k not in feeds]
        if missing:
            raise ConfigError(f"the served model's inputs {missing} are not in the validation set")
        self.dtypes = {k: ("BYTES" if t == "STRING" else t) for k, t in inputs}
        self.local = threading.local()
        self.before: dict[str, int] = {}

    @property
    def requests(self) -> int:
        return int(next(iter(self.feeds.values())).shape[0]) if self.batching else 1

    def send(self, i: int) -> list[np.ndarray]:
        from tritonclient.utils import triton_to_np_dtype

        if not hasattr(self.local, "client"):
            self.local.client = self.lib.InferenceServerClient(self.url)
        reqs = []
        for k, t in self.dtypes.items():
            x = self.feeds[k][i : i + 1] if self.batching else self.feeds[k]
            x = x.astype(triton_to_np_dtype(t)) if t != "BYTES" else x
            r = self.lib.InferInput(k, list(x.shape), t)
            r.set_data_from_numpy(x)
            reqs.append(r)
        outs = [self.lib.InferRequestedOutput(o) for o in self.outputs]
        res = self.local.client.infer(self.name, reqs, model_version=str(self.version), outputs=outs)
        return [res.as_numpy(o) for o in self.outputs]

    def failed(self, exc: Exception) -> MscompileError:
        return ServeLoadError(
            f"{self.name} version {self.version} loaded but a {self.protocol} request failed: {_triton_error(exc)}"
        )

    def begin(self) -> None:
        self.before = _stats(self.control, self.name, self.version)

    def end(self, done: Replay) -> dict[str, Any]:
        after = _stats(self.control, self.name, self.version)
        deadline = time.monotonic() + 10.0
        while after["success"] - self.before["success"] < len(done.latencies) and time.monotonic() < deadline:
            time.sleep(0.05)  # the server records a request's statistics just after its response
            after = _stats(self.control, self.name, self.version)
        return {"triton": _per_request(self.before, after)}

    def answers(self, answers: list[list[np.ndarray]]) -> dict[str, np.ndarray]:
        return {o: np.concatenate([r[j] for r in answers], axis=0) for j, o in enumerate(self.outputs)}


def _per_request(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    d = {k: after[k] - before[k] for k in after}
    n = max(1, d["success"])
    return {
        "inference_count": d["inference_count"],
        "execution_count": d["execution_count"],
        "failed_requests": d["fail"],
        "mean_batch": round(d["inference_count"] / d["execution_count"], 2) if d["execution_count"] else None,
        "queue_ms_per_request": round(d["queue_ns"] / n / 1e6, 3),
        "compute_ms_per_request": round(
            (d["compute_input_ns"] + d["compute_infer_ns"] + d["compute_output_ns"]) / n / 1e6, 3
        ),
    }


def serve_check(cfg: Any, state: Any, opts: CheckOptions) -> dict[str, Any]:
    """Load, replay, compare, report, unload. Raises ServeLoadError (exit 1) when the
    model does not load or a request fails, ServedWrongError (exit 3) when the answers
    miss the gate; returns the summary otherwise (and inside the error as `.summary`)."""
    repo = resolve_path(cfg.triton.repository)
    name = opts.model_name or cfg.name
    version, manifest = _served_version(repo, name, opts.version)
    target_name = manifest.get("deployed_variant")
    target = deployed_target(cfg, name, version, target_name)
    libs, control = _connect(opts, "serve-check")
    summary: dict[str, Any] = {"model": name, "version": version, "variant": target_name, "repository": str(repo)}
    loaded: list[str] = []
    failures: list[str] = []
    try:
        summary["load_seconds"] = _load(control, name, version, opts, loaded)
        feeds, ref, labels = validation_reference(cfg, state)
        results, fails = _check(
            libs, control, name, version, feeds, ref, labels, cfg.io, target.tolerance, opts, cfg.padding_mask()
        )
        failures += fails
        gate = next((v for v in manifest.get("variants", []) if v.get("name") == target_name), {})
        summary.update(
            protocols=results,
            tolerance=target.tolerance.model_dump(exclude_none=True),
            gate_metrics=gate.get("metrics", {}),
        )
        if opts.perf is not None and not failures:  # capacity of a model that answers right
            summary["capacity"] = capacity(control, name, version, feeds, cfg.io.has_batch_axis(), opts)
        if cfg.pipeline is not None and opts.model_name in (None, cfg.name):
            summary["pipeline"] = _check_pipeline(cfg, repo, libs, control, opts, loaded)
            failures += [f"{summary['pipeline']['model']}: {f}" for f in summary["pipeline"]["failures"]]
    finally:
        if loaded and opts.unload:
            try:
                for m in reversed(loaded):
                    control.unload_model(m)
                summary["unloaded"] = True
            except Exception:  # noqa: BLE001 - best effort: the check's verdict stands
                summary["unloaded"] = False
    return verdict(
        summary, failures, f"{name} version {version} serves answers outside the gate of target {target_name!r}"
    )


def capacity(
    control: Any, name: str, version: int, feeds: dict[str, np.ndarray], batch_axis: bool, opts: CheckOptions
) -> dict[str, Any]:
    """perf_analyzer's sweep of the loaded model over each protocol checked, on requests
    made from the validation samples at the served shapes (serving/perf.py)."""
    assert opts.perf is not None
    served = _served_config(control, name, version)
    dtypes = {i["name"]: i["data_type"].replace("TYPE_", "").replace("STRING", "BYTES") for i in served["input"]}
    batched = int(served.get("max_batch_size", 0)) > 0
    data = input_data(feeds, dtypes, batched, batch_axis, opts.perf.samples)
    out: dict[str, Any] = {
        "tool": "perf_analyzer",
        "settings": {
            "measurement_ms": opts.perf.measurement_ms,
            "stability_percent": opts.perf.stability_percent,
            "max_trials": opts.perf.max_trials,
            "requests": f"batch 1, cycling through {len(data['data'])} validation samples",
        },
    }
    for proto, url in (("grpc", opts.grpc_url), ("http", opts.http_url)):
        if url:
            stats = lambda: _stats(control, name, version)  # noqa: E731
            out[proto] = sweep(name, version, url, proto, data, opts.perf, stats, opts.progress)
    return out


def _load(control: Any, name: str, version: int, opts: CheckOptions, loaded: list[str]) -> float | None:
    """Load `name` unless `version` is READY already; seconds it took (None: was loaded)."""
    if _ready(control, name, version):
        return None
    if not opts.load:
        raise ServeLoadError(f"the server does not serve {name} version {version}")
    opts.progress(f"loading {name} version {version}")
    t0 = time.perf_counter()
    try:
        control.load_model(name)
    except Exception as exc:  # noqa: BLE001 - the server's own message is the report
        raise ServeLoadError(f"Triton did not load {name}: {why_not_loaded(control, name, exc, opts)}") from None
    loaded.append(name)
    deadline = time.monotonic() + opts.load_timeout
    while not _ready(control, name, version):
        if time.monotonic() > deadline:
            raise ServeLoadError(
                f"{name} version {version} was not READY within {opts.load_timeout:.0f} s "
                f"(state: {_state(control, name, version)})"
            )
        time.sleep(0.2)
    return round(time.perf_counter() - t0, 3)


def _check(
    libs: dict[str, Any],
    control: Any,
    name: str,
    version: int,
    feeds: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    labels: np.ndarray | None,
    io: Any,
    tolerance: Any,
    opts: CheckOptions,
    mask: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Replay `feeds` over every protocol and gate the answers; (per protocol, failures).
    `mask`: the padding-mask input (token-level outputs judged at real positions)."""
    served = _served_config(control, name, version)
    clients = [
        TritonClient(
            lib,
            opts.grpc_url if proto == "grpc" else opts.http_url,
            control,
            name,
            version,
            served,
            feeds,
            proto,
            batch_axis=io.has_batch_axis(),
        )  # type: ignore[arg-type]
        for proto, lib in libs.items()
    ]
    return check_clients(
        clients,
        clients[0].requests,
        opts.concurrency,
        tensor_judge(ref, labels, io, tolerance, feeds, mask),
        opts.progress,
        name,
    )


def _check_pipeline(
    cfg: Any, repo: Path, libs: dict[str, Any], control: Any, opts: CheckOptions, loaded: list[str]
) -> dict[str, Any]:
    """The ensemble: raw inputs in (e.g. strings), the chain's outputs out, against the
    PyTorch chain under pipeline.tolerance."""
    name = ensemble_name(cfg)
    version, _ = _served_version(repo, name, None)
    load_s = _load(control, name, version, opts, loaded)  # Triton loads the members with it
    raw, ref = chain_reference(cfg)
    io = IOSpec(inputs=cfg.inputs, outputs=[OutputSpec(name=k) for k in ref])
    results, failures = _check(libs, control, name, version, raw, ref, None, io, cfg.pipeline.tolerance, opts)
    return {
        "model": name,
        "version": version,
        "load_seconds": load_s,
        "protocols": results,
        "tolerance": cfg.pipeline.tolerance.model_dump(exclude_none=True),
        "passed": not failures,
        "failures": failures,
    }


def why_not_loaded(client: Any, name: str, exc: BaseException, opts: CheckOptions) -> str:
    """The load error as the server tells it: the API's message, the repository index's
    reason, and the server's own error lines about the model when its log is at hand."""
    parts = [_triton_error(exc)]
    try:
        for m in _index(client):
            reason = " ".join(str(m.get("reason", "")).split())
            if m.get("name") == name and reason and reason not in parts:
                parts.append(reason)
    except Exception:  # noqa: BLE001 - the API message stands alone
        pass
    if opts.server_log is not None:
        for line in opts.server_log().splitlines():
            if line.startswith("E") and f"'{name}'" in line or (line.startswith("E") and f" {name}" in line):
                text = line.split("] ", 1)[-1].strip().strip('"')
                if text not in parts:
                    parts.append(text)
    text = "; ".join(parts[:4])
    if "unknown Execution Accelerator 'openvino'" in text:
        text += (
            " (this Triton's onnxruntime backend was built without ONNX Runtime's OpenVINO execution provider: "
            "use a backend built with it (cmake -DTRITON_ENABLE_ONNXRUNTIME_OPENVINO=ON), "
            "drop cpu.accelerator, or serve the IR with a backend: openvino target; the build gated this variant "
            "on ONNX Runtime and on the OpenVINO runtime directly, not through that provider)"
        )
    return text


def _ready(client: Any, name: str, version: int) -> bool:
    try:
        return bool(client.is_model_ready(name, str(version)))
    except Exception:  # noqa: BLE001 - unknown model: not ready
        return False


def _index(client: Any) -> list[dict[str, Any]]:
    if _is_grpc(client):
        return client.get_model_repository_index(as_json=True).get("models", [])
    return client.get_model_repository_index()


def _state(client: Any, name: str, version: int) -> str:
    for m in _index(client):
        if m.get("name") == name and str(m.get("version")) == str(version):
            return f"{m.get('state')}: {m.get('reason', '')}".strip(": ")
    return "unknown"


def served_now(client: Any, name: str) -> list[int]:
    """The versions of `name` the server has READY."""
    return sorted(
        int(m["version"])
        for m in _index(client)
        if m.get("name") == name and m.get("state") == "READY" and str(m.get("version", "")).isdigit()
    )


# -- deploy ----------------------------------------------------------------------------


def deploy(cfg: Any, state: Any, opts: CheckOptions) -> dict[str, Any]:
    """Serve the latest published version on a running explicit-mode server that reads
    this repository; check it; on failure put back what the server served before.
    With a pipeline, the model, the step models and the ensemble go as one unit."""
    repo = resolve_path(cfg.triton.repository)
    name = opts.model_name or cfg.name
    version, _ = _served_version(repo, name, opts.version)
    unit = [(name, version)]
    if cfg.pipeline is not None and name == cfg.name:
        # the ensemble's latest version pins its members: deploy exactly those
        ens = ensemble_name(cfg)
        ens_version, _ = _served_version(repo, ens, None)
        members = json.loads((repo / ens / str(ens_version) / "members.json").read_text())
        if members.get(name) != version:
            raise ConfigError(
                f"deploy: the latest {ens} (version {ens_version}) serves {name} version {members.get(name)}, "
                f"not {version}; deploy the pipeline's version of {name} (--version {members.get(name)})"
            )
        unit = [(m, int(members[m])) for m in step_names(cfg).values()] + unit + [(ens, ens_version)]
    libs, control = _connect(opts, "deploy")
    before = {m: served_now(control, m) for m, _ in unit}
    previous: dict[str, str] = {}
    wrote: dict[str, str] = {}
    for m, v in unit:
        previous[m], wrote[m] = serve_only(repo, m, {v}, cfg.triton.lock_timeout_s)
    summary: dict[str, Any] = {
        "model": name,
        "version": version,
        "served_before": before[name],
        "unit": {m: v for m, v in unit},
    }
    opts.progress(f"asking the server to load {name} version {version} (serving {before[name] or 'nothing'} now)")
    failure: MscompileError | None = None
    current = name
    try:
        for m, _v in unit:
            current = m
            control.load_model(m)
        check = serve_check(cfg, state, CheckOptions(**{**opts.__dict__, "version": version, "unload": False}))
        summary["check"] = check
    except MscompileError as exc:
        failure = exc
        summary["check"] = exc.summary
    except Exception as exc:  # noqa: BLE001 - the server's load error
        failure = ServeLoadError(f"Triton did not load {current}: {why_not_loaded(control, current, exc, opts)}")
    if failure is None:
        summary.update(deployed=True, served_now=served_now(control, name))
        return summary
    # roll back, the ensemble first: each config serves what the server served before, reloaded
    opts.progress(f"rolling back to {before[name] or 'nothing'}: {failure}")
    for m, _v in reversed(unit):
        # only what deploy wrote, under the lock: a config a build published meanwhile stands
        if not roll_back(repo, m, wrote[m], previous[m], set(before[m]) or None, cfg.triton.lock_timeout_s):
            failure = type(failure)(
                f"{failure}; {m}'s config.pbtxt was replaced by another writer (a build) since deploy wrote it: "
                "it is left as that writer published it"
            )
            continue
        try:
            if before[m]:
                control.load_model(m)
            else:
                control.unload_model(m)
        except Exception as exc:  # noqa: BLE001
            failure = type(failure)(f"{failure}; and the rollback of {m} failed too: {_triton_error(exc)}")
    summary.update(
        deployed=False, rolled_back_to=before[name], served_now=served_now(control, name), error=str(failure)
    )
    failure.summary = summary
    raise failure


def summary_lines(s: dict[str, Any]) -> list[str]:
    """The human summary of a serve-check."""
    lines = [f"{s['model']} version {s['version']}" + (f" (variant {s['variant']}):" if s.get("variant") else ":")]
    for proto, r in s.get("protocols", {}).items():
        m = r["metrics"]
        shown = ", ".join(f"{k}={v:.6g}" for k, v in m.items() if isinstance(v, float | int))
        lat = r.get("latency_ms", {})
        speed = (
            f"{r['throughput_rps']} req/s" if "throughput_rps" in r else f"{r.get('throughput_tokens_per_s')} tokens/s"
        )
        lines.append(
            f"  {proto:5} {'OK  ' if r['passed'] else 'FAIL'} {r['requests']} requests at concurrency "
            f"{r['concurrency']}: client-side "
            + ", ".join(f"{k} {v} ms" for k, v in lat.items())
            + f", {speed} (the check's own requests, not a capacity measurement)"
        )
        lines.append(f"        vs the reference: {shown}")
        t = r.get("triton")
        if t:
            lines.append(
                f"        Triton: {t['inference_count']} inferences in {t['execution_count']} executions "
                f"(mean batch {t['mean_batch']}), queue {t['queue_ms_per_request']} ms/request, "
                f"compute {t['compute_ms_per_request']} ms/request"
            )
    if s.get("pipeline"):
        lines += summary_lines(s["pipeline"])
    cap = s.get("capacity")
    if cap:
        st = cap["settings"]
        for proto in ("grpc", "http"):
            if proto in cap:
                lines.append(
                    f"  capacity over {proto} (perf_analyzer, {st['requests']}, windows of "
                    f"{st['measurement_ms']} ms stable within {st['stability_percent']:g}%):"
                )
                lines += ["  " + x for x in table_lines(cap[proto])]
    if s.get("gate_metrics"):
        g = s["gate_metrics"]
        lines.append(
            "  the build's gate measured: "
            + ", ".join(f"{k}={v:.6g}" for k, v in g.items() if isinstance(v, float | int))
        )
    return lines + recorded_lines(s)


def recorded_lines(s: dict[str, Any]) -> list[str]:
    """Where a capacity measurement or a tune was kept (report, MLflow run)."""
    r = s.get("recorded")
    if not r:
        return []
    out = [f"  recorded: {r.get('report') or r['file']}"]
    if (r.get("mlflow") or {}).get("run_id"):
        out[0] += f"; MLflow run {r['mlflow']['run_id']} ({r['mlflow']['experiment']})"
    return out


def dumps(s: dict[str, Any]) -> str:
    return json.dumps(s, indent=2, default=str)


# -- tune: the serving-config search on the real server -------------------------------


@dataclass
class TuneOptions:
    p99_ms: float = 10.0
    max_trials: int = 12
    max_instances: int = 0  # 0: the host's CPU count, at most 4
    write: bool = True  # publish the best config (False: --dry-run)
    confirm_rounds: int = 2  # the published and the best config measured again, interleaved


def _candidate_config(base: Any, c: Candidate) -> Any:
    """The published config with a candidate's batching and instances (I/O unchanged)."""
    mc = type(base)()
    mc.CopyFrom(base)
    mc.instance_group[0].count = c.instances
    if c.max_batch_size:
        mc.max_batch_size = c.max_batch_size
        db = mc.dynamic_batching
        del db.preferred_batch_size[:]
        if c.preferred:
            db.preferred_batch_size.append(c.preferred)
        db.max_queue_delay_microseconds = c.delay_us
        db.SetInParent()  # the warmup is one batch-1 request: it fits every candidate
    return mc


def tune(cfg: Any, state: Any, opts: CheckOptions, topts: TuneOptions) -> dict[str, Any]:
    """Search max_batch_size, the queue delay, the preferred batch size and the instance
    count of the deployed model's config on the server (each trial loaded with a config
    override, measured by perf_analyzer), pick the highest throughput whose p99 meets the
    SLO, measure it again beside the published config and, where its lead holds, write it
    (the replaced config kept beside it), reload it from the repository and check its answers."""
    from google.protobuf import json_format

    assert opts.perf is not None and opts.grpc_url
    repo = resolve_path(cfg.triton.repository)
    name = opts.model_name or cfg.name
    version, manifest = _served_version(repo, name, opts.version)
    target = deployed_target(cfg, name, version, manifest.get("deployed_variant"))
    libs, control = _connect(opts, "tune")
    if not _is_grpc(control):
        raise ConfigError("tune loads each trial with a config override over gRPC: give --grpc-url (or no URL)")
    published_text = (repo / name / "config.pbtxt").read_text()
    base = parse(published_text)
    if not base.instance_group:
        base.instance_group.add(kind=triton_pb().ModelInstanceGroup.KIND_CPU, count=1)
    feeds, ref, labels = validation_reference(cfg, state)
    variant = next((v for v in manifest.get("variants", []) if v.get("name") == target.name), {})
    batching = base.max_batch_size > 0
    max_batch = base.max_batch_size if batching else 0
    max_inst = topts.max_instances or min(4, os.cpu_count() or 1)
    data = input_data(
        feeds,
        {i.name: triton_pb().DataType.Name(i.data_type).replace("TYPE_", "") for i in base.input},
        batching,
        cfg.io.has_batch_axis(),
        opts.perf.samples,
    )
    stats = lambda: _stats(control, name, version)  # noqa: E731
    loaded: list[str] = []

    def load(mc: Any | None) -> None:
        if mc is None:
            control.load_model(name)
        else:
            control.load_model(name, config=json_format.MessageToJson(mc, preserving_proto_field_name=True))
        loaded[:] = [name]
        deadline = time.monotonic() + opts.load_timeout
        while not _ready(control, name, version):
            if time.monotonic() > deadline:
                raise ServeLoadError(f"{name} version {version} was not READY within {opts.load_timeout:.0f} s")
            time.sleep(0.2)

    def measure(c: Candidate | None) -> list[dict[str, Any]]:
        try:
            load(None if c is None else _candidate_config(base, c))
        except Exception as exc:  # noqa: BLE001 - a config the server refuses is a failed trial
            return [{"mode": "load", "value": 0, "stable": False, "error": _triton_error(exc)}]
        return sweep(name, version, opts.grpc_url, "grpc", data, opts.perf, stats, opts.progress, topts.p99_ms)  # type: ignore[arg-type]

    try:
        opts.progress(f"trial 0: the published config of {name} version {version}")
        baseline_points = measure(None)
        baseline, _ = score(baseline_points, topts.p99_ms)
        first = start_point(variant.get("profile"), max_batch, batching)
        best, trials = search(
            measure, first, max_batch, max_inst, topts.p99_ms, topts.max_trials, progress=opts.progress
        )
        best_trial = next(t for t in trials if Candidate.of_trial(t) == best)
        summary: dict[str, Any] = {
            "model": name,
            "version": version,
            "variant": target.name,
            "objective": {"maximize": "throughput", "slo": {"p99_ms": topts.p99_ms}},
            "measured_by": "perf_analyzer over gRPC, " + data_note(data),
            "published": {"throughput_under_slo": round(baseline, 2), "points": baseline_points},
            "trials": trials,
            "best": {"candidate": best.label(), **{k: best_trial[k] for k in best_trial if k != "points"}},
            "speedup_vs_published": round(best_trial["throughput_under_slo"] / baseline, 3) if baseline else None,
            "pareto": pareto(trials),
        }
        if best_trial["throughput_under_slo"] <= 0:
            exc = ConfigError(
                f"tune: no configuration met p99 <= {topts.p99_ms} ms at any measured concurrency; "
                "nothing was written (loosen --slo-p99-ms or check the server's load)"
            )
            exc.summary = dict(summary, written=None)  # --json still shows every trial
            raise exc
        text = to_text(_candidate_config(base, best))
        summary["config_pbtxt"] = text
        summary["model_yaml"] = model_yaml_lines(best)
        better = best_trial["throughput_under_slo"] > baseline
        if topts.confirm_rounds:
            # the search kept the highest of many noisy figures: measure the winner and the
            # published config again, interleaved, and believe the lead only if it holds
            summary["confirmation"] = conf = confirm(
                lambda: measure(None), lambda: measure(best), topts.p99_ms, topts.confirm_rounds, opts.progress
            )
            better = conf["holds"]
            summary["speedup_vs_published"] = conf["speedup"]
        if topts.write and better:
            keep = replace_config(repo, name, published_text, text, cfg.triton.lock_timeout_s)
            summary["written"] = {"config": str(repo / name / "config.pbtxt"), "replaced_kept_in": str(keep)}
            load(None)  # from the repository, as a server restart would
            results, failures = _check(
                libs, control, name, version, feeds, ref, labels, cfg.io, target.tolerance, opts, cfg.padding_mask()
            )
            summary["check"] = {"protocols": results, "passed": not failures, "failures": failures}
            if failures:
                raise ServedWrongError(f"the tuned config of {name} serves wrong answers: {'; '.join(failures)}")
        else:
            summary["written"] = None
            if topts.write:
                summary["not_written"] = (
                    "the best trial did not beat the published config by more than the noise margin "
                    f"({NOISE:.0%}) when measured again"
                    if topts.confirm_rounds
                    else "no trial beat the published config"
                )
    finally:
        if loaded and opts.unload:
            try:
                control.unload_model(name)
            except Exception:  # noqa: BLE001 - best effort
                pass
    return summary


def measured_best(run: dict[str, Any]) -> float:
    """A tune's figure for its best config: the confirmation rounds' median where it was
    measured again, else the search's own."""
    c = run.get("confirmation")
    return float(c["best_median"] if c else run["best"]["throughput_under_slo"])


def require_deploy_all(cfg: Any) -> None:
    """tune --variants needs each variant published as a model of its own (triton.deploy: all)."""
    if cfg.triton.deploy != "all":
        raise ConfigError(
            "tune --variants compares the variants on the server, each published as its own Triton model: "
            f"set triton.deploy: all in {cfg.name}'s model.yaml and build again (it is {cfg.triton.deploy or 'unset'})"
        )


def tune_variants(cfg: Any, state: Any, opts: CheckOptions, topts: TuneOptions) -> dict[str, Any]:
    """`tune` for every published variant (triton.deploy: all publishes each as
    <name>_<target>) on one server, ranked by throughput under the SLO: which variant and
    which config serve best here, as measured on the server (a variant none of whose
    configs meets the SLO ranks last, with the reason)."""
    require_deploy_all(cfg)
    repo = resolve_path(cfg.triton.repository)
    runs: dict[str, dict[str, Any]] = {}
    for t in cfg.targets:
        model = f"{cfg.name}_{t.name}"
        if not (repo / model).is_dir():
            runs[t.name] = {"model": model, "skipped": "not published (it did not pass its gate, or was not built)"}
            continue
        opts.progress(f"variant {t.name}: tuning {model}")
        try:
            runs[t.name] = tune(cfg, state, replace(opts, model_name=model, version=None), topts)
        except ConfigError as exc:  # no config of this variant met the SLO: ranked last, said why
            runs[t.name] = {"model": model, "skipped": str(exc)}
    ranked = sorted((n for n, r in runs.items() if "best" in r), key=lambda n: -measured_best(runs[n]))
    if not ranked:
        raise ConfigError(
            "tune --variants: no variant met p99 <= "
            f"{topts.p99_ms} ms with any configuration: " + "; ".join(f"{n}: {r['skipped']}" for n, r in runs.items())
        )
    best = ranked[0]
    b = runs[best]
    return {
        "model": cfg.name,
        "objective": {"maximize": "throughput", "slo": {"p99_ms": topts.p99_ms}},
        "variants": runs,
        "ranking": [
            {
                "variant": n,
                "model": runs[n]["model"],
                "throughput_under_slo": measured_best(runs[n]),
                "config": runs[n]["best"]["candidate"],
            }
            for n in ranked
        ],  # fmt: skip
        "best_variant": best,
        "model_yaml": b["model_yaml"].replace("triton:", f"triton:\n  deploy: {best}", 1),
    }


def tune_variants_lines(s: dict[str, Any]) -> list[str]:
    """The human summary of tune --variants: each variant's search, then the ranking."""
    out: list[str] = []
    for name, r in s["variants"].items():
        if "skipped" in r:
            out.append(f"{r['model']} (variant {name}): not tuned: {r['skipped']}")
        else:
            out += tune_lines(r, model_yaml=False)  # the best variant's model.yaml lines come below
    slo = s["objective"]["slo"]["p99_ms"]
    out.append(f"{s['model']}: variants by throughput with p99 <= {slo} ms, measured on the server:")
    for i, r in enumerate(s["ranking"], 1):
        out.append(f"  {i}. {r['variant']:<12} {r['throughput_under_slo']:>10} infer/s  ({r['config']})")
    out.append(
        f"  best: {s['best_variant']}; to serve it as {s['model']} with that config, in model.yaml:\n"
        + "\n".join("    " + ln for ln in s["model_yaml"].split("\n"))
    )
    return out


def confirm(
    published: Callable[[], list[dict[str, Any]]],
    best: Callable[[], list[dict[str, Any]]],
    p99_ms: float,
    rounds: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """`rounds` interleaved sweeps of the published and the best config, each scored as
    its throughput under the SLO; the lead holds when the best one's median beats the
    published one's by more than the search's noise margin."""
    pub: list[float] = []
    won: list[float] = []
    points: dict[str, list[list[dict[str, Any]]]] = {"published": [], "best": []}
    for r in range(rounds):
        progress(f"confirmation {r + 1}/{rounds}: the published config, then the best one")
        for key, run, into in (("published", published, pub), ("best", best, won)):
            pts = run()
            points[key].append(pts)
            into.append(round(score(pts, p99_ms)[0], 2))
    p, b = statistics.median(pub), statistics.median(won)
    return {
        "rounds": rounds,
        "published": pub,
        "best": won,
        "points": points,
        "published_median": p,
        "best_median": b,
        "speedup": round(b / p, 3) if p else None,
        "holds": b > p * (1 + NOISE),
        "margin": NOISE,
    }


def data_note(data: dict[str, Any]) -> str:
    return f"batch-1 requests cycling through {len(data['data'])} validation samples"


def model_yaml_lines(c: Candidate) -> str:
    """The triton: settings that keep the tuned config in later builds."""
    lines = ["triton:", f"  instance_group: [{{kind: KIND_CPU, count: {c.instances}}}]"]
    if c.max_batch_size:
        pref = f", preferred_batch_size: [{c.preferred}]" if c.preferred else ""
        lines += [
            f"  max_batch_size: {c.max_batch_size}",
            f"  dynamic_batching: {{max_queue_delay_microseconds: {c.delay_us}{pref}}}",
        ]
    return "\n".join(lines)


def tune_lines(s: dict[str, Any], model_yaml: bool = True) -> list[str]:
    """The human summary of a tune (with the model.yaml lines that keep its config)."""
    slo = s["objective"]["slo"]["p99_ms"]
    out = [f"{s['model']} version {s['version']} (variant {s['variant']}): throughput with p99 <= {slo} ms"]
    out.append(f"  published config: {s['published']['throughput_under_slo']} infer/s")
    out.append(f"  {'trial':>5} {'max_batch':>9} {'delay us':>8} {'pref':>4} {'inst':>4} {'infer/s':>9}  at")
    for t in s["trials"]:
        at = (
            f"concurrency {t['at']['concurrency']:g}, p99 {t['at']['p99_ms']} ms" if t["at"] else "no point met the SLO"
        )
        out.append(
            f"  {t['trial']:>5} {t['max_batch_size']:>9} {t['max_queue_delay_microseconds']:>8} "
            f"{Candidate.of_trial(t).preferred or '-':>4} {t['instances']:>4} {t['throughput_under_slo']:>9}  {at}"
        )
    sp = s.get("speedup_vs_published")
    c = s.get("confirmation")
    out.append(
        f"  best: {s['best']['candidate']}"
        + (f", {sp}x the published config" if sp else "")
        + (" (medians of the confirmation rounds)" if c else "")
    )
    if c:
        verdict = "holds" if c["holds"] else f"does not hold (not more than {c['margin']:.0%})"
        out.append(
            f"  measured again, {c['rounds']} interleaved rounds: published {c['published']}, best {c['best']} "
            f"infer/s: the lead {verdict}"
        )
    if s.get("written"):
        out.append(f"  written: {s['written']['config']} (the replaced one kept in {s['written']['replaced_kept_in']})")
    elif s.get("not_written"):
        out.append(f"  not written: {s['not_written']}")
    if model_yaml:
        out.append(
            "  keep it in later builds with, in model.yaml:\n"
            + "\n".join("    " + ln for ln in s["model_yaml"].split("\n"))
        )
    return out + recorded_lines(s)
