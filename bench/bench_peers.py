"""mscompile against what a user would otherwise pick, side by side in one run.

  python bench/bench_peers.py [--quick] [--models resnet,minilm,build]

Same threads everywhere (BENCH_THREADS, default all cores), interleaved rounds,
median latency. Runners:
  - torch eager fp32
  - torch with bf16 autocast (CPU)
  - an Optimum-equivalent pipeline: ONNX Runtime's graph optimizer (transformer
    fusion for MiniLM, extended level for ResNet) and ONNX Runtime quantization
    with the defaults optimum-onnx's AutoQuantizationConfig.avx512_vnni uses
    (dynamic for MiniLM, static per-tensor QDQ for ResNet)
  - OpenVINO on mscompile's exported fp32 ONNX
  - the variant mscompile selects (`triton.deploy: fastest`, measured by its
    profile pass; a target with `cpu: {accelerator: openvino}` is profiled with
    the OpenVINO runtime on the same ONNX file)
for ResNet-50 (batch 1 and 8) and MiniLM (sequence 128, batch 1 and 8), with
each one's accuracy (cosine similarity to torch fp32). Then the build cost: a
full build of examples/digits and an unchanged rebuild, through the CLI.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_int8 import (  # noqa: E402
    ROOT,
    THREADS,
    WORK,
    build,
    cosine,
    minilm_bench_inputs,
    minilm_module,
    ort_session,
    prepare_minilm,
    prepare_resnet,
    resnet_module,
    smooth_images,
    time_side_by_side,
)


def openvino_runner(path: Path):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_NUM_THREADS": THREADS})
    return lambda feeds: compiled(feeds)[0]


def optimum_equivalent(fp32_onnx: Path, kind: str, calib: dict[str, np.ndarray] | None) -> Path:
    """What optimum-onnx's ORTOptimizer + ORTQuantizer (avx512_vnni defaults) produce."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    out_dir = WORK / f"optimum_{kind}"
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "model_quantized.onnx"
    if final.exists():
        return final
    opt = out_dir / "model_optimized.onnx"
    if kind == "minilm":
        from onnxruntime.transformers.optimizer import optimize_model

        optimize_model(str(fp32_onnx), model_type="bert", num_heads=0, hidden_size=0).save_model_to_file(str(opt))
        # AutoQuantizationConfig.avx512_vnni(is_static=False): dynamic, QUInt8 weights... per-tensor by default
        quantize_dynamic(
            str(opt),
            str(final),
            weight_type=QuantType.QInt8,
            per_channel=False,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(opt)
        ort.InferenceSession(str(fp32_onnx), so, providers=["CPUExecutionProvider"])

        class Reader:
            def __init__(self) -> None:
                self.it = iter(
                    [{k: v[i : i + 8] for k, v in calib.items()} for i in range(0, len(next(iter(calib.values()))), 8)]
                )

            def get_next(self):
                return next(self.it, None)

        # avx512_vnni(is_static=True): QDQ, QUInt8 activations, QInt8 weights, per-tensor
        quantize_static(
            str(opt),
            str(final),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=False,
        )
    return final


def peers(title: str, module, result, fp32_onnx: Path, optimum: Path, feeds_by_batch: dict, rounds: int, iters: int):
    import torch

    deployed = next(v for v in result.variants if v.target == result.manifest_deployed)
    t = deployed.target
    use_ov = bool(deployed.profile and deployed.profile.get("runtime") == "openvino")
    rows = []
    sel_run = openvino_runner(deployed.model.onnx_file) if use_ov else None
    sel_sess = None if use_ov else ort_session(deployed.model.onnx_file)
    opt_sess = ort_session(optimum)
    ov_run = openvino_runner(fp32_onnx)
    for batch, feeds in feeds_by_batch.items():
        args = [torch.from_numpy(feeds[k]) for k in feeds]

        def eager(args=args):
            with torch.inference_mode():
                return module(*args)

        def bf16(args=args):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return module(*args)

        runners = {
            "torch eager fp32": eager,
            "torch bf16 autocast": bf16,
            "optimum-equivalent (ORT opt + int8)": lambda feeds=feeds: opt_sess.run(None, feeds)[0],
            "OpenVINO on mscompile fp32 ONNX": lambda feeds=feeds: ov_run(feeds),
            f"mscompile selected: {t}": (lambda feeds=feeds: sel_run(feeds))
            if use_ov
            else (lambda feeds=feeds: sel_sess.run(None, feeds)[0]),
        }
        ms = time_side_by_side(runners, rounds, iters)
        with torch.inference_mode():
            ref = module(*args).float().numpy()
        for name, fn in runners.items():
            out = fn()
            out = out.float().numpy() if hasattr(out, "float") else np.asarray(out)
            rows.append((title, batch, name, ms[name], ms["torch eager fp32"] / ms[name], cosine(out, ref)))
    return rows


def build_cost() -> list[str]:
    """Full build of examples/digits and an unchanged rebuild, as a user runs them."""
    home = Path(tempfile.mkdtemp(prefix="mscompile-bench-"))
    repo = home / "repo"
    cfg = yaml.safe_load((ROOT / "examples/digits/model.yaml").read_text())
    cfg["triton"]["repository"] = str(repo)
    path = home / "model.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "MSCOMPILE_HOME": str(home / "state")}
    env.pop("CI", None)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "mscompile.cli", "build", str(path), "-q"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        times.append(time.perf_counter() - t0)
        assert r.returncode == 0, r.stderr
    time.sleep(8)  # let the background MLflow logger finish before the folder goes
    shutil.rmtree(home, ignore_errors=True)
    return [
        f"full build of examples/digits (CLI, fresh cache, MLflow on): {times[0]:.1f} s",
        f"unchanged rebuild (no pass runs, MLflow record in the background): {times[1]:.2f} s",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="resnet,minilm,build")
    args = ap.parse_args()
    models = set(args.models.split(","))
    rounds, iters = (3, 3) if args.quick else (7, 10)
    import torch

    torch.set_num_threads(THREADS)
    os.chdir(ROOT)
    rows: list[tuple] = []
    notes: list[str] = []

    if "resnet" in models:
        p = prepare_resnet()
        cfg = yaml.safe_load(p.read_text())
        cfg["targets"] = [
            {"name": "fp32", "tolerance": {"cosine_min": 0.9999}},
            {"name": "int8", "precision": "int8", "tolerance": {"cosine": 0.98}},
            {"name": "fp32_openvino", "cpu": {"accelerator": "openvino"}, "tolerance": {"cosine_min": 0.9999}},
            {
                "name": "int8_openvino",
                "precision": "int8",
                "cpu": {"accelerator": "openvino"},
                "tolerance": {"cosine": 0.98},
            },
        ]
        cfg["triton"].update(deploy="fastest", repository=str(WORK / "resnet/repo_peers"))
        cfg["profile"] = {"batch_sizes": [1, 8], "window": 5}
        p2 = p.with_name("model_peers.yaml")
        p2.write_text(yaml.safe_dump(cfg, sort_keys=False))
        res = build(p2)
        res.manifest_deployed = _deployed(res)
        notes.append(f"ResNet-50: {res.selection}")
        net = resnet_module()
        fp32 = next(v for v in res.variants if v.target == "fp32").model.onnx_file
        calib = dict(np.load(WORK / "resnet/calib.npz"))
        imgs = smooth_images(8, 7)
        rows += peers(
            "ResNet-50",
            net,
            res,
            fp32,
            optimum_equivalent(fp32, "resnet", calib),
            {1: {"images": imgs[:1]}, 8: {"images": imgs}},
            rounds,
            iters,
        )

    if "minilm" in models:
        p = prepare_minilm()
        cfg = yaml.safe_load(p.read_text())
        cfg["targets"] = [t for t in cfg["targets"] if t["name"] in ("fp32", "int8_auto")] + [
            {"name": "fp32_openvino", "cpu": {"accelerator": "openvino"}, "tolerance": {"cosine_min": 0.9999}},
        ]
        cfg["triton"].update(deploy="fastest", repository=str(WORK / "minilm/repo_peers"))
        cfg["profile"] = {"batch_sizes": [1, 8], "window": 5}
        p2 = p.with_name("model_peers.yaml")
        p2.write_text(yaml.safe_dump(cfg, sort_keys=False))
        mini = build(p2)
        mini.manifest_deployed = _deployed(mini)
        notes.append(f"MiniLM: {mini.selection}")
        enc = minilm_module()
        toks = minilm_bench_inputs()
        fp32 = next(v for v in mini.variants if v.target == "fp32").model.onnx_file
        rows += peers(
            "MiniLM seq128",
            enc,
            mini,
            fp32,
            optimum_equivalent(fp32, "minilm", None),
            {1: {k: v[:1] for k, v in toks.items()}, 8: toks},
            rounds,
            max(1, iters // 2),
        )

    if "build" in models:
        notes += build_cost()

    print(f"\nthreads: {THREADS} for every runner; {rounds} interleaved rounds, median latency\n")
    for n in notes:
        print(n)
    print(f"\n{'model':<14} {'batch':>5}  {'runner':<38} {'ms':>9}  {'x eager':>8}  cosine vs torch fp32")
    for model, batch, name, lat, ratio, cos in rows:
        print(f"{model:<14} {batch:>5}  {name:<38} {lat:9.2f}  {ratio:7.2f}x  {cos:.4f}")


def _deployed(result) -> str:
    """The variant published as the model (from the build's selection)."""
    import json

    return json.loads((result.published[0].path / "build_manifest.json").read_text())["deployed_variant"]


if __name__ == "__main__":
    main()
