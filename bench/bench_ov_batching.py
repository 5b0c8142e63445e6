"""What each batching choice for Triton's OpenVINO backend costs, measured in
OpenVINO on this host (the compute the backend runs; Triton's own overhead is not
in it).

`openvino.batching: none` (max_batch_size 0): the IR keeps its dynamic batch and a
request of batch b computes b samples. `pad` with max_batch_size M: the backend
reshapes the IR to a static batch M and zero-fills, so every execution computes M
samples whatever arrived. Printed: ms per execution for a request of batch 1 and
of batch 8 under each, and the ratio to `none`.

    python bench/bench_ov_batching.py [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.digits.model import DigitsNet  # noqa: E402
from examples.resnet.model import ResNet50  # noqa: E402


def ms(compiled: ov.CompiledModel, x: np.ndarray, seconds: float = 2.0) -> float:
    req = compiled.create_infer_request()
    for _ in range(3):
        req.infer({0: x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        req.infer({0: x})
        n += 1
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    core = ov.Core()
    props = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY"}
    print(f"host: {platform.processor() or platform.machine()}, OpenVINO {ov.get_version()}, {args.threads} threads")
    models = {
        "digits (1x8x8)": (DigitsNet().eval(), (1, 8, 8), (1, 8, 64)),
        "ResNet-50 (3x224x224)": (ResNet50().eval(), (3, 224, 224), (1, 8)),
    }
    print(f"{'model':24} {'served as':22} {'batch 1 ms':>10} {'x none':>7} {'batch 8 ms':>10} {'x none':>7}")
    for label, (net, shape, pads) in models.items():
        with torch.no_grad():
            m = ov.convert_model(net, example_input=torch.zeros(1, *shape))
        m.reshape({m.inputs[0].get_any_name(): ov.PartialShape([-1, *shape])})
        dyn = core.compile_model(m, "CPU", props)
        x1 = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
        x8 = np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32)
        base1, base8 = ms(dyn, x1), ms(dyn, x8)
        print(f"{label:24} {'none (dynamic batch)':22} {base1:10.3f} {1.0:7.2f} {base8:10.3f} {1.0:7.2f}")
        for mbs in pads:
            if mbs < 8:
                continue
            s = m.clone()
            s.reshape({s.inputs[0].get_any_name(): ov.PartialShape([mbs, *shape])})
            static = core.compile_model(s, "CPU", props)
            xp = np.zeros((mbs, *shape), np.float32)
            t = ms(static, xp)  # a padded execution computes mbs samples whatever arrived
            print(f"{'':24} {f'pad, max_batch_size {mbs}':22} {t:10.3f} {t / base1:7.2f} {t:10.3f} {t / base8:7.2f}")


if __name__ == "__main__":
    main()
