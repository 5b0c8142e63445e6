"""Export the PyTorch module to ONNX.

Dynamic axes come from the -1 (or named) dimensions of inputs[].shape, bounded
by inputs[].range. `exporter: auto` tries torch.export (dynamo) and falls back
to the TorchScript exporter, recording why. The result is checked with
onnx.checker and shape inference, and its input/output names must be the
declared ones."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from mscompile import onnx_utils
from mscompile.artifacts import OnnxModel, TorchModel
from mscompile.instruments import capture_output
from mscompile.loading import load_module
from mscompile.pipeline import Pass, PassContext, PassResult
from mscompile.sections import ExportConfig, IOSpec, Section, SourceConfig


class ExportPassConfig(Section):
    export: ExportConfig
    io: IOSpec


def example_inputs(io: IOSpec, feeds: dict[str, np.ndarray]) -> tuple[Any, ...]:
    """A few real validation samples; at least 2 along a dynamic batch axis, since
    torch.export specializes dimensions of size 1."""
    import torch

    n = next(iter(feeds.values())).shape[0]
    out = []
    for inp in io.inputs:
        a = feeds[inp.name]
        if io.has_batch_axis():
            want = 2
            if inp.range is not None:
                want = max(2, min(inp.range.opt[0], 8))
            a = a[: min(want, n)]
            if a.shape[0] < 2:
                a = np.concatenate([a, a], axis=0)
        out.append(torch.from_numpy(np.ascontiguousarray(a)))
    return tuple(out)


def _dynamo_shapes(io: IOSpec) -> tuple[dict[int, Any], ...]:
    import torch

    dims: dict[str, Any] = {}
    shapes = []
    for inp in io.inputs:
        spec = {}
        for ax in range(len(inp.shape)):
            name = io.dim_name(inp, ax)
            if name is None:
                continue
            if name not in dims:
                if inp.range is not None:
                    dims[name] = torch.export.Dim(name, min=inp.range.min[ax], max=inp.range.max[ax])
                else:
                    dims[name] = torch.export.Dim(name)
            spec[ax] = dims[name]
        shapes.append(spec)
    return tuple(shapes)


def _dynamic_axes(io: IOSpec) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for inp in io.inputs:
        spec = {ax: io.dim_name(inp, ax) for ax in range(len(inp.shape)) if io.dim_name(inp, ax)}
        if spec:
            axes[inp.name] = spec  # type: ignore[assignment]
    if io.has_batch_axis():
        for o in io.outputs:
            axes[o.name] = {0: "batch"}
    return axes


def _export(module: Any, args: tuple, io: IOSpec, cfg: ExportConfig, path: Path, exporter: str) -> None:
    import torch

    names_in = [i.name for i in io.inputs]
    names_out = [o.name for o in io.outputs]
    if exporter == "dynamo":
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=True,
            input_names=names_in,
            output_names=names_out,
            dynamic_shapes=_dynamo_shapes(io),
            opset_version=cfg.opset,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    else:
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=_dynamic_axes(io),
            opset_version=cfg.opset,
            do_constant_folding=True,
        )


def _check(path: Path, io: IOSpec) -> None:
    import onnx

    onnx.checker.check_model(str(path), full_check=False)
    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    m = onnx.load(str(path), load_external_data=False)
    sig = onnx_utils.io_signature(m)
    got_in = [v["name"] for v in sig["inputs"]]
    got_out = [v["name"] for v in sig["outputs"]]
    want_in = [i.name for i in io.inputs]
    want_out = [o.name for o in io.outputs]
    if got_in != want_in:
        raise RuntimeError(
            f"exported graph has inputs {got_in}, expected {want_in} (an input the model never reads is dropped by the exporter)"
        )
    if got_out != want_out:
        raise RuntimeError(f"exported graph has outputs {got_out}, expected {want_out}")


class ExportOnnx(Pass[TorchModel, OnnxModel]):
    name = "export_onnx"
    version = 2
    input_type = TorchModel
    output_type = OnnxModel
    Config = ExportPassConfig
    libraries = ("torch", "onnx", "onnxscript")
    extra_inputs = ("validation",)  # example inputs come from the validation set

    def run(self, inp: TorchModel, cfg: ExportPassConfig, ctx: PassContext) -> PassResult[OnnxModel]:
        info = json.loads((inp.path / "module.json").read_text())
        src = SourceConfig.model_validate(info["source"])
        module = load_module(src, inp.path / info["checkpoint"])  # the copy inside the cached TorchModel
        feeds, _ = ctx.data("validation")
        args = example_inputs(cfg.io, feeds)
        path = ctx.workdir / "model.onnx"
        order = ["dynamo", "torchscript"] if cfg.export.exporter == "auto" else [cfg.export.exporter]
        attempts: list[dict[str, Any]] = []
        for exporter in order:
            ctx.note(f"exporting with the {exporter} exporter (opset {cfg.export.opset})")
            t0 = time.perf_counter()
            try:
                with capture_output(ctx.log_path):
                    _export(module, args, cfg.io, cfg.export, path, exporter)
                _check(path, cfg.io)
            except Exception as exc:
                reason = why_export_failed(exc)
                attempts.append(
                    {
                        "exporter": exporter,
                        "ok": False,
                        "reason": reason[:500],
                        "seconds": time.perf_counter() - t0,
                    }
                )
                for f in ctx.workdir.iterdir():
                    f.unlink()
                if exporter == order[-1]:
                    tried = "; ".join(f"{a['exporter']}: {a['reason']}" for a in attempts)
                    raise RuntimeError(f"ONNX export failed ({tried}); full log: {ctx.log_path}") from exc
                continue
            attempts.append({"exporter": exporter, "ok": True, "seconds": round(time.perf_counter() - t0, 3)})
            break
        meta = onnx_utils.finish(path)
        meta.update(precision="fp32", exporter=attempts[-1]["exporter"])
        metrics = {
            "exporter": attempts[-1]["exporter"],
            "attempts": attempts,
            "node_count": meta["node_count"],
            "opset": cfg.export.opset,
        }
        if len(attempts) > 1:
            metrics["fallback_reason"] = attempts[0]["reason"]
        return PassResult(path=ctx.workdir, meta=meta, metrics=metrics)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def why_export_failed(exc: BaseException) -> str:
    """One line that says why an exporter failed: torch.onnx's own summary (the cause
    under '## Exception summary', and the user's line that raised it), without the
    terminal colours and the boilerplate first line ('This is step 1/3 ...')."""
    text = _ANSI.sub("", str(exc)).strip()
    lines = [ln.strip() for ln in text.splitlines()]
    cause = ""
    if "## Exception summary" in lines:
        after = lines[lines.index("## Exception summary") + 1 :]
        cause = next((ln for ln in after if ln), "")
        cause = re.sub(r"^<class '(?:[\w.]+\.)?(\w+)'>:", r"\1:", cause)
    where = ""
    if "The following call raised this error:" in lines:
        after = lines[lines.index("The following call raised this error:") + 1 :]
        where = next((ln for ln in after if ln.startswith("File ")), "")
    head = cause or next((ln for ln in lines if ln), "")
    return f"{type(exc).__name__}: {head}" + (f" ({where})" if where else "")
