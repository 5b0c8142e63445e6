"""INT8 with ONNX Runtime's quantizer, for the onnxruntime backend.

static: `quant_pre_process`, then `quantize_static` to QDQ with uint8
activations and int8 (per-channel) weights, calibrated on the calibration set
with MinMax, Percentile or Entropy (a real histogram: `num_bins`). Formats are
pinned explicitly, since ONNX Runtime's defaults have changed between releases.
dynamic: `quantize_dynamic`, int8 weights, activations quantized at run time
(the route that keeps transformer MatMuls accurate).
Nodes named in `exclude_nodes` (or of `exclude_op_types`) stay in float: the
recovery loop uses this to repair a variant that misses its gate."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from mscompile import onnx_utils
from mscompile.artifacts import OnnxModel
from mscompile.data import batches
from mscompile.instruments import capture_output
from mscompile.passes.equalize_graph import SMOOTH_MARK, _attr, _layer
from mscompile.pipeline import Pass, PassContext, PassResult
from mscompile.runtimes import onnxruntime_session
from mscompile.sections import IOSpec, Section


class Int8Config(Section):
    mode: Literal["static", "dynamic"]
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    percentile: float = 99.999
    num_bins: int = 2048
    per_channel: bool = True
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    float_tensors: tuple[str, ...] = ()  # static: activations left without Q/DQ (their consumers read float)
    bias_correction: bool = False  # static: cancel the mean output shift weight quantization causes
    io: IOSpec
    batch_size: int = 16  # calibration batches


def quantizable_nodes(model, mode: str) -> list[str]:
    """Names of the nodes ONNX Runtime's quantizer would quantize in this mode."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry

    ops = set(QDQRegistry) if mode == "static" else set(IntegerOpsRegistry)
    return [n.name for n in model.graph.node if n.op_type in ops and n.name]


# ONNX's integer element types (TensorProto codes): INT8..UINT64, BOOL
_INT_TYPES = {2, 3, 4, 5, 6, 7, 9, 12, 13}
_FLOAT_TYPES = {1, 10, 11, 16}


def index_path_nodes(model) -> set[str]:
    """Float nodes that compute integers: from a Cast of integers to float, through float
    ops fed by nothing but that path, constants and integers, to a Cast back to integers
    (T5's relative-position buckets: Cast, Div, Log, Mul, Cast, then a Gather's indices).
    Quantizing them moves the indices (a Gather then reads index -9.2e18): they stay float."""
    import onnx

    if not any(n.op_type == "Cast" and _attr(n, "to", 0) in _INT_TYPES for n in model.graph.node):
        return set()  # no float result becomes an integer: nothing to infer (most graphs)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a graph shape inference cannot read: nothing to exclude
        return set()
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    constant = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    derived: set[str] = set()  # float tensors computed from integers only
    path: dict[str, Any] = {}
    for n in g.node:  # nodes are in topological order
        ins = [i for i in n.input if i]
        if n.op_type == "Cast" and _attr(n, "to", 0) in _FLOAT_TYPES and ins and types.get(ins[0]) in _INT_TYPES:
            derived.update(n.output)
            path[n.name] = n
            continue
        if (
            ins
            and any(i in derived for i in ins)
            and all(i in derived or i in constant or types.get(i) in _INT_TYPES for i in ins)
        ):
            derived.update(o for o in n.output if types.get(o) in _FLOAT_TYPES or n.op_type == "Cast")
            path[n.name] = n
    # only the part that ends in a Cast to integers
    ends = [n for n in path.values() if n.op_type == "Cast" and _attr(n, "to", 0) in _INT_TYPES]
    producer = {o: n for n in path.values() for o in n.output}
    keep: set[str] = set()
    stack = [i for n in ends for i in n.input]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in keep:
            continue
        keep.add(node.name)
        stack.extend(node.input)
    return {name for name in keep if name}


def even_batch(n: int, batch: int) -> int:
    """The largest batch size <= `batch` that divides `n`: ONNX Runtime's histogram
    calibrators stack every batch's tensors and fail on a short last batch."""
    return max(d for d in range(1, max(1, min(batch, n)) + 1) if n % d == 0)


class _Reader:
    """CalibrationDataReader over in-memory feeds, in batches of equal size."""

    def __init__(self, feeds: dict[str, np.ndarray], batch: int) -> None:
        n = next(iter(feeds.values())).shape[0]
        self._it = iter(list(batches(feeds, even_batch(n, batch))))

    def get_next(self):
        return next(self._it, None)

    def __iter__(self):  # qdq_loss_debug iterates the reader
        return self._it

    def rewind(self):  # pragma: no cover - not used by MinMax/Entropy/Percentile
        pass


def histogram_ranges(model: Path, method, options: dict, reader: _Reader, out: Path) -> None:
    """Percentile/Entropy ranges from a histogram with `options['num_bins']` bins."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    calibrator = create_calibrator(
        str(model),
        augmented_model_path=str(out.with_suffix(".aug.onnx")),
        calibrate_method=method,
        extra_options=options,
    )
    calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), out)
    out.with_suffix(".aug.onnx").unlink(missing_ok=True)


def keep_float(model, tensors: set[str]) -> list[str]:
    """Remove the Q/DQ pair on each activation in `tensors` from a QDQ graph, so its
    consumers read the float tensor; returns the tensors actually changed."""
    g = model.graph
    outputs = {o.name for o in g.output}
    done, drop, rename = [], [], {}
    # a graph output keeps its name: the quantizer renamed the float tensor feeding its Q
    # (DequantizeLinear -> output); take the Q's input as the float tensor
    by_output = {n.output[0]: n for n in g.node}
    for t in sorted(tensors & outputs):
        dq = by_output.get(t)
        q = by_output.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            dq.op_type, dq.domain = "Identity", ""
            dq.input[0] = q.input[0]
            del dq.input[1:]
            del dq.attribute[:]
            if not any(q.output[0] in n.input for n in g.node if n is not dq):
                drop.append(q)
            done.append(t)
    for q in [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] in tensors]:
        dqs = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]]
        if any(q.output[0] in n.input for n in g.node if n.op_type != "DequantizeLinear") or not dqs:
            continue  # the integer value itself is used: leave this pair
        for dq in dqs:
            if dq.output[0] in outputs:  # keep the graph output's name: an Identity of the float tensor
                dq.op_type, dq.domain = "Identity", ""
                del dq.input[1:]
                dq.input[0] = q.input[0]
                del dq.attribute[:]
            else:
                rename[dq.output[0]] = q.input[0]
                drop.append(dq)
        drop.append(q)
        done.append(q.input[0])
    for n in g.node:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    for n in drop:
        g.node.remove(n)
    return sorted(set(done))


def _biased_layers(model) -> list[tuple[str, str, str, str, str]]:
    """(node, input, weight, bias, kind) for Gemm/Conv with a constant bias and MatMul + Add(bias)."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}
    found = []
    for n in model.graph.node:
        layer = _layer(n, inits, model.graph)
        if layer is None or n.input[0] in inits:
            continue
        bias = layer.bias
        if n.op_type == "MatMul":
            after = consumers.get(n.output[0], [])
            if len(after) != 1 or after[0].op_type != "Add" or n.output[0] in outputs:
                continue
            other = [i for i in after[0].input if i != n.output[0]]
            if len(other) != 1 or other[0] not in inits or len(consumers.get(other[0], [])) != 1:
                continue
            bias = other[0]
        if bias is None or inits[bias].ndim != 1 or inits[bias].dtype != np.float32:
            continue
        if n.op_type == "Conv" and _attr(n, "group", 1) != 1:
            continue
        kind = "gemm_t" if n.op_type == "Gemm" and _attr(n, "transB", 0) else n.op_type.lower()
        found.append((n.name, n.input[0], layer.weight, bias, kind))
    return found


def _dequantized_weights(q) -> dict[str, np.ndarray]:
    """node name -> its weight as the QDQ graph computes it (DequantizeLinear of the int8 weight)."""
    from onnx import helper, numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    by_output = {o: n for n in q.graph.node for o in n.output}
    out = {}
    for n in q.graph.node:
        if n.op_type not in ("Gemm", "Conv", "MatMul") or len(n.input) < 2:
            continue
        dq = by_output.get(n.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        w = inits[dq.input[0]].astype(np.float64)
        scale = inits[dq.input[1]].astype(np.float64)
        zp = inits[dq.input[2]].astype(np.float64) if len(dq.input) > 2 and dq.input[2] in inits else 0.0
        axis = next((helper.get_attribute_value(a) for a in dq.attribute if a.name == "axis"), 1)
        if np.ndim(scale) == 1 and scale.size > 1:
            shape = [1] * w.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zp = np.reshape(zp, shape) if np.ndim(zp) == 1 else zp
        out[n.name] = (w - zp) * scale
    return out


def correct_biases(pre: Path, qdq: Path, feeds: dict[str, np.ndarray], batch: int, dst: Path) -> dict:
    """Bias correction (Nagel et al. 2019): quantizing a layer's weights W to W_q shifts
    its mean output by (W_q - W) E[x]; subtract that shift from the layer's float bias,
    with E[x] the mean of the layer's input on the calibration samples. Writes the
    corrected float graph to `dst` (to be quantized again: W_q does not change);
    returns {"layers": n, "max_shift": largest |shift| relative to the bias range}."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(pre))
    layers = _biased_layers(model)
    wq = _dequantized_weights(onnx.load(str(qdq)))
    layers = [ly for ly in layers if ly[0] in wq]
    if not layers:
        return {"layers": 0, "max_shift": 0.0}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    tensors = sorted({ly[1] for ly in layers})
    for t in tensors:
        if t not in have:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    probe_path = dst.with_suffix(".probe.onnx")
    onnx_utils.save(probe, probe_path)
    sess = onnxruntime_session(str(probe_path), tensors)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    conv_inputs = {ly[1] for ly in layers if ly[4] == "conv"}
    for chunk in batches(feeds, batch):
        for t, v in zip(tensors, sess(chunk), strict=True):
            v = v.astype(np.float64)
            flat = np.moveaxis(v, 1, -1) if t in conv_inputs else v
            flat = flat.reshape(-1, flat.shape[-1])
            sums[t] = sums.get(t, 0) + flat.sum(axis=0)
            counts[t] = counts.get(t, 0) + flat.shape[0]
    probe_path.unlink(missing_ok=True)
    inits = {i.name: i for i in model.graph.initializer}
    worst = 0.0
    for name, x, weight, bias, kind in layers:
        w = numpy_helper.to_array(inits[weight]).astype(np.float64)
        eps = wq[name] - w
        mean = sums[x] / counts[x]
        if kind == "gemm_t":
            shift = eps @ mean
        elif kind == "conv":
            shift = eps.reshape(eps.shape[0], eps.shape[1], -1).sum(axis=2) @ mean
        else:  # Gemm without transB, MatMul: W is [in, out]
            shift = mean @ eps
        b = numpy_helper.to_array(inits[bias]).astype(np.float64)
        if shift.shape != b.shape:
            continue
        worst = max(worst, float(np.abs(shift).max() / (np.abs(b).max() or 1.0)))
        inits[bias].CopyFrom(numpy_helper.from_array((b - shift).astype(np.float32), bias))
    onnx_utils.save(model, dst)
    return {"layers": len(layers), "max_shift": round(worst, 6)}


def pre_process(src: str, dst: str) -> str:
    """quant_pre_process (shape inference + basic optimization); falls back to ONNX
    shape inference only when the symbolic pass cannot handle the graph."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(src, dst, auto_merge=True)
        return "symbolic"
    except Exception:  # the symbolic shape pass fails on some graphs; the ONNX one is enough then
        quant_pre_process(src, dst, skip_symbolic_shape=True)
        return "onnx"


class QuantizeInt8(Pass[OnnxModel, OnnxModel]):
    name = "quantize_int8"
    version = 11
    input_type = OnnxModel
    output_type = OnnxModel
    Config = Int8Config
    libraries = ("onnx", "onnxruntime", "numpy")
    extra_inputs = ("calibration",)

    def run(self, inp: OnnxModel, cfg: Int8Config, ctx: PassContext) -> PassResult[OnnxModel]:
        import onnx
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )

        out = ctx.workdir / "model.onnx"
        settings: dict = {"mode": cfg.mode, "per_channel": cfg.per_channel, "weight_type": "int8"}
        pre = ctx.scratch / "pre.onnx"  # not part of the artifact
        if cfg.mode == "static":
            with capture_output(ctx.log_path):
                settings["shape_inference"] = pre_process(str(inp.onnx_file), str(pre))
        # node names as the quantizer sees them
        src_model = onnx.load(str(pre if cfg.mode == "static" else inp.onnx_file), load_external_data=False)
        # smoothing's scaling Muls are not part of the model: always float, never counted
        helpers = {n.name for n in src_model.graph.node if SMOOTH_MARK in n.name}
        index_nodes = index_path_nodes(src_model)
        helpers |= index_nodes  # integer arithmetic in float: never quantized, not the search's exclusions
        candidates = [c for c in quantizable_nodes(src_model, cfg.mode) if c not in helpers]
        names = {n.name for n in src_model.graph.node}
        unknown = sorted(set(cfg.exclude_nodes) - names)
        excluded = (set(cfg.exclude_nodes) & names) | {
            n.name for n in src_model.graph.node if n.op_type in cfg.exclude_op_types
        }

        with capture_output(ctx.log_path):
            if cfg.mode == "static":
                feeds, _ = ctx.data("calibration")
                n = next(iter(feeds.values())).shape[0]
                ctx.note(
                    f"static QDQ, {cfg.calibration_method} calibration on {n} samples, {len(excluded)} nodes kept in float"
                )
                method = {
                    "minmax": CalibrationMethod.MinMax,
                    "percentile": CalibrationMethod.Percentile,
                    "entropy": CalibrationMethod.Entropy,
                }[cfg.calibration_method]
                reader = _Reader(feeds, cfg.batch_size)
                cache = None
                extra: dict = {}
                if cfg.calibration_method != "minmax":
                    # quantize_static does not pass a bin count on to its calibrator: run the
                    # histogram calibration here with the configured bins and hand over its ranges
                    cache = ctx.scratch / "calibration.json"
                    extra = {"num_bins": cfg.num_bins}
                    if cfg.calibration_method == "percentile":
                        extra["percentile"] = cfg.percentile
                    else:
                        extra["num_quantized_bins"] = 128
                    histogram_ranges(pre, method, extra, reader, cache)
                    reader = None

                def static(graph: Path, reader: _Reader | None) -> None:
                    quantize_static(
                        str(graph),
                        str(out),
                        reader,
                        quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        per_channel=cfg.per_channel,
                        reduce_range=False,
                        calibrate_method=method,
                        nodes_to_exclude=sorted(excluded | helpers),
                        calibration_cache_path=str(cache) if cache else None,
                        # with activations kept in float, a Relu must stay a node: folded into its
                        # Q (zero point 0 clamps), it would vanish with the Q/DQ pair removed
                        extra_options={"QDQKeepRemovableActivations": bool(cfg.float_tensors)},
                    )

                static(pre, reader)
                if cfg.bias_correction:
                    corrected = ctx.scratch / "pre_bias_corrected.onnx"
                    bc = correct_biases(pre, out, feeds, cfg.batch_size, corrected)
                    ctx.note(f"bias correction of {bc['layers']} layer(s)")
                    if bc["layers"]:
                        static(corrected, None if cache else _Reader(feeds, cfg.batch_size))
                    settings["bias_correction"] = bc
                    corrected.unlink(missing_ok=True)
                pre.unlink(missing_ok=True)
                settings.update(
                    quantizer="onnxruntime.quantize_static",
                    format="QDQ",
                    activation_type="uint8",
                    calibration_method=cfg.calibration_method,
                    calibration_samples=int(n),
                    **extra,
                )
            else:
                ctx.note(f"dynamic INT8, {len(excluded)} nodes kept in float")
                # without the graph's value_info: ONNX Runtime 1.30's quantizer re-runs shape
                # inference after rewriting weights, and a stale entry for a weight made it fail
                # ("Inferred shape and existing shape differ in dimension 0: (512) vs (64)")
                bare = onnx.load(str(inp.onnx_file))
                del bare.graph.value_info[:]
                dyn_src = ctx.scratch / "dynamic_src.onnx"
                onnx_utils.save(bare, dyn_src)
                quantize_dynamic(
                    str(dyn_src),
                    str(out),
                    weight_type=QuantType.QInt8,
                    per_channel=cfg.per_channel,
                    reduce_range=False,
                    nodes_to_exclude=sorted(excluded | helpers),
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                )
                settings.update(quantizer="onnxruntime.quantize_dynamic", format="QOperator")
        q = onnx.load(str(out))
        floated: list[str] = []
        float_nodes: set[str] = set()
        if cfg.float_tensors and cfg.mode == "static":
            wanted = set(cfg.float_tensors)
            for n in src_model.graph.node:  # a float activation after Relu/Clip: its input too
                if n.op_type in ("Relu", "Clip") and n.output[0] in wanted:
                    wanted.add(n.input[0])
            floated = keep_float(q, wanted)
            onnx_utils.save(q, out)
            consumers = {t: {n.name for n in src_model.graph.node if t in n.input} for t in floated}
            float_nodes = set().union(*consumers.values()) & set(candidates) if consumers else set()
        ops = Counter(n.op_type for n in q.graph.node)
        quantized = [c for c in candidates if c not in excluded]
        meta = dict(inp.meta)
        meta.update(onnx_utils.finish(out))
        meta.update(precision="int8", quantization=settings)
        metrics = {
            **settings,
            "quantizable_nodes": len(candidates),
            "excluded_nodes": sorted(excluded),
            "float_tensors": floated,
            # quantizable nodes left in float, by exclusion or by reading a float tensor
            "nodes_in_float": len(set(excluded) | float_nodes),
            "quantized_nodes": len(quantized),
            "quantized_node_names": quantized,
            "unknown_excluded_nodes": unknown,
            "index_nodes_in_float": sorted(index_nodes),
            "qdq_nodes": ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0),
            "integer_ops": sum(
                v
                for k, v in ops.items()
                if k.startswith(("QLinear", "MatMulInteger", "ConvInteger", "DynamicQuantize"))
            ),
            "bytes_before": inp.onnx_file.stat().st_size,
            "bytes_after": out.stat().st_size,
        }
        return PassResult(path=ctx.workdir, meta=meta, metrics=metrics)
