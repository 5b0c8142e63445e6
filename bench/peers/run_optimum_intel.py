"""optimum-intel, the way its documentation runs a transformers model on OpenVINO:
export with OVModelFor<Task>.from_pretrained(export=True), INT8 post-training
quantization with OVQuantizer (NNCF) on the calibration inputs; runs inside the
optimum_intel environment (bench/peers/envs.py):

  python run_optimum_intel.py REQUEST.json RESULT.json

REQUEST as run_optimum.py's, plus "ov_model_type" ("transformer" for encoders, null
for CNNs). Variants (OpenVINO IR, model.xml):
  optimum_intel_fp32   the export
  optimum_intel_int8   OVQuantizer.quantize(OVQuantizationConfig(...)), NNCF static INT8
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

CLASSES = {"feature-extraction": "OVModelForFeatureExtraction", "image-classification": "OVModelForImageClassification"}


def step(results: dict, name: str, fn, path: Path) -> bool:
    """Run one variant's work; its file, or its error (the others go on)."""
    t0 = time.time()
    try:
        fn()
        results[name] = {"path": str(path), "seconds": round(time.time() - t0, 1)}
        return True
    except Exception as exc:
        results[name] = {"error": f"{type(exc).__name__}: {str(exc)[-500:]}", "trace": traceback.format_exc()[-1500:]}
        return False


def main() -> None:
    import numpy as np
    import optimum.intel as oi

    req = json.loads(Path(sys.argv[1]).read_text())
    out = Path(req["out"])
    results: dict[str, dict] = {}
    cls = getattr(oi, CLASSES[req["task"]])
    fp32, int8 = out / "fp32", out / "int8"
    model = None

    def export() -> None:
        nonlocal model
        model = cls.from_pretrained(req["model"], export=True, compile=False)
        model.save_pretrained(str(fp32))

    def quantize() -> None:
        from datasets import Dataset  # the form its documentation passes a calibration set in

        with np.load(req["calibration"]) as z:
            arrays = {k: z[k] for k in z.files}
        kwargs = {"num_samples": len(next(iter(arrays.values())))}
        if req.get("ov_model_type"):
            kwargs["model_type"] = req["ov_model_type"]
        qc = oi.OVQuantizationConfig(**kwargs)
        quantizer = oi.OVQuantizer.from_pretrained(model)
        quantizer.quantize(
            calibration_dataset=Dataset.from_dict({k: v.tolist() for k, v in arrays.items()}),
            save_directory=str(int8),
            ov_config=oi.OVConfig(quantization_config=qc),
        )

    if step(results, "optimum_intel_fp32", export, fp32 / "openvino_model.xml"):
        step(results, "optimum_intel_int8", quantize, int8 / "openvino_model.xml")
    Path(sys.argv[2]).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
