"""INT8 OpenVINO IR with NNCF.

Plain mode: `nncf.quantize` (post-training quantization: FakeQuantize nodes
calibrated on the calibration set, fast bias correction). Accuracy-control
mode: `nncf.quantize_with_accuracy_control`, which measures a metric on the
validation set against the PyTorch reference (task accuracy when labels exist,
else the mean cosine similarity of the first output) and returns the layers
that cost the most to float until the drop is within `max_drop`. The result is
gated afterwards like every variant; NNCF's own metric only steers it."""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import numpy as np
from mscompile.accuracy import cosine_rows, load_reference, without_padding
from mscompile.artifacts import OpenVinoModel
from mscompile.data import batches
from mscompile.instruments import capture_output
from mscompile.pipeline import Pass, PassContext, PassResult, Status
from mscompile.sections import IOSpec, Section


class NncfConfig(Section):
    io: IOSpec
    batch_size: int
    validation_batch_size: int = 32
    preset: Literal["performance", "mixed"] = "performance"
    model_type: Literal["auto", "default", "transformer"] = "auto"
    fast_bias_correction: bool = True
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    accuracy_control: bool = False
    metric: Literal["accuracy", "cosine"] = "cosine"
    max_drop: float = 0.01
    padding_mask: str | None = None  # accuracy control's cosine skips padded positions, as the gate does


def samples(io: IOSpec, feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One feed dict per sample (NNCF counts subset_size in dataset items)."""
    if not io.has_batch_axis():
        return [feeds]
    n = next(iter(feeds.values())).shape[0]
    return [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(n)]


# ops between an attention product and its Softmax (scale, mask, casts, head reshapes)
_SCORE_OPS = {
    "Add",
    "Multiply",
    "Divide",
    "Subtract",
    "Convert",
    "Reshape",
    "Select",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
}


def attention_blocks(model: Any) -> int:
    """Attention in an OpenVINO model: ScaledDotProductAttention ops (OpenVINO fuses
    most exported attention into one), and Softmaxes whose input is, through scaling
    and masking ops, a MatMul of two activations. A graph with one is quantized with
    NNCF's transformer model type."""

    def product_of_activations(node: Any, depth: int) -> bool:
        kind = node.get_type_name()
        if kind == "MatMul":
            return all(i.get_source_output().get_node().get_type_name() != "Constant" for i in node.inputs())
        if kind not in _SCORE_OPS or depth == 0:
            return False
        return any(product_of_activations(i.get_source_output().get_node(), depth - 1) for i in node.inputs())

    return sum(
        1
        for op in model.get_ops()
        if op.get_type_name() == "ScaledDotProductAttention"
        or (op.get_type_name() == "Softmax" and product_of_activations(op.input(0).get_source_output().get_node(), 6))
    )


class QuantizeNncf(Pass[OpenVinoModel, OpenVinoModel]):
    name = "quantize_nncf"
    version = 3
    input_type = OpenVinoModel
    output_type = OpenVinoModel
    Config = NncfConfig
    libraries = ("nncf", "openvino", "numpy")
    extra_inputs = ("calibration", "reference", "validation")  # the last two steer accuracy control

    def run(self, inp: OpenVinoModel, cfg: NncfConfig, ctx: PassContext) -> PassResult[OpenVinoModel]:
        import nncf
        import openvino as ov

        feeds, _ = ctx.data("calibration")
        items = samples(cfg.io, feeds)
        model = ov.Core().read_model(str(inp.path / "model.xml"))
        kwargs: dict[str, Any] = {
            "preset": nncf.QuantizationPreset(cfg.preset),
            "subset_size": len(items),
            "fast_bias_correction": cfg.fast_bias_correction,
        }
        model_type = cfg.model_type
        if model_type == "auto":
            found = attention_blocks(model)
            model_type = "transformer" if found else "default"
            if found:
                ctx.note(f"{found} attention block(s): NNCF's transformer model type")
        if model_type == "transformer":
            kwargs["model_type"] = nncf.ModelType.TRANSFORMER
        if cfg.exclude_nodes or cfg.exclude_op_types:
            kwargs["ignored_scope"] = nncf.IgnoredScope(
                names=list(cfg.exclude_nodes), types=list(cfg.exclude_op_types), validate=False
            )
        calibration = nncf.Dataset(items)
        settings: dict[str, Any] = {
            "quantizer": "nncf.quantize_with_accuracy_control" if cfg.accuracy_control else "nncf.quantize",
            "nncf": nncf.__version__,
            "preset": cfg.preset,
            "model_type": model_type,
            "calibration_samples": len(items),
        }
        if cfg.accuracy_control:
            ctx.note(f"NNCF accuracy-aware INT8 ({cfg.metric} may drop by {cfg.max_drop:g})")
            quantized = self._accuracy_control(nncf, model, calibration, cfg, ctx, kwargs)
            settings.update(metric=cfg.metric, max_drop=cfg.max_drop)
        else:
            ctx.note(f"NNCF post-training INT8 on {len(items)} calibration samples")
            with capture_output(ctx.log_path):
                quantized = nncf.quantize(model, calibration, **kwargs)
        ops = Counter(op.get_type_name() for op in quantized.get_ops())
        fq = ops.get("FakeQuantize", 0)
        verdict = ""
        if fq == 0 and cfg.accuracy_control:
            # a verdict on this input, not a crash: stored (FAIL, with the float IR NNCF returned)
            # so that an unchanged build does not spend the search again
            verdict = (
                f"NNCF accuracy control returned every layer to float: no INT8 layer set kept {cfg.metric} within "
                f"{cfg.max_drop:g} of the float model"
            )
        elif fq == 0:
            raise RuntimeError("NNCF inserted no FakeQuantize nodes: nothing in this model was quantized")
        ov.save_model(quantized, str(ctx.workdir / "model.xml"), compress_to_fp16=False)
        settings["fake_quantize_nodes"] = fq
        settings["float_nodes"] = []
        meta = dict(inp.meta, precision="int8", quantization=settings, node_count=sum(ops.values()))
        metrics = {
            "fake_quantize_nodes": fq,
            "bytes_before": (inp.path / "model.bin").stat().st_size,
            "bytes_after": (ctx.workdir / "model.bin").stat().st_size,
        }
        if verdict:
            return PassResult(path=ctx.workdir, meta=meta, metrics=metrics, status=Status.FAIL, reason=verdict)
        return PassResult(path=ctx.workdir, meta=meta, metrics=metrics)

    def _accuracy_control(self, nncf: Any, model: Any, calibration: Any, cfg: NncfConfig, ctx: PassContext, kwargs):
        val, labels = ctx.data("validation")
        first = cfg.io.outputs[0].name
        ref = load_reference(ctx.extras["reference"])[first]  # type: ignore[arg-type]
        n = next(iter(val.values())).shape[0]
        step = cfg.validation_batch_size if cfg.io.has_batch_axis() else n
        items = []
        for s, feed in zip(range(0, n, step), batches(val, step) if cfg.io.has_batch_axis() else [val], strict=False):
            items.append((feed, ref[s : s + step], None if labels is None else labels[s : s + step]))
        use_accuracy = cfg.metric == "accuracy" and labels is not None

        def validation_fn(compiled: Any, data: Any) -> float:
            scores = []
            for feed, r, lab in data:
                out = compiled(feed)[compiled.output(first)]
                if use_accuracy:
                    scores.extend((out.argmax(axis=-1) == lab).tolist())
                else:
                    mask = feed.get(cfg.padding_mask) if cfg.padding_mask else None
                    scores.extend(cosine_rows(*without_padding(out, r, mask)).tolist())  # zeros score 0, not 1
            return float(np.mean(scores)) if scores else 0.0

        validation = nncf.Dataset(items, lambda item: item[0])
        with capture_output(ctx.log_path):
            return nncf.quantize_with_accuracy_control(
                model,
                calibration,
                validation,
                validation_fn,
                max_drop=cfg.max_drop,
                drop_type=nncf.DropType.ABSOLUTE,
                **kwargs,
            )
