"""Static INT8 of MiniLM's MatMuls after SmoothQuant-style smoothing, against dynamic INT8.

  python bench/study_minilm_smoothing.py

Builds the fp32 graph of all-MiniLM-L6-v2 with mscompile (cached in bench/.work),
then quantizes its MatMuls (every other op stays float) with ONNX Runtime's
static QDQ quantizer, minmax calibration on the example's calibration sentences:
without smoothing, after smoothing with alpha 0.5 and 0.75 (mscompile's
equalize_graph pass, float-exact, checked), and after smoothing with the two
attention MatMuls of each layer (activation x activation, which smoothing cannot
reach) also left in float. Dynamic INT8 (weights only) is the other route.

For each: cosine similarity of the sentence embeddings to the fp32 graph's on the
40 validation sentences (mean and worst), and latency at batch 8 measured side by
side, interleaved, as a ratio to ONNX Runtime fp32. The fp32 graph matches PyTorch
to ~1e-6 (the build's own gate), so it stands in for it here.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "minilm_smooth"
sys.path.insert(0, str(ROOT))


def fp32_graph() -> Path:
    from mscompile.builder import BuildOptions
    from mscompile.tasks import build, parse_config

    cfg = yaml.safe_load((ROOT / "examples/minilm/model.yaml").read_text())
    cfg["targets"] = [{"name": "fp32", "precision": "fp32", "tolerance": {"cosine_min": 0.9999}}]
    cfg["triton"]["repository"] = str(WORK / "repo")
    cfg["profile"] = {"enabled": False}
    os.chdir(ROOT)
    res = build(
        parse_config(cfg), ROOT / "examples/minilm/model.yaml", BuildOptions(cache_dir=WORK / "cache", quiet=True)
    )
    return res.variants[0].model.onnx_file


def main() -> None:
    import onnx
    import onnxruntime as ort
    from mscompile.passes.equalize_graph import SMOOTH_MARK, smooth
    from mscompile.passes.quantize_int8 import pre_process
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    WORK.mkdir(parents=True, exist_ok=True)
    src = fp32_graph()
    calib = (
        dict(np.load(ROOT / "calibration_data/minilm_calib.npz"))
        if (ROOT / "calibration_data/minilm_calib.npz").exists()
        else None
    )
    if calib is None:
        from examples.minilm.model import tokenize

        calib = tokenize((ROOT / "calibration_data/minilm_calib.txt").read_text().splitlines())
    val = dict(np.load(ROOT / "calibration_data/minilm_val.npz"))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = next(iter(calib.values())).shape[0]
            self.it = iter([{k: v[i : i + 8] for k, v in calib.items()} for i in range(0, n - n % 8, 8)])

        def get_next(self):
            return next(self.it, None)

    def run(path: Path, feeds: dict) -> np.ndarray:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(["embeddings"], feeds)[0]

    ref = run(src, val)
    tmp = Path(tempfile.mkdtemp(dir=WORK))
    attention = [
        n.name
        for n in onnx.load(str(src), load_external_data=False).graph.node
        if n.op_type == "MatMul" and n.input[1] not in {i.name for i in onnx.load(str(src)).graph.initializer}
    ]

    def static(name: str, alpha: float | None, exclude: list[str]) -> Path:
        graph = src
        if alpha is not None:
            m = onnx.load(str(src))
            n, _ = smooth(m, {k: v[:32] for k, v in calib.items()}, alpha=alpha, min_ratio=4.0)
            graph = tmp / f"{name}.smooth.onnx"
            onnx.save(m, str(graph))
            exact = np.abs(run(graph, val) - ref).max() / np.abs(ref).max()
            print(f"  {name}: {n} MatMul inputs smoothed, float parity {exact:.1e}")
            exclude = exclude + [x.name for x in m.graph.node if SMOOTH_MARK in x.name]
        pre = tmp / f"{name}.pre.onnx"
        pre_process(str(graph), str(pre))
        out = tmp / f"{name}.onnx"
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=exclude,
        )
        return out

    variants: dict[str, Path] = {"fp32": src}
    print("quantizing ...")
    variants["static"] = static("static", None, [])
    variants["static smooth a=0.5"] = static("s05", 0.5, [])
    variants["static smooth a=0.75"] = static("s075", 0.75, [])
    variants["static smooth a=0.5, attention float"] = static("s05att", 0.5, attention)
    dyn = tmp / "dynamic.onnx"
    quantize_dynamic(str(src), str(dyn), weight_type=QuantType.QInt8, per_channel=True)
    variants["dynamic"] = dyn

    threads = int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1))
    sessions = {}
    for k, p in variants.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        sessions[k] = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
    batch = {k: v[:8] for k, v in val.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():  # warm up
        s.run(None, batch)
    for _ in range(15):  # interleaved rounds
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, batch)
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["fp32"])
    print(
        f"\nall-MiniLM-L6-v2, 40 validation sentences, batch 8 latency as a ratio to ONNX Runtime fp32 ({threads} threads)"
    )
    print(f"{'variant':40} {'cos mean':>9} {'cos worst':>9} {'speed vs fp32':>14}")
    for k, s in sessions.items():
        out = s.run(["embeddings"], val)[0]
        cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
        print(f"{k:40} {cos.mean():9.4f} {cos.min():9.4f} {base / statistics.median(times[k]):13.2f}x")


if __name__ == "__main__":
    main()
