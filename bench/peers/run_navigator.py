"""Triton Model Navigator, the way its documentation optimizes a PyTorch model:
`nav.torch.optimize(model, dataloader, target_device=CPU)` over its formats and CPU
runners, then the package's best runner; runs inside the navigator environment
(bench/peers/envs.py):

  python run_navigator.py REQUEST.json RESULT.json

REQUEST as run_optimum.py's. Variant navigator_onnx: the ONNX file it exported and
optimized (copied out: Navigator deletes its workspace on its next run), with its best
runner when it picked one (on CPU its profiling fails, so it says that), or its error. Navigator profiles every format/runner itself, so this takes minutes.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import traceback
from pathlib import Path

CLASSES = {"feature-extraction": "AutoModel", "image-classification": "AutoModelForImageClassification"}


def main() -> None:
    import numpy as np
    import torch
    import transformers

    req = json.loads(Path(sys.argv[1]).read_text())
    out = Path(req["out"])
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    t0 = time.time()
    try:
        import model_navigator as nav

        model = getattr(transformers, CLASSES[req["task"]]).from_pretrained(req["model"], attn_implementation="eager")
        model = model.eval()
        names = list(np.load(req["calibration"]).files)

        class Base(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.m = model

            def run(self, **kwargs):
                out = self.m(**kwargs, return_dict=True)
                return out["last_hidden_state"] if "last_hidden_state" in out else out["logits"]

        # its exporters read forward()'s named parameters (its samples are dicts of them)
        ns: dict = {}
        args = ", ".join(names)
        exec(f"def forward(self, {args}):\n    return self.run({', '.join(f'{n}={n}' for n in names)})", ns)  # noqa: S102
        Wrapped = type("Wrapped", (Base,), {"forward": ns["forward"]})

        with np.load(req["calibration"]) as z:
            arrays = {k: z[k] for k in z.files}
        n = len(next(iter(arrays.values())))
        dataloader = [{k: torch.from_numpy(arrays[k][i : i + 8]) for k in names} for i in range(0, min(n, 32), 8)]
        workspace = out / "workspace"
        package = nav.torch.optimize(
            model=Wrapped().eval(),
            dataloader=dataloader,
            target_device=nav.DeviceKind.CPU,
            target_formats=(nav.Format.ONNX, nav.Format.TORCHSCRIPT),
            workspace=workspace,
            input_names=tuple(names),
            optimization_profile=nav.OptimizationProfile(max_batch_size=8, max_trials=3),
        )
        best = package.get_best_runtime_strategy() if hasattr(package, "get_best_runtime_strategy") else None
        found = sorted(workspace.rglob("*.onnx"))
        if not found:
            raise RuntimeError(f"Navigator produced no ONNX file (best strategy: {best})")
        dst = out / "model.onnx"
        shutil.copyfile(found[0], dst)
        status = (workspace / "status.yaml").read_text() if (workspace / "status.yaml").is_file() else ""
        note = (
            f"its best runtime: {best}"
            if best
            else "Navigator picked no runner (its CPU profiling failed: "
            + ("Torch not compiled with CUDA enabled" if "CUDA" in status or "cuda" in status else "see its log")
            + "); the ONNX it exported and optimized is timed with ONNX Runtime CPU, its OnnxCPU runner"
        )
        results["navigator_onnx"] = {"path": str(dst), "seconds": round(time.time() - t0, 1), "note": note}
    except BaseException as exc:  # noqa: BLE001 - the reason is the result
        results["navigator_onnx"] = {
            "error": f"{type(exc).__name__}: {str(exc)[-500:]}",
            "trace": traceback.format_exc()[-1500:],
            "seconds": round(time.time() - t0, 1),
        }
    Path(sys.argv[2]).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
