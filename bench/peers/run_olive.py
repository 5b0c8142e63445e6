"""Microsoft Olive, the way its examples run a Hugging Face model on CPU (a workflow
JSON through `olive run`: OnnxConversion, OrtTransformersOptimization for BERT-like
models, ONNX Runtime quantization, the calibration set through a user script); runs
inside the olive environment (bench/peers/envs.py):

  python run_olive.py REQUEST.json RESULT.json

REQUEST as run_optimum.py's, plus "model_type" ("bert" for transformer encoders, null
otherwise). Variants (each its own workflow; an error is recorded, the others go on):
  olive_fp32      conversion (+ transformers optimization)
  olive_dynamic   ... + OnnxDynamicQuantization
  olive_static    ... + OnnxStaticQuantization (MinMax, QDQ, the calibration inputs)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

USER_SCRIPT = """
import numpy as np
import torch
from olive.data.registry import Registry


class _Npz(torch.utils.data.Dataset):
    def __init__(self, path):
        with np.load(path) as z:
            self.arrays = {k: z[k] for k in z.files}
        self.n = len(next(iter(self.arrays.values())))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: torch.from_numpy(v[i]) for k, v in self.arrays.items()}, 0


@Registry.register_dataset()
def npz_dataset(path, **kwargs):
    return _Npz(path)
"""


def workflow(req: dict, quant: str | None, out: Path) -> dict:
    passes: dict = {"conversion": {"type": "OnnxConversion", "target_opset": 17}}
    if req.get("model_type"):
        passes["transformers_optimization"] = {
            "type": "OrtTransformersOptimization",
            "model_type": req["model_type"],
            "opt_level": 1,
            "only_onnxruntime": False,
        }
    if quant == "dynamic":
        passes["quantization"] = {"type": "OnnxDynamicQuantization", "per_channel": False, "reduce_range": False}
    elif quant == "static":
        passes["quantization"] = {
            "type": "OnnxStaticQuantization",
            "quant_format": "QDQ",
            "per_channel": False,
            "reduce_range": False,
            "calibrate_method": "MinMax",
            "data_config": "calib",
        }
    model: dict = {
        "type": "HfModel",
        "model_path": req["model"],
        "task": req["task"],
        "load_kwargs": {"attn_implementation": "eager"},
    }
    if req["task"] == "image-classification":
        # Olive's export of an image model has a fixed batch of 1 unless io_config says otherwise
        model["io_config"] = {
            "input_names": ["pixel_values"],
            "input_shapes": [[1, 3, 224, 224]],
            "output_names": ["logits"],
            "dynamic_axes": {"pixel_values": {"0": "batch"}, "logits": {"0": "batch"}},
        }
    return {
        "input_model": model,
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
            }
        },
        "data_configs": [
            {
                "name": "calib",
                "user_script": str(out.parent / "olive_user_script.py"),
                "load_dataset_config": {"type": "npz_dataset", "path": req["calibration"]},
                "dataloader_config": {"batch_size": 1},
            }
        ],
        "passes": passes,
        "host": "local_system",
        "target": "local_system",
        "cache_dir": str(out.parent / "cache"),
        "output_dir": str(out),
        "log_severity_level": 3,
    }


def main() -> None:
    req = json.loads(Path(sys.argv[1]).read_text())
    root = Path(req["out"])
    root.mkdir(parents=True, exist_ok=True)
    (root / "olive_user_script.py").write_text(USER_SCRIPT)
    results: dict[str, dict] = {}
    for name, quant in (("olive_fp32", None), ("olive_dynamic", "dynamic"), ("olive_static", "static")):
        out = root / name
        cfg = root / f"{name}.json"
        cfg.write_text(json.dumps(workflow(req, quant, out), indent=2))
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "olive", "run", "--config", str(cfg)], capture_output=True, text=True)
        found = sorted(out.rglob("*.onnx"), key=lambda p: p.stat().st_mtime) if out.exists() else []
        if r.returncode or not found:
            lines = (r.stderr or r.stdout).strip().splitlines()
            why = next((ln for ln in reversed(lines) if "Error" in ln.split(":")[0]), lines[-1] if lines else "")
            results[name] = {"error": f"olive run exit {r.returncode}: {why[:400]}"}
        else:
            results[name] = {"path": str(found[-1]), "seconds": round(time.time() - t0, 1)}
    Path(sys.argv[2]).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
