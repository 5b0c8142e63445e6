"""FP16/BF16 graphs for TensorRT's strongly typed networks, via ModelOpt AutoCast.

TensorRT 11 takes precision from the graph's types, not from builder flags
(FIELD-NOTES). AutoCast converts the graph to the low-precision type while
keeping nodes whose values overflow it (`data_max`, `init_max`) in fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from mscompile import onnx_utils
from mscompile.artifacts import OnnxModel
from mscompile.child import run_child
from mscompile.pipeline import Pass, PassContext, PassResult
from mscompile.sections import Section


class AutoCastConfig(Section):
    low_precision_type: Literal["fp16", "bf16"]
    keep_io_types: bool = True


def autocast_in_child(src: str, dst: str, low_precision_type: str, keep_io_types: bool) -> None:
    """Runs in `python -m mscompile.child` (ModelOpt patches ONNX Runtime in place)."""
    from modelopt.onnx.autocast import convert_to_mixed_precision

    model = convert_to_mixed_precision(
        src, low_precision_type=low_precision_type, keep_io_types=keep_io_types, providers=["cpu"]
    )
    onnx_utils.save(model, Path(dst))


class AutoCast(Pass[OnnxModel, OnnxModel]):
    name = "autocast"
    version = 1
    input_type = OnnxModel
    output_type = OnnxModel
    Config = AutoCastConfig
    libraries = ("nvidia-modelopt", "onnx", "onnxruntime")

    def run(self, inp: OnnxModel, cfg: AutoCastConfig, ctx: PassContext) -> PassResult[OnnxModel]:
        import onnx

        ctx.note(f"ModelOpt AutoCast to {cfg.low_precision_type}")
        out = ctx.workdir / "model.onnx"
        run_child(
            "mscompile.passes.autocast:autocast_in_child",
            {
                "src": str(inp.onnx_file),
                "dst": str(out),
                "low_precision_type": cfg.low_precision_type,
                "keep_io_types": cfg.keep_io_types,
            },
            ctx.log_path,
        )
        onnx.checker.check_model(str(out))
        meta = dict(inp.meta)
        meta.update(onnx_utils.finish(out))
        meta["precision"] = cfg.low_precision_type
        return PassResult(
            path=ctx.workdir,
            meta=meta,
            metrics={"bytes_before": inp.onnx_file.stat().st_size, "bytes_after": out.stat().st_size},
        )
