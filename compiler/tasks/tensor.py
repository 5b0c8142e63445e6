"""task: tensor (the default): a PyTorch module exported to ONNX, optimized, turned
into one variant per target by its backend, gated against PyTorch, published to
Triton (and optionally a Ray Serve app)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .base import Task


class TensorTask(Task):
    name = "tensor"
    description = "tensor models through ONNX: onnxruntime, openvino, tensorrt targets"

    def config_model(self) -> Any:
        from ..config import ModelConfig

        return ModelConfig

    def parse(self, data: dict[str, Any], where: str) -> Any:
        from ..config import parse_tensor

        return parse_tensor(data, where)

    def preflight(self, cfg: Any) -> None:
        from ..publish import preflight

        preflight(cfg)

    def build(self, cfg: Any, config_path: Path, opts: Any) -> Any:
        from ..build import build

        return build(cfg, config_path, opts)

    def plan(self, cfg: Any, opts: Any) -> dict[str, Any]:
        from ..build import plan_build

        return plan_build(cfg, opts)

    def validate(self, cfg: Any, config_path: Path) -> list[str]:
        from ..validate import validate_all

        return validate_all(config_path)

    def shared_steps(self, cfg: Any, state: Any, stamp: str, force: bool) -> tuple[Any, Any, Any]:
        from ..build import assemble
        from ..cache import Cache
        from ..instruments import Instruments
        from ..pipeline import Driver

        log_dir = state.build_logs(cfg.name, stamp)
        plan = assemble(cfg, state)
        driver = Driver(
            Cache(state.cache), Instruments(log_dir / "events.jsonl", quiet=True), force=force, log_dir=log_dir,
            datasets=plan.datasets,
        )  # fmt: skip
        base = driver.run(plan.common, plan.source).output
        return driver, base, lambda t: plan.recipes[t.name]

    def serve_check(self, cfg: Any, state: Any, version: int | None, say: Any, server: dict[str, Any]) -> dict:
        """Against --url/--grpc-url, or a tritonserver started on loopback for it."""
        from ..config import resolve_path
        from ..handoff import LocalServer, ServeLoadError, find_tritonserver, serve_check

        if server.get("url") or server.get("grpc_url"):
            return serve_check(cfg, state, check_options(server, version, say))
        binary = find_tritonserver(server.get("tritonserver"))
        log = state.logs / f"tritonserver-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        say(f"starting {binary} on loopback (explicit model control, no auto-complete); log {log}")
        with LocalServer(binary, resolve_path(cfg.triton.repository), log, server.get("tritonserver_args", ())) as s:
            opts = check_options(dict(server, url=s.http_url, grpc_url=s.grpc_url), version, say)
            opts.server_log = lambda: s.log_tail(200)
            try:
                out = serve_check(cfg, state, opts)
            except ServeLoadError as exc:
                exc.args = (f"{exc} (server log: {log})",)
                raise
            out["server"] = {"binary": str(binary), "log": str(log)}
            return out

    def deploy(self, cfg: Any, state: Any, version: int | None, say: Any, server: dict[str, Any]) -> dict:
        from ..handoff import deploy

        return deploy(cfg, state, check_options(server, version, say))


def check_options(server: dict[str, Any], version: int | None, say: Any) -> Any:
    """The CLI's server options as the check's."""
    from ..handoff import CheckOptions

    protocol = server.get("protocol", "both")
    return CheckOptions(
        http_url=server.get("url") if protocol in ("both", "http") else None,
        grpc_url=server.get("grpc_url") if protocol in ("both", "grpc") else None,
        model_name=server.get("model_name"),
        version=version,
        concurrency=server.get("concurrency", 8),
        load_timeout=server.get("load_timeout", 120.0),
        progress=say,
    )


TASK = TensorTask()
