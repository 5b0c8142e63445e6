"""Small helpers over ONNX graphs shared by passes and the Triton writer."""

from __future__ import annotations

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


def describe(path: Path) -> dict[str, Any]:
    """Metadata recorded on every OnnxModel artifact."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    opsets = {o.domain or "ai.onnx": int(o.version) for o in m.opset_import}
    return {"io": io_signature(m), "node_count": len(m.graph.node), "opsets": opsets}


def save(model: Any, path: Path) -> None:
    """Save a ModelProto, with external weights only above protobuf's 2 GiB limit."""
    import onnx

    large = model.ByteSize() > (1 << 31) - (1 << 24)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=path.name + ".data" if large else None,
    )
