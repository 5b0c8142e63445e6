"""Convert the ONNX graph to OpenVINO IR (model.xml + model.bin).

`ov.convert_model` reads the ONNX file; `ov.save_model` writes the IR with
`compress_to_fp16` set explicitly (OpenVINO's default compresses weights to
fp16, which an fp32 target must not get silently). Input and output names are
the ONNX graph's, so the Triton config built from the graph's signature fits."""

from __future__ import annotations

from mscompile.artifacts import OnnxModel, OpenVinoModel
from mscompile.instruments import capture_output
from mscompile.pipeline import Pass, PassContext, PassResult
from mscompile.sections import Section


class ConvertOvConfig(Section):
    compress_to_fp16: bool = False


class ConvertOpenVino(Pass[OnnxModel, OpenVinoModel]):
    name = "convert_openvino"
    version = 1
    input_type = OnnxModel
    output_type = OpenVinoModel
    Config = ConvertOvConfig
    libraries = ("openvino",)

    def run(self, inp: OnnxModel, cfg: ConvertOvConfig, ctx: PassContext) -> PassResult[OpenVinoModel]:
        import openvino as ov

        ctx.note(f"ONNX -> OpenVINO IR ({'fp16' if cfg.compress_to_fp16 else 'fp32'} weights)")
        with capture_output(ctx.log_path):
            model = ov.convert_model(str(inp.onnx_file))
            ov.save_model(model, str(ctx.workdir / "model.xml"), compress_to_fp16=cfg.compress_to_fp16)
        names_in = [p.get_any_name() for p in model.inputs]
        names_out = [p.get_any_name() for p in model.outputs]
        want_in = [s["name"] for s in inp.meta["io"]["inputs"]]
        want_out = [s["name"] for s in inp.meta["io"]["outputs"]]
        if names_in != want_in or names_out != want_out:
            raise RuntimeError(
                f"OpenVINO IR has inputs {names_in} and outputs {names_out}; the ONNX graph has {want_in} and {want_out}"
            )
        meta = {
            "io": inp.meta["io"],
            "precision": "fp16" if cfg.compress_to_fp16 else inp.meta.get("precision", "fp32"),
            "node_count": len(model.get_ops()),
            "openvino": ov.get_version(),
            "onnx_digest": inp.digest,
        }
        metrics = {
            "node_count": meta["node_count"],
            "bytes_after": (ctx.workdir / "model.bin").stat().st_size,
            "bytes_before": inp.onnx_file.stat().st_size,
        }
        return PassResult(path=ctx.workdir, meta=meta, metrics=metrics)
