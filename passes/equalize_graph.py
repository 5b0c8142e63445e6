"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through
Weight Equalization and Bias Correction"), float-exact, before quantization.

For two weight layers joined by a ReLU (Gemm, MatMul(+Add) or Conv, then Relu,
then Gemm, MatMul or Conv), output channel i of the first layer is divided by
s_i > 0 (weights and bias) and input channel i of the second multiplied by s_i:
ReLU(x / s) = ReLU(x) / s, so the function is unchanged while the channels'
weight ranges (and the activations between the layers) are balanced, which is
what per-tensor INT8 needs. s_i = sqrt(r1_i / r2_i) with r the per-channel
weight ranges; a few sweeps settle chains of more than two layers.

The pass checks its own work: the rewritten float graph must give the original
outputs (relative to their magnitude, within `parity`) on calibration samples,
or the pass fails instead of handing on a changed model. A graph with no such
pair comes back unchanged (`pairs: 0`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from mscompile import onnx_utils
from mscompile.artifacts import OnnxModel
from mscompile.config import IOSpec, Section
from mscompile.pipeline import Pass, PassContext, PassResult

LINEAR = ("Gemm", "MatMul", "Conv")


class EqualizeConfig(Section):
    io: IOSpec
    sweeps: int = 4
    samples: int = 32
    parity: float = 1e-5  # max |rewritten - original| / max |original|, per output


def _attr(node: Any, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            from onnx import helper

            return helper.get_attribute_value(a)
    return default


class _Layer:
    """A weight layer and how its output and input channels lie in its weights."""

    def __init__(self, node: Any, weight: str, bias: str | None, out_axis: int, in_axis: int) -> None:
        self.node, self.weight, self.bias, self.out_axis, self.in_axis = node, weight, bias, out_axis, in_axis


def _layer(node: Any, inits: dict[str, np.ndarray], graph: Any) -> _Layer | None:
    if node.op_type == "Gemm":
        if _attr(node, "transA", 0) or len(node.input) < 2 or node.input[1] not in inits:
            return None
        if _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
            return None
        trans_b = _attr(node, "transB", 0)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
        if bias is not None and inits[bias].ndim != 1:
            return None
        return _Layer(node, node.input[1], bias, 0 if trans_b else 1, 1 if trans_b else 0)
    if node.op_type == "MatMul":
        if node.input[1] not in inits or inits[node.input[1]].ndim != 2:
            return None
        return _Layer(node, node.input[1], None, 1, 0)
    if node.op_type == "Conv":
        if _attr(node, "group", 1) != 1 or node.input[1] not in inits:
            return None
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
        return _Layer(node, node.input[1], bias, 0, 1)
    return None


def _pairs(graph: Any, inits: dict[str, np.ndarray]) -> list[tuple[_Layer, _Layer, str | None]]:
    """(first layer, second layer, the Add holding the first's bias for MatMul) joined by one Relu."""
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    uses = {name: len(consumers.get(name, [])) for name in inits}
    outputs = {o.name for o in graph.output}
    found = []
    for n in graph.node:
        first = _layer(n, inits, graph)
        if first is None or uses.get(first.weight) != 1:
            continue
        out, add_bias = n.output[0], None
        nxt = consumers.get(out, [])
        if n.op_type == "MatMul" and len(nxt) == 1 and nxt[0].op_type == "Add" and out not in outputs:
            add = nxt[0]
            other = add.input[1] if add.input[0] == out else add.input[0]
            if other in inits and inits[other].ndim == 1 and uses.get(other) == 1:
                add_bias, out, nxt = other, add.output[0], consumers.get(add.output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != "Relu" or out in outputs:
            continue
        relu = nxt[0]
        after = consumers.get(relu.output[0], [])
        if len(after) != 1 or relu.output[0] in outputs:
            continue
        second = _layer(after[0], inits, graph)
        if second is None or second.node.input[0] != relu.output[0] or uses.get(second.weight) != 1:
            continue
        if first.bias is None and add_bias is not None:
            first.bias = add_bias
        found.append((first, second, add_bias))
    return found


def _channel_range(w: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(np.abs(w), axis, 0)
    return moved.reshape(moved.shape[0], -1).max(axis=1)


def _scale(w: np.ndarray, axis: int, s: np.ndarray, divide: bool) -> np.ndarray:
    shape = [1] * w.ndim
    shape[axis] = -1
    f = s.reshape(shape).astype(w.dtype)
    return w / f if divide else w * f


def equalize(model: Any, sweeps: int) -> tuple[int, float]:
    """Rewrite `model` in place; (pairs equalized, largest scale applied)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    pairs = _pairs(graph, inits)
    biggest = 1.0
    for _ in range(sweeps if pairs else 0):
        for first, second, _add in pairs:
            w1, w2 = inits[first.weight], inits[second.weight]
            r1 = _channel_range(w1, first.out_axis)
            r2 = _channel_range(w2, second.in_axis)
            if r1.shape != r2.shape:
                continue
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones_like(r1, dtype=np.float64)
            s[ok] = np.sqrt(r1[ok] / r2[ok])
            inits[first.weight] = _scale(w1, first.out_axis, s, divide=True)
            inits[second.weight] = _scale(w2, second.in_axis, s, divide=False)
            if first.bias is not None:
                inits[first.bias] = (inits[first.bias] / s.astype(inits[first.bias].dtype)).astype(
                    inits[first.bias].dtype
                )
            biggest = max(biggest, float(np.max(np.maximum(s, 1 / s))))
    touched = {x for f, sec, _ in pairs for x in (f.weight, sec.weight, f.bias) if x}
    for i, init in enumerate(graph.initializer):
        if init.name in touched:
            graph.initializer[i].CopyFrom(
                numpy_helper.from_array(inits[init.name].astype(inits[init.name].dtype), init.name)
            )
    return len(pairs), biggest


class EqualizeGraph(Pass[OnnxModel, OnnxModel]):
    name = "equalize_graph"
    version = 1
    input_type = OnnxModel
    output_type = OnnxModel
    Config = EqualizeConfig
    libraries = ("onnx", "onnxruntime", "numpy")
    extra_inputs = ("calibration",)

    def run(self, inp: OnnxModel, cfg: EqualizeConfig, ctx: PassContext) -> PassResult[OnnxModel]:
        import onnx
        from mscompile.runtimes import onnxruntime_session

        model = onnx.load(str(inp.onnx_file))
        pairs, biggest = equalize(model, cfg.sweeps)
        ctx.note(f"cross-layer equalization of {pairs} layer pair(s)")
        out = ctx.workdir / "model.onnx"
        onnx_utils.save(model, out)
        feeds, _ = ctx.data("calibration")
        feeds = {k: v[: cfg.samples] for k, v in feeds.items()}
        names = [o.name for o in cfg.io.outputs]
        before = onnxruntime_session(str(inp.onnx_file), names)(feeds)
        after = onnxruntime_session(str(out), names)(feeds)
        worst = 0.0
        for name, a, b in zip(names, before, after, strict=True):
            err = float(np.abs(a.astype(np.float64) - b).max() / (np.abs(a).max() or 1.0))
            worst = max(worst, err)
            if err > cfg.parity:
                raise RuntimeError(
                    f"cross-layer equalization changed output {name!r} of the float graph by {err:.2e} "
                    f"(relative; allowed {cfg.parity:g}): refusing the rewritten graph"
                )
        meta = dict(inp.meta)
        meta.update(onnx_utils.finish(out))
        meta["equalization"] = {"pairs": pairs, "max_scale": biggest, "parity_rel_err": worst}
        return PassResult(
            path=ctx.workdir, meta=meta, metrics={"pairs": pairs, "max_scale": biggest, "parity_rel_err": worst}
        )
