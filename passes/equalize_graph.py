"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through
Weight Equalization and Bias Correction"), float-exact, before quantization.

For two weight layers joined by a ReLU (Gemm, MatMul(+Add) or Conv, then Relu,
then Gemm, MatMul or Conv), output channel i of the first layer is divided by
s_i > 0 (weights and bias) and input channel i of the second multiplied by s_i:
ReLU(x / s) = ReLU(x) / s, so the function is unchanged while the channels'
weight ranges (and the activations between the layers) are balanced, which is
what per-tensor INT8 needs. s_i = sqrt(r1_i / r2_i) with r the per-channel
weight ranges; a few sweeps settle chains of more than two layers.

Then SmoothQuant-style scale migration (Xiao et al. 2023, "SmoothQuant:
Accurate and Efficient Post-Training Quantization for Large Language Models")
for MatMuls with constant weights: a few input channels of a transformer's
activations (after LayerNorm above all) are far larger than the rest, which
per-tensor activation quantization cannot hold. Channel j of the activation is
divided by s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) (measured on calibration
samples) and row j of each weight multiplied by it. When the activation comes
from a LayerNormalization, the division is folded into its scale and bias (and
other readers of the normalized tensor get it back through a Mul); otherwise a
Mul before the MatMuls does it.

The pass checks its own work: the rewritten float graph must give the original
outputs (relative to their magnitude, within `parity`) on calibration samples,
or the pass fails instead of handing on a changed model. A graph with nothing
to rewrite comes back unchanged (`pairs: 0, smoothed: 0`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from mscompile import onnx_utils
from mscompile.artifacts import OnnxModel
from mscompile.pipeline import Pass, PassContext, PassResult
from mscompile.runtimes import onnxruntime_session
from mscompile.sections import IOSpec, Section

LINEAR = ("Gemm", "MatMul", "Conv")


class EqualizeConfig(Section):
    io: IOSpec
    sweeps: int = 4
    samples: int = 32
    parity: float = 1e-5  # max |rewritten - original| / max |original|, per output
    smooth: bool = True  # SmoothQuant-style migration for MatMul inputs
    alpha: float = 0.5  # migration strength: 0 leaves activations alone, 1 moves everything to weights
    min_ratio: float = 4.0  # smooth only activations whose largest channel is this many times their median


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


# the Muls smoothing inserts carry this in their names; the quantizer keeps them in float
# (quantizing their input would bring back the outliers they remove)
SMOOTH_MARK = "/mscompile_smooth"
NORMS = {"LayerNormalization": (1, 2), "SkipLayerNormalization": (2, 3)}  # op: (scale, bias) inputs


def _smooth_candidates(graph: Any, inits: dict[str, np.ndarray]) -> dict[str, list[_Layer]]:
    """activation -> the MatMuls/Gemms reading it as input 0 with a 2-D float constant weight of their own."""
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    found: dict[str, list[_Layer]] = {}
    for n in graph.node:
        if n.op_type not in ("MatMul", "Gemm") or n.input[0] in inits:
            continue
        layer = _layer(n, inits, graph)
        if layer is None or inits[layer.weight].ndim != 2 or inits[layer.weight].dtype != np.float32:
            continue
        if uses.get(layer.weight) == 1:
            found.setdefault(n.input[0], []).append(layer)
    return found


def _channel_max(model: Any, tensors: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each tensor, on the given samples."""
    import tempfile
    from pathlib import Path

    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for t in tensors:
        if t not in have:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "probe.onnx"
        onnx_utils.save(probe, path)
        values = onnxruntime_session(str(path), tensors)(feeds)
    return {t: np.abs(v.reshape(-1, v.shape[-1])).max(axis=0) for t, v in zip(tensors, values, strict=True)}


def smooth(model: Any, feeds: dict[str, np.ndarray], alpha: float, min_ratio: float) -> tuple[int, float]:
    """SmoothQuant-style migration in place; (activations smoothed, largest scale)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    cands = _smooth_candidates(graph, inits)
    if not cands:
        return 0, 1.0
    amax = _channel_max(model, sorted(cands), feeds)
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    changed: set[str] = set()
    done, biggest = 0, 1.0
    for x, mms in sorted(cands.items()):
        a = amax[x].astype(np.float64)
        wmax = np.max([_channel_range(inits[m.weight], m.in_axis) for m in mms], axis=0).astype(np.float64)
        if a.shape != wmax.shape or not np.all(np.isfinite(a)):
            continue
        med = float(np.median(a))
        if med <= 0 or a.max() < min_ratio * med:
            continue  # no outlier channels: nothing to migrate
        ok = (a > 0) & (wmax > 0)
        s = np.ones_like(a)
        s[ok] = a[ok] ** alpha / wmax[ok] ** (1 - alpha)
        s = np.clip(s, 1e-5, 1e5)
        if ok.any():
            s[ok] /= np.exp(np.mean(np.log(s[ok])))  # keep the overall level: only the spread moves
        # a channel every weight ignores (zero row) can be scaled down freely: to the others' level
        idle = (a > 0) & (wmax == 0)
        if idle.any():
            level = float(np.median(a[ok] / s[ok])) if ok.any() else med
            s[idle] = np.maximum(a[idle] / max(level, 1e-12), 1.0)
        for m in mms:
            inits[m.weight] = _scale(inits[m.weight], m.in_axis, s, divide=False).astype(np.float32)
            changed.add(m.weight)
        fold = _fold_targets(x, producers, consumers, inits, outputs, s.shape)
        inv = (1.0 / s).astype(np.float32)
        if fold is not None:
            for name, axis in fold:
                inits[name] = _scale(inits[name], axis, s, divide=True).astype(np.float32)
                changed.add(name)
            readers = {id(m.node) for m in mms}
            others = [n for n in consumers.get(x, []) if id(n) not in readers]
            if others or x in outputs:
                restore = f"{x}{SMOOTH_MARK}_restore"
                graph.initializer.append(numpy_helper.from_array(s.astype(np.float32), f"{restore}_factor"))
                graph.node.append(helper.make_node("Mul", [x, f"{restore}_factor"], [restore], name=restore))
                for n in others:
                    for k, name in enumerate(n.input):
                        if name == x:
                            n.input[k] = restore
        else:
            smoothed = f"{x}{SMOOTH_MARK}"
            graph.initializer.append(numpy_helper.from_array(inv, f"{smoothed}_factor"))
            graph.node.append(helper.make_node("Mul", [x, f"{smoothed}_factor"], [smoothed], name=smoothed))
            for m in mms:
                m.node.input[0] = smoothed
        done += 1
        biggest = max(biggest, float(np.max(np.maximum(s, 1 / s))))
    for i, init in enumerate(graph.initializer):
        if init.name in changed:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(inits[init.name], init.name))
    if done:
        _toposort(graph)
    return done, biggest


def _fold_targets(
    x: str,
    producers: dict[str, Any],
    consumers: dict[str, list[Any]],
    inits: dict[str, np.ndarray],
    outputs: set[str],
    shape: tuple[int, ...],
) -> list[tuple[str, int]] | None:
    """Where dividing channel j of `x` by s_j can be folded into constants, float-exact:
    [(initializer, channel axis)] or None. `x` from a LayerNormalization: its scale and
    bias; `x` from a Relu (or straight) from a Gemm/Conv/MatMul(+Add bias) layer: that
    layer's output channels (ReLU(z / s) = ReLU(z) / s for s > 0)."""

    def own(name: str) -> bool:  # an initializer only this node reads, one value per channel
        return name in inits and len(consumers.get(name, [])) == 1

    if x in outputs:
        return None
    node = producers.get(x)
    if node is None:
        return None
    io = NORMS.get(node.op_type)
    if io is not None:
        if node.output[0] != x or len(node.input) <= io[1]:
            return None
        names = [node.input[i] for i in io]
        if all(own(n) and inits[n].shape == shape for n in names):
            return [(n, 0) for n in names]
        return None
    if node.op_type == "Relu":
        z = node.input[0]
        if len(consumers.get(z, [])) != 1 or z in outputs:
            return None
        node = producers.get(z)
        if node is None:
            return None
    bias_add = None
    if node.op_type == "Add":  # MatMul + Add(bias)
        add = node
        mm = [producers.get(i) for i in add.input if i not in inits]
        const = [i for i in add.input if i in inits]
        if len(mm) != 1 or mm[0] is None or mm[0].op_type != "MatMul" or len(const) != 1:
            return None
        if len(consumers.get(mm[0].output[0], [])) != 1 or mm[0].output[0] in outputs:
            return None
        node, bias_add = mm[0], const[0]
        if not own(bias_add) or inits[bias_add].shape != shape:
            return None
    if node.op_type == "Conv":  # its channels are not the last axis the MatMul reads
        return None
    layer = _layer(node, inits, None)
    if layer is None or not own(layer.weight) or inits[layer.weight].shape[layer.out_axis] != shape[0]:
        return None
    out = [(layer.weight, layer.out_axis)]
    bias = layer.bias or bias_add
    if bias is not None:
        if not own(bias) or inits[bias].shape != shape:
            return None
        out.append((bias, 0))
    return out


def _toposort(graph: Any) -> None:
    """Reorder nodes so every input is produced before it is read (new Muls went to the end)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, order = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                order.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError("equalize_graph: the rewritten graph has a cycle or an unknown input")
        pending = rest
    nodes = [type(n)() for n in order]
    for new, old in zip(nodes, order, strict=True):
        new.CopyFrom(old)
    del graph.node[:]
    graph.node.extend(nodes)


class EqualizeGraph(Pass[OnnxModel, OnnxModel]):
    name = "equalize_graph"
    version = 2
    input_type = OnnxModel
    output_type = OnnxModel
    Config = EqualizeConfig
    libraries = ("onnx", "onnxruntime", "numpy")
    extra_inputs = ("calibration",)

    def run(self, inp: OnnxModel, cfg: EqualizeConfig, ctx: PassContext) -> PassResult[OnnxModel]:
        import onnx

        model = onnx.load(str(inp.onnx_file))
        pairs, biggest = equalize(model, cfg.sweeps)
        feeds, _ = ctx.data("calibration")
        feeds = {k: v[: cfg.samples] for k, v in feeds.items()}
        smoothed, s_biggest = smooth(model, feeds, cfg.alpha, cfg.min_ratio) if cfg.smooth else (0, 1.0)
        ctx.note(f"cross-layer equalization of {pairs} layer pair(s), {smoothed} MatMul input(s) smoothed")
        out = ctx.workdir / "model.onnx"
        onnx_utils.save(model, out)
        names = [o.name for o in cfg.io.outputs]
        before = onnxruntime_session(str(inp.onnx_file), names)(feeds)
        after = onnxruntime_session(str(out), names)(feeds)
        worst = 0.0
        for name, a, b in zip(names, before, after, strict=True):
            err = float(np.abs(a.astype(np.float64) - b).max() / (np.abs(a).max() or 1.0))
            worst = max(worst, err)
            if err > cfg.parity:
                raise RuntimeError(
                    f"equalization/smoothing changed output {name!r} of the float graph by {err:.2e} "
                    f"(relative; allowed {cfg.parity:g}): refusing the rewritten graph"
                )
        meta = dict(inp.meta)
        meta.update(onnx_utils.finish(out))
        found = {
            "pairs": pairs,
            "max_scale": biggest,
            "smoothed": smoothed,
            "smooth_max_scale": s_biggest,
            "parity_rel_err": worst,
        }
        meta["equalization"] = found
        return PassResult(path=ctx.workdir, meta=meta, metrics=found)
