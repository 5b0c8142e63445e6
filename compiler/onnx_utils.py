"""Small helpers over ONNX graphs shared by passes and the Triton writer."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

# ONNX TensorProto element type -> numpy-style dtype name
ONNX_DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    16: "bfloat16",
}


def io_signature(model: Any) -> dict[str, list[dict[str, Any]]]:
    """Graph inputs (minus initializers) and outputs: name, dtype and dims
    (an int for a fixed size, the symbol's name for a dynamic one, None if unknown)."""
    inits = {i.name for i in model.graph.initializer}

    def spec(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dims: list[Any] = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        return {
            "name": v.name,
            "dtype": ONNX_DTYPES.get(t.elem_type, str(t.elem_type)),
            "dims": dims,
        }

    return {
        "inputs": [spec(v) for v in model.graph.input if v.name not in inits],
        "outputs": [spec(v) for v in model.graph.output],
    }


@functools.lru_cache(maxsize=1)
def max_ir_version() -> int:
    """The newest ONNX IR version the installed ONNX Runtime loads, probed once: a
    newer onnx writes IR versions an older onnxruntime refuses (onnx 1.23 wrote 14,
    onnxruntime 1.30 loads up to 13)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    so = ort.SessionOptions()
    so.log_severity_level = 4
    for ir in range(onnx.IR_VERSION, 6, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir)
        try:
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            return ir
        except Exception:  # noqa: BLE001 - this IR version is too new for it: try the next lower
            continue
    return 7


def fit_ir_version(model: Any) -> bool:
    """Lower the model's IR version to what onnxruntime loads (our graphs use nothing
    newer IR versions added); True when it changed."""
    top = max_ir_version()
    if model.ir_version > top:
        model.ir_version = top
        return True
    return False


def finish(path: Path) -> dict[str, Any]:
    """Make a written graph loadable by the installed onnxruntime, and describe it."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    if fit_ir_version(m):
        onnx.save_model(m, str(path))
    return describe(path)


def describe(path: Path) -> dict[str, Any]:
    """Metadata recorded on every OnnxModel artifact."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    opsets = {o.domain or "ai.onnx": int(o.version) for o in m.opset_import}
    return {"io": io_signature(m), "node_count": len(m.graph.node), "opsets": opsets, "ir_version": int(m.ir_version)}


def save(model: Any, path: Path) -> None:
    """Save a ModelProto, with external weights only above protobuf's 2 GiB limit."""
    import onnx

    fit_ir_version(model)
    large = model.ByteSize() > (1 << 31) - (1 << 24)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=path.name + ".data" if large else None,
    )
