"""The openvino backend against the onnxruntime backend, in one build and one run.

  python bench/bench_openvino.py [--quick]

Builds one ResNet-50-sized CNN (examples/resnet, BatchNorm statistics set on
image-like data) with four targets: onnxruntime fp32 and int8 (static QDQ),
openvino fp32 and int8 (NNCF), each gated on the runtime that serves it. Then
times every variant side by side (interleaved rounds, same threads, median)
against torch eager fp32, at batch 1 and 8, and prints each one's ratio to
torch eager, to ONNX Runtime fp32, and openvino int8 against onnxruntime int8.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_int8 import (  # noqa: E402
    THREADS,
    WORK,
    build,
    cosine,
    ort_session,
    prepare_resnet,
    resnet_module,
    smooth_images,
    time_side_by_side,  # noqa: E402
)


def prepare() -> Path:
    base = prepare_resnet()  # checkpoint, validation and calibration sets
    cfg = yaml.safe_load(base.read_text())
    d = WORK / "resnet_ov"
    d.mkdir(parents=True, exist_ok=True)
    cfg["name"] = "resnet50_ov"
    cfg["targets"] = [
        {"name": "ort_fp32", "backend": "onnxruntime", "tolerance": {"cosine_min": 0.9999}},
        {
            "name": "ort_int8",
            "backend": "onnxruntime",
            "precision": "int8",
            "mode": "static",
            "tolerance": {"cosine": 0.98},
        },
        {"name": "ov_fp32", "backend": "openvino", "tolerance": {"cosine": 0.999}},
        {"name": "ov_int8", "backend": "openvino", "precision": "int8", "tolerance": {"cosine": 0.98}},
    ]
    cfg["triton"] = {"repository": str(d / "repo"), "deploy": "all"}
    (d / "model.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return d / "model.yaml"


def openvino_runner(path: Path):
    import openvino as ov

    compiled = ov.Core().compile_model(str(path / "model.xml"), "CPU", {"INFERENCE_NUM_THREADS": THREADS})
    return lambda feeds: compiled(feeds)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run, not a measurement)")
    args = ap.parse_args()
    rounds, iters = (3, 2) if args.quick else (7, 5)

    import torch

    torch.set_num_threads(THREADS)
    result = build(prepare())
    variants = {v.target: v for v in result.variants}
    for v in result.variants:
        gate = v.report.meta.get("runtime") if v.report else "-"
        print(f"{v.target:<9} {v.status.value:<8} gated on {gate:<12} {v.note or v.reason}")
    ok = {n: v for n, v in variants.items() if v.status.value == "OK"}
    run = {}
    for name, v in ok.items():
        if v.backend == "openvino":
            run[name] = openvino_runner(v.model.path)
        else:
            s = ort_session(v.model.onnx_file)
            run[name] = lambda feeds, s=s: s.run(None, feeds)[0]
    net = resnet_module()
    imgs = smooth_images(8, 7)
    print(f"\n{THREADS} thread(s), median of {rounds} interleaved rounds x {iters} calls")
    print(f"{'batch':<6}{'runner':<22}{'ms':>9}{'vs torch':>10}{'vs ort_fp32':>13}   accuracy vs torch fp32")
    for batch in (1, 8):
        feeds = {"images": imgs[:batch]}
        x = torch.from_numpy(feeds["images"])

        def eager(x=x):
            with torch.inference_mode():
                return net(x)

        runners = {"torch eager fp32": eager}
        runners.update({name: (lambda f=fn, feeds=feeds: f(feeds)) for name, fn in run.items()})
        ms = time_side_by_side(runners, rounds, iters)
        with torch.inference_mode():
            ref = net(x).numpy()
        for name, lat in ms.items():
            acc = "reference" if name.startswith("torch") else f"cosine {cosine(np.asarray(run[name](feeds)), ref):.4f}"
            vs_ort = f"{ms['ort_fp32'] / lat:.2f}x" if "ort_fp32" in ms else "-"
            print(f"{batch:<6}{name:<22}{lat:>9.2f}{ms['torch eager fp32'] / lat:>9.2f}x{vs_ort:>13}   {acc}")
        if "ov_int8" in ms and "ort_int8" in ms:
            print(f"{batch:<6}openvino int8 vs onnxruntime int8: {ms['ort_int8'] / ms['ov_int8']:.2f}x")


if __name__ == "__main__":
    main()
