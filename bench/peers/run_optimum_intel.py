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


def main() -> None:
    import numpy as np
    import optimum.intel as oi

    req = json.loads(Path(sys.argv[1]).read_text())
    out = Path(req["out"])
    results: dict[str, dict] = {}
    cls = getattr(oi, CLASSES[req["task"]])
    fp32 = out / "fp32"
    t0 = time.time()
    try:
        model = cls.from_pretrained(req["model"], export=True, compile=False)
        model.save_pretrained(str(fp32))
        results["optimum_intel_fp32"] = {
            "path": str(fp32 / "openvino_model.xml"),
            "seconds": round(time.time() - t0, 1),
        }
    except Exception as exc:
        results["optimum_intel_fp32"] = {
            "error": f"{type(exc).__name__}: {str(exc)[-500:]}",
            "trace": traceback.format_exc()[-1500:],
        }
        Path(sys.argv[2]).write_text(json.dumps(results, indent=2))
        return
    int8 = out / "int8"
    t0 = time.time()
    try:
        with np.load(req["calibration"]) as z:
            arrays = {k: z[k] for k in z.files}
        n = len(next(iter(arrays.values())))
        from datasets import Dataset  # the form its documentation passes a calibration set in

        samples = Dataset.from_dict({k: v.tolist() for k, v in arrays.items()})
        kwargs = {"num_samples": n}
        if req.get("ov_model_type"):
            kwargs["model_type"] = req["ov_model_type"]
        qc = oi.OVQuantizationConfig(**kwargs)
        quantizer = oi.OVQuantizer.from_pretrained(model)
        quantizer.quantize(
            calibration_dataset=samples, save_directory=str(int8), ov_config=oi.OVConfig(quantization_config=qc)
        )
        results["optimum_intel_int8"] = {
            "path": str(int8 / "openvino_model.xml"),
            "seconds": round(time.time() - t0, 1),
        }
    except Exception as exc:
        results["optimum_intel_int8"] = {
            "error": f"{type(exc).__name__}: {str(exc)[-500:]}",
            "trace": traceback.format_exc()[-1500:],
        }
    Path(sys.argv[2]).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
