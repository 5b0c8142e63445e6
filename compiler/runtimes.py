"""Inference sessions, one function per runtime. No registry: each backend says
which of these runs its variants (`Backend.session`), and its recipe hands it to
the gate and profile steps it makes (`Step.session`). A session takes a feed
dict and returns the named outputs, casting inputs to the dtypes the model
takes (an fp16 graph without keep_io_types takes float16)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .device import tensorrt_status

Session = Callable[[dict[str, np.ndarray]], list[np.ndarray]]

_ORT_TYPES = {"tensor(float16)": np.float16, "tensor(float)": np.float32, "tensor(double)": np.float64}


def _cast(feed: dict[str, np.ndarray], casts: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: v.astype(casts[k]) if k in casts and v.dtype != casts[k] else v for k, v in feed.items()}


def onnxruntime_session(
    path: str, outputs: list[str] | None, threads: int = 0, providers: tuple[str, ...] = ()
) -> Session:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, so, providers=list(providers or ("CPUExecutionProvider",)))
    casts = {i.name: _ORT_TYPES[i.type] for i in sess.get_inputs() if i.type in _ORT_TYPES}
    return lambda feed: sess.run(outputs, _cast(feed, casts))


def openvino_session(
    path: str, outputs: list[str] | None, threads: int = 0, providers: tuple[str, ...] = ()
) -> Session:
    """OpenVINO's CPU plugin with its defaults (what Triton's OpenVINO backend and
    ONNX Runtime's OpenVINO accelerator use); reads an IR or an ONNX file."""
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads} if threads else {})
    ports = [compiled.output(n) for n in outputs] if outputs else list(compiled.outputs)
    casts = {p.get_any_name(): p.get_element_type().to_dtype() for p in compiled.inputs}

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        res = compiled(_cast(feed, casts))
        return [np.asarray(res[p]) for p in ports]

    return run


class RuntimeUnavailableError(RuntimeError):
    """The runtime a session needs is not on this machine (said with what is missing)."""


def tensorrt_session(
    path: str, outputs: list[str] | None, threads: int = 0, providers: tuple[str, ...] = ()
) -> Session:
    """A TensorRT engine (model.plan) through Polygraphy's TrtRunner, first optimization
    profile. Needs TensorRT and an NVIDIA GPU."""
    ok, why = tensorrt_status()
    if not ok:
        raise RuntimeUnavailableError(why)
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    runner = TrtRunner(EngineFromBytes(BytesFromPath(path)), optimization_profile=0)
    runner.activate()

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        res = runner.infer(feed)
        names = outputs or list(res)
        return [np.asarray(res[n]) for n in names]

    return run
