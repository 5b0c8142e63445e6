"""Convert float32 weights and compute to float16.

Uses ONNX Runtime's own converter (`OnnxModel.convert_float_to_float16`), which
keeps graph inputs/outputs float32 with `keep_io_types` and handled MiniLM where
onnxconverter-common's did not (FIELD-NOTES). On the CPU this halves the file;
speed comes on GPUs."""

from __future__ import annotations

from mscompile import onnx_utils
from mscompile.artifacts import OnnxModel
from mscompile.pipeline import Pass, PassContext, PassResult
from mscompile.sections import Section


class Fp16Config(Section):
    keep_io_types: bool = True


class ConvertFp16(Pass[OnnxModel, OnnxModel]):
    name = "convert_fp16"
    version = 1
    input_type = OnnxModel
    output_type = OnnxModel
    Config = Fp16Config
    libraries = ("onnx", "onnxruntime")

    def run(self, inp: OnnxModel, cfg: Fp16Config, ctx: PassContext) -> PassResult[OnnxModel]:
        import onnx
        from onnxruntime.transformers.onnx_model import OnnxModel as OrtOnnxModel

        model = OrtOnnxModel(onnx.load(str(inp.onnx_file)))
        ctx.note(f"float16 conversion (keep_io_types={cfg.keep_io_types})")
        model.convert_float_to_float16(keep_io_types=cfg.keep_io_types)
        model.topological_sort()  # the converter appends its input Casts at the end of the graph
        out = ctx.workdir / "model.onnx"
        onnx_utils.save(model.model, out)
        onnx.checker.check_model(str(out))
        meta = dict(inp.meta)
        meta.update(onnx_utils.finish(out))
        meta["precision"] = "fp16"
        metrics = {
            "bytes_before": inp.onnx_file.stat().st_size,
            "bytes_after": out.stat().st_size,
            "node_count": meta["node_count"],
        }
        return PassResult(path=ctx.workdir, meta=meta, metrics=metrics)
