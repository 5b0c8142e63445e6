"""ONNX Runtime's transformer fusion (onnxruntime backend only).

Fuses BERT-style subgraphs into ONNX Runtime contrib ops (Attention,
SkipLayerNormalization, BiasGelu, ...): fewer, faster kernels, and the graph
where dynamic INT8 of the MatMuls keeps accuracy (FIELD-NOTES). The result
runs only on ONNX Runtime, so this pass is never part of a TensorRT chain.
It fully fuses the TorchScript exporter's graph, not the dynamo one."""

from __future__ import annotations

from typing import Literal

from mscompile import onnx_utils
from mscompile.artifacts import OnnxModel
from mscompile.instruments import capture_output
from mscompile.pipeline import Pass, PassContext, PassResult
from mscompile.sections import Section


class FusionConfig(Section):
    model_type: Literal["bert"] = "bert"


class FuseTransformer(Pass[OnnxModel, OnnxModel]):
    name = "fuse_transformer"
    version = 1
    input_type = OnnxModel
    output_type = OnnxModel
    Config = FusionConfig
    libraries = ("onnx", "onnxruntime")

    def run(self, inp: OnnxModel, cfg: FusionConfig, ctx: PassContext) -> PassResult[OnnxModel]:
        from onnxruntime.transformers.optimizer import optimize_model

        ctx.note(f"ONNX Runtime {cfg.model_type} fusion")
        with capture_output(ctx.log_path):
            opt = optimize_model(
                str(inp.onnx_file), model_type=cfg.model_type, num_heads=0, hidden_size=0, use_gpu=False
            )
            stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
        out = ctx.workdir / "model.onnx"
        onnx_utils.save(opt.model, out)
        meta = dict(inp.meta)
        meta.update(onnx_utils.finish(out))
        meta["fusion"] = cfg.model_type
        metrics = {"nodes_before": inp.meta.get("node_count"), "nodes_after": meta["node_count"], "fused": stats}
        return PassResult(path=ctx.workdir, meta=meta, metrics=metrics)
