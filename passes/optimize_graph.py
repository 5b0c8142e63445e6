"""Target-neutral graph optimization.

Only rewrites that keep standard ONNX ops run here, so the result is safe for
every backend (TensorRT included): onnxslim (level slim) and ONNX Runtime's
BASIC offline level (constant folding, redundant-node elimination). ORT's
EXTENDED/ALL levels write contrib ops and CPU-specific layouts and belong to
per-target passes, never here (FIELD-NOTES)."""

from __future__ import annotations

from mscompile import onnx_utils
from mscompile.artifacts import OnnxModel
from mscompile.instruments import capture_output
from mscompile.pipeline import Pass, PassContext, PassResult
from mscompile.sections import OptimizeConfig


def ort_basic(src: str, dst: str) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = dst
    so.log_severity_level = 3
    ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


class OptimizeGraph(Pass[OnnxModel, OnnxModel]):
    name = "optimize_graph"
    version = 1
    input_type = OnnxModel
    output_type = OnnxModel
    Config = OptimizeConfig
    libraries = ("onnx", "onnxruntime", "onnxslim")

    def run(self, inp: OnnxModel, cfg: OptimizeConfig, ctx: PassContext) -> PassResult[OnnxModel]:
        import onnx

        out = ctx.workdir / "model.onnx"
        before = inp.meta.get("node_count")
        src = str(inp.onnx_file)
        if cfg.level == "slim":
            import onnxslim

            ctx.note("onnxslim")
            with capture_output(ctx.log_path):
                slimmed = onnxslim.slim(onnx.load(src))
            onnx_utils.save(slimmed, ctx.workdir / "slim.onnx")
            src = str(ctx.workdir / "slim.onnx")
        if cfg.level in ("basic", "slim"):
            ctx.note("ONNX Runtime basic offline optimization")
            ort_basic(src, str(out))
            (ctx.workdir / "slim.onnx").unlink(missing_ok=True)
        else:
            model = onnx.load(src)
            onnx_utils.save(model, out)
        onnx.shape_inference.infer_shapes_path(str(out), str(out))
        onnx.checker.check_model(str(out))
        meta = dict(inp.meta)
        meta.update(onnx_utils.finish(out))
        metrics = {"level": cfg.level, "nodes_before": before, "nodes_after": meta["node_count"]}
        return PassResult(path=ctx.workdir, meta=meta, metrics=metrics)
