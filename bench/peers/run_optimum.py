"""Optimum (optimum-onnx), the way its documentation tells a user to run it; runs
inside the optimum environment (bench/peers/envs.py):

  python run_optimum.py REQUEST.json RESULT.json

REQUEST: {"model": HF folder, "task": "feature-extraction" | "image-classification",
"calibration": .npz of the model's inputs, "out": folder, "isa": "avx512_vnni" | ...}.
Variants (each a model.onnx; an error is recorded per variant, the others go on):
  optimum_fp32     optimum-cli export onnx --task T
  optimum_O2       optimum-cli onnxruntime optimize -O2 (on the export)
  optimum_dynamic  optimum-cli onnxruntime quantize --<isa> (dynamic INT8)
  optimum_static   ORTQuantizer + AutoQuantizationConfig.<isa>(is_static=True) with
                   AutoCalibrationConfig.minmax on the calibration inputs (the Python API:
                   the CLI quantizes dynamically only)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from pathlib import Path


def cli(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "optimum.commands.optimum_cli", *args], capture_output=True, text=True)
    if r.returncode:
        lines = (r.stderr or r.stdout).strip().splitlines()
        why = next((ln for ln in reversed(lines) if "Error" in ln.split(":")[0]), lines[-1] if lines else "")
        raise RuntimeError(f"optimum-cli {' '.join(args[:2])} failed: {why[:400]}")


def main() -> None:
    req = json.loads(Path(sys.argv[1]).read_text())
    out = Path(req["out"])
    results: dict[str, dict] = {}

    def step(name: str, fn, path: Path) -> None:
        t0 = time.time()
        try:
            fn()
            results[name] = {
                "path": str(path / "model.onnx" if (path / "model.onnx").exists() else next(path.glob("*.onnx"))),
                "seconds": round(time.time() - t0, 1),
            }
        except Exception as exc:  # each variant's failure is its result
            results[name] = {
                "error": f"{type(exc).__name__}: {str(exc)[-500:]}",
                "trace": traceback.format_exc()[-1500:],
            }

    export = out / "export"
    step(
        "optimum_fp32",
        lambda: cli("export", "onnx", "--model", req["model"], "--task", req["task"], str(export)),
        export,
    )
    if "path" not in results["optimum_fp32"]:
        Path(sys.argv[2]).write_text(json.dumps(results, indent=2))
        return
    o2 = out / "o2"
    step(
        "optimum_O2",
        lambda: cli("onnxruntime", "optimize", "--onnx_model", str(export), "-O2", "--output", str(o2)),
        o2,
    )
    dyn = out / "dynamic"
    step(
        "optimum_dynamic",
        lambda: cli("onnxruntime", "quantize", "--onnx_model", str(export), f"--{req['isa']}", "--output", str(dyn)),
        dyn,
    )

    static = out / "static"

    def quantize_static() -> None:
        import numpy as np
        from datasets import Dataset
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig

        with np.load(req["calibration"]) as z:
            arrays = {k: z[k] for k in z.files}
        ds = Dataset.from_dict({k: v.tolist() for k, v in arrays.items()})
        quantizer = ORTQuantizer.from_pretrained(str(export), file_name="model.onnx")
        qconfig = getattr(AutoQuantizationConfig, req["isa"])(is_static=True, per_channel=False)
        ranges = quantizer.fit(
            dataset=ds,
            calibration_config=AutoCalibrationConfig.minmax(ds),
            operators_to_quantize=qconfig.operators_to_quantize,
        )
        quantizer.quantize(save_dir=str(static), calibration_tensors_range=ranges, quantization_config=qconfig)

    step("optimum_static", quantize_static, static)
    Path(sys.argv[2]).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
