import numpy as np
import onnx
import onnxruntime as ort
from helpers import make_driver, tiny_steps
from mscompile.config import OptimizeConfig
from mscompile.passes.convert_fp16 import ConvertFp16, Fp16Config
from mscompile.passes.optimize_graph import OptimizeGraph
from mscompile.pipeline import Step


def _run(sess_path, x):
    s = ort.InferenceSession(str(sess_path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _digits_export(tmp_path, digits_config):
    _, plan = tiny_steps(digits_config)
    d = make_driver(tmp_path / "state", plan=plan)
    d.run(type(plan.common)(plan.common.steps[:2]), plan.source)
    return d, d.outputs["export_onnx"]


def test_optimize_levels_keep_outputs_and_count_nodes(tmp_path, digits_config):
    digits_config["export"]["exporter"] = "torchscript"
    d, exported = _digits_export(tmp_path, digits_config)
    x = np.load("calibration_data/digits_val.npz")["images"][:16]
    ref = _run(exported.onnx_file, x)
    for level in ("none", "basic", "slim"):
        rec = d.run_step(Step(f"opt-{level}", OptimizeGraph, OptimizeConfig(level=level)), exported)
        np.testing.assert_allclose(_run(rec.output.onnx_file, x), ref, atol=1e-5)
        assert rec.metrics["nodes_before"] == exported.meta["node_count"]
        assert rec.metrics["nodes_after"] == len(onnx.load(str(rec.output.onnx_file)).graph.node)
        ops = {n.op_type for n in onnx.load(str(rec.output.onnx_file)).graph.node}
        domains = {n.domain for n in onnx.load(str(rec.output.onnx_file)).graph.node}
        assert domains <= {"", "ai.onnx"}, f"{level} wrote non-standard ops: {ops}"
        assert rec.metrics["nodes_after"] <= rec.metrics["nodes_before"]


def test_basic_folds_constants_and_drops_identities(tmp_path):
    from mscompile import onnx_utils
    from mscompile.artifacts import OnnxModel
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [1, 2, 3, 4])
    b = helper.make_tensor("b", TensorProto.FLOAT, [4], [1, 1, 1, 1])
    nodes = [
        helper.make_node("Add", ["w", "b"], ["wb"]),  # constant subexpression
        helper.make_node("Identity", ["x"], ["xi"]),
        helper.make_node("Mul", ["xi", "wb"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [w, b],
    )
    src = tmp_path / "src"
    src.mkdir()
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    onnx_utils.fit_ir_version(model)  # an IR version the installed onnxruntime loads
    onnx.save(model, src / "model.onnx")
    art = OnnxModel.of(src, onnx_utils.describe(src / "model.onnx"))
    rec = make_driver(tmp_path).run_step(Step("opt", OptimizeGraph, OptimizeConfig(level="basic")), art)
    assert (rec.metrics["nodes_before"], rec.metrics["nodes_after"]) == (3, 1)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(_run(rec.output.onnx_file, x), x * np.array([2, 3, 4, 5], np.float32))


def test_fp16_halves_weights_keeps_io_fp32(tmp_path, digits_config):
    d, exported = _digits_export(tmp_path, digits_config)
    rec = d.run_step(Step("fp16", ConvertFp16, Fp16Config(keep_io_types=True)), exported)
    m = onnx.load(str(rec.output.onnx_file))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    big = [i for i in m.graph.initializer if np.prod(i.dims) > 16]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
    assert rec.metrics["bytes_after"] < 0.6 * rec.metrics["bytes_before"]
    x = np.load("calibration_data/digits_val.npz")["images"][:32]
    np.testing.assert_allclose(_run(rec.output.onnx_file, x), _run(exported.onnx_file, x), atol=0.05)
    rec2 = d.run_step(Step("fp16-io", ConvertFp16, Fp16Config(keep_io_types=False)), exported)
    m2 = onnx.load(str(rec2.output.onnx_file))
    assert m2.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert rec2.output.meta["io"]["inputs"][0]["dtype"] == "float16"


def test_written_graphs_get_an_ir_version_onnxruntime_loads(tmp_path):
    """onnx 1.23 writes IR 14, which onnxruntime 1.30 refuses: every graph mscompile
    writes is lowered to what the installed onnxruntime loads."""
    from mscompile import onnx_utils
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=onnx.IR_VERSION)
    onnx_utils.save(model, tmp_path / "m.onnx")
    meta = onnx_utils.finish(tmp_path / "m.onnx")
    assert meta["ir_version"] == min(onnx.IR_VERSION, onnx_utils.max_ir_version())
    ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
