"""Find the layers that lost accuracy in a static QDQ model.

Runs the float model (after the same pre-processing the quantizer saw) and the
QDQ model on calibration samples with every intermediate tensor exposed, matches
tensors by name (ONNX Runtime's qdq_loss_debug) and computes the
signal-to-quantization-noise ratio (SQNR, dB) of each: `qdq_err` for the noise
added where the tensor itself is quantized, `xmodel_err` for the float vs QDQ
difference accumulated up to it. A node is ranked by the SQNR it loses
between its inputs and its output (where the two models part), worst first;
the recovery loop keeps the top of that list, with the nodes that feed them,
in float. (On MiniLM this finds the Softmax after the additive attention mask,
whose -3.4e38 entries leave uint8 no resolution for the scores, and GELU's Erf.)"""

from __future__ import annotations

import json
import math

from mscompile.artifacts import Artifact, OnnxModel
from mscompile.instruments import capture_output
from mscompile.passes.quantize_int8 import _Reader, pre_process
from mscompile.pipeline import Pass, PassContext, PassResult
from mscompile.sections import IOSpec, Section

CAP_DB = 100.0  # above this, a tensor counts as exact


class QuantAnalysis(Artifact):
    kind = "quant_analysis"


class AnalyzeConfig(Section):
    io: IOSpec
    batch_size: int = 16
    samples: int = 16


class AnalyzeQuantization(Pass[OnnxModel, QuantAnalysis]):
    name = "analyze_quantization"
    version = 5
    input_type = OnnxModel  # the QDQ model
    output_type = QuantAnalysis
    Config = AnalyzeConfig
    libraries = ("onnx", "onnxruntime", "numpy")
    extra_inputs = ("float_model", "calibration")

    def run(self, inp: OnnxModel, cfg: AnalyzeConfig, ctx: PassContext) -> PassResult[QuantAnalysis]:
        import onnx
        from onnxruntime.quantization.qdq_loss_debug import (
            collect_activations,
            compute_activation_error,
            create_activation_matching,
            modify_model_output_intermediate_tensors,
        )

        float_model: OnnxModel = ctx.extras["float_model"]  # type: ignore[assignment]
        scratch = ctx.scratch
        pre = scratch / "float_pre.onnx"
        aug_f, aug_q = scratch / "float_aug.onnx", scratch / "qdq_aug.onnx"
        feeds, _ = ctx.data("calibration")
        feeds = {k: v[: cfg.samples] for k, v in feeds.items()}
        ctx.note(f"SQNR per tensor on {next(iter(feeds.values())).shape[0]} calibration samples")
        with capture_output(ctx.log_path):
            pre_process(str(float_model.onnx_file), str(pre))
            modify_model_output_intermediate_tensors(str(pre), str(aug_f))
            modify_model_output_intermediate_tensors(str(inp.onnx_file), str(aug_q))
            f_act = collect_activations(str(aug_f), _Reader(feeds, 1), execution_providers=["CPUExecutionProvider"])
            q_act = collect_activations(str(aug_q), _Reader(feeds, 1), execution_providers=["CPUExecutionProvider"])
            errors = compute_activation_error(create_activation_matching(q_act, f_act))
        # node names as the quantizer sees them (pre-processing may merge or rename nodes)
        graph = onnx.load(str(pre), load_external_data=False).graph
        for p in (pre, aug_f, aug_q):
            p.unlink(missing_ok=True)
        producers = {o: n.name for n in graph.node for o in n.output}
        sqnr = {t: min(_num(e["xmodel_err"]), CAP_DB) for t, e in errors.items() if e.get("xmodel_err") is not None}
        rows = []
        for node in graph.node:
            out = next((o for o in node.output if o in sqnr), None)
            if out is None:
                continue
            # where the float and QDQ models part: the SQNR a node loses between its inputs and its output
            ins = [sqnr.get(i, CAP_DB) for i in node.input if i in producers or i in sqnr]
            in_db = min(ins) if ins else CAP_DB
            rows.append(
                {
                    "node": node.name,
                    "op_type": node.op_type,
                    "tensor": out,
                    "input_sqnr": round(in_db, 3),
                    "output_sqnr": round(sqnr[out], 3),
                    "drop": round(in_db - sqnr[out], 3),
                    "qdq_sqnr": round(min(_num(errors[out].get("qdq_err", CAP_DB)), CAP_DB), 3),
                }
            )
        rows.sort(key=lambda r: -r["drop"])
        # tensor level: the activations around the nodes where the two models part
        # (worst drop first: the node's output, then its quantized inputs), then the
        # rest by the noise their own quantization adds (qdq SQNR). A masked score
        # tensor (-1e9 entries) keeps a high SQNR of its own while Softmax after it
        # loses everything: the node ranking finds it, the own-noise ranking not.
        readers: dict[str, list[str]] = {}
        for node in graph.node:
            for i in node.input:
                readers.setdefault(i, []).append(node.name)
        own = {
            t: round(min(_num(e["qdq_err"]), CAP_DB), 3)
            for t, e in errors.items()
            if e.get("qdq_err") is not None and t in producers
        }
        nodes = {n.name: n for n in graph.node}
        order: list[str] = []
        for r in rows:
            if r["drop"] <= 0:
                break
            n = nodes[r["node"]]
            for t in [*n.output, *n.input]:
                if t in own and t not in order:
                    order.append(t)
        order += [t for t in sorted(own, key=own.get) if t not in order]
        tensors = [{"tensor": t, "qdq_sqnr": own[t], "consumers": readers.get(t, [])} for t in order]
        path = ctx.workdir / "analysis.json"
        path.write_text(json.dumps({"ranking": rows, "tensors": tensors}, indent=2))
        worst = [{k: r[k] for k in ("node", "op_type", "input_sqnr", "output_sqnr", "drop")} for r in rows[:5]]
        return PassResult(
            path=path,
            meta={"tensors": tensors},
            metrics={"tensors": len(rows), "worst": worst},
        )


def _num(v) -> float:
    v = float(v)
    return v if math.isfinite(v) else (1e9 if v > 0 else -1e9)
