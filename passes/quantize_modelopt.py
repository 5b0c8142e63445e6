"""INT8/FP8 explicit Q/DQ ONNX for TensorRT, from NVIDIA ModelOpt's ONNX PTQ.

TensorRT 10.1 deprecated implicit INT8 calibration and TensorRT 11 removed it:
explicit Q/DQ nodes are the only INT8/FP8 route left (FIELD-NOTES). ModelOpt
calibrates on the CPU here (`calibration_eps=["cpu"]`). It is always given the
calibration set: called without one it silently calibrates on random data."""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
from mscompile import onnx_utils
from mscompile.artifacts import OnnxModel
from mscompile.child import run_child
from mscompile.pipeline import Pass, PassContext, PassResult
from mscompile.sections import IOSpec, Section


class ModelOptConfig(Section):
    precision: Literal["int8", "fp8"]
    calibration_method: Literal["max", "entropy"] = "max"
    high_precision_dtype: Literal["fp32", "fp16"] = "fp32"
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    io: IOSpec


def quantize_in_child(
    onnx_path: str,
    output_path: str,
    data: str,
    quantize_mode: str,
    calibration_method: str,
    high_precision_dtype: str,
    nodes_to_exclude: list[str],
    op_types_to_exclude: list[str],
) -> None:
    """Runs in `python -m mscompile.child`: ModelOpt patches ONNX Runtime's quantizer in place."""
    from modelopt.onnx.quantization import quantize

    with np.load(data) as z:
        feeds = {k: z[k] for k in z.files}
    quantize(
        onnx_path,
        quantize_mode=quantize_mode,
        calibration_data=feeds,
        calibration_method=calibration_method,
        calibration_eps=["cpu"],
        high_precision_dtype=high_precision_dtype,
        nodes_to_exclude=nodes_to_exclude or None,
        op_types_to_exclude=op_types_to_exclude or None,
        output_path=output_path,
        log_level="WARNING",
    )


class QuantizeModelOpt(Pass[OnnxModel, OnnxModel]):
    name = "quantize_modelopt"
    version = 2
    input_type = OnnxModel
    output_type = OnnxModel
    Config = ModelOptConfig
    libraries = ("nvidia-modelopt", "onnx", "onnxruntime", "numpy")
    extra_inputs = ("calibration",)

    def run(self, inp: OnnxModel, cfg: ModelOptConfig, ctx: PassContext) -> PassResult[OnnxModel]:
        import onnx

        feeds, _ = ctx.data("calibration")
        n = int(next(iter(feeds.values())).shape[0])
        if n < 1:  # never let ModelOpt fall back to random data
            raise ValueError("calibration set is empty")
        out = ctx.workdir / "model.onnx"
        data = ctx.scratch / "calibration.npz"
        np.savez(data, **feeds)
        ctx.note(f"ModelOpt {cfg.precision} PTQ, {cfg.calibration_method} calibration on {n} samples (CPU)")
        run_child(
            "mscompile.passes.quantize_modelopt:quantize_in_child",
            {
                "onnx_path": str(inp.onnx_file),
                "output_path": str(out),
                "data": str(data),
                "quantize_mode": cfg.precision,
                "calibration_method": cfg.calibration_method,
                "high_precision_dtype": cfg.high_precision_dtype,
                "nodes_to_exclude": list(cfg.exclude_nodes),
                "op_types_to_exclude": list(cfg.exclude_op_types),
            },
            ctx.log_path,
        )
        data.unlink()
        q = onnx.load(str(out))
        ops = Counter(n.op_type for n in q.graph.node)
        qdq = ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0)
        if qdq == 0:
            raise RuntimeError("ModelOpt wrote no Q/DQ nodes: nothing in this graph was quantized")
        settings = {
            "quantizer": "modelopt.onnx.quantization.quantize",
            "quantize_mode": cfg.precision,
            "calibration_method": cfg.calibration_method,
            "calibration_samples": n,
            "calibration_eps": ["cpu"],
            "high_precision_dtype": cfg.high_precision_dtype,
        }
        meta = dict(inp.meta)
        meta.update(onnx_utils.finish(out))
        meta.update(precision=cfg.precision, quantization=settings)
        metrics = {
            **settings,
            "qdq_nodes": qdq,
            "excluded_nodes": sorted(cfg.exclude_nodes),
            "bytes_before": inp.onnx_file.stat().st_size,
            "bytes_after": out.stat().st_size,
        }
        return PassResult(path=ctx.workdir, meta=meta, metrics=metrics)
