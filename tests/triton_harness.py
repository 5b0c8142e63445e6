"""A real Triton server for the tests.

The `nvidia-pytriton` wheel (PyPI) carries a tritonserver 2.51 binary with only
the python backend; Triton's onnxruntime backend is not installable here. So the
harness adds a test-only *Python-based backend* named `onnxruntime`
(backends/onnxruntime/model.py, Triton's mechanism for backends written in
Python) that runs the published model.onnx with ONNX Runtime. The configs
mscompile generates (`platform: onnxruntime_onnx`, `backend: onnxruntime`) then
load unchanged, through Triton's own validation, batching, versions and
explicit or polled loading.

Facts that shape it (FIELD-NOTES): the python backend stub must run under a
Python whose libpython matches the stdlib it loads (Debian's /usr/bin/python3.11),
it ignores PYTHONPATH (model.py puts its packages on sys.path), and it needs
numpy<2 (plus onnxruntime, openvino, tokenizers and Pillow for the ensembles'
preprocessing). Everything is fetched from PyPI once into $MSCOMPILE_TEST_CACHE
(default ~/.cache/mscompile-tests); without network or that Python, the tests
that need a server skip with the reason.

The stand-ins enforce the rules of the real C++ backends that decide whether a
config serves, read from their sources, so a config the real backend would
refuse fails here too:

- `openvino` (triton-inference-server/openvino_backend, src/openvino.cc and
  src/openvino_utils.cc): the parameters ParseParameterHelper accepts and their
  values (INFERENCE_NUM_THREADS, COMPILATION_NUM_THREADS, HINT_BF16, NUM_STREAMS,
  PERFORMANCE_HINT); every configured dim checked against the IR's by
  `doesMatch` (a static IR dim must be given exactly, the batch dim included
  when max_batch_size is 0); with max_batch_size > 0 the model is reshaped to a
  static batch of max_batch_size (`ov::set_batch`) and an execution whose total
  batch is not exactly that is refused ("expected requests with batch size ...")
  unless ENABLE_BATCH_PADDING is YES, which zero-fills the rest into the
  compiled input tensor (so padding needs static non-batch dims); with
  max_batch_size 0 each request runs alone at its own shape.
- `onnxruntime` (triton-inference-server/onnxruntime_backend, src/onnxruntime.cc,
  and the backend repo's CompareDimsSupported): a `cpu_execution_accelerator`
  other than `openvino` is refused ("unknown Execution Accelerator"), and
  `openvino` too when the environment sets MSCOMPILE_TEST_ORT_WITHOUT_OPENVINO (a
  backend built without ONNX Runtime's OpenVINO execution provider, as the field
  check found); ValidateInputs/ValidateOutputs: the config lists exactly as many
  inputs as the model has, every configured input and output is one of the
  model's ("unexpected inference input"), with the model's data type; with
  max_batch_size > 0 every tensor's first model dimension must be a variable-size
  batch dimension, and the remaining model dims must equal the configured dims
  (a variable model dim takes any configured size; a fixed one must be given
  exactly)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from provision import once

PYTRITON = "nvidia-pytriton==0.7.0"
STUB_PYTHON = Path("/usr/bin/python3.11")
CACHE = Path(os.environ.get("MSCOMPILE_TEST_CACHE", Path.home() / ".cache" / "mscompile-tests"))

BACKEND = '''
"""Test-only Python-based backend named onnxruntime: runs model.onnx with ONNX Runtime."""
import json
import os
import sys

sys.path.insert(0, {site!r})
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


ONNX_TYPES = {{
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(int64)": "TYPE_INT64",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int8)": "TYPE_INT8",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(bool)": "TYPE_BOOL",
    "tensor(string)": "TYPE_STRING",
}}


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        accels = cfg.get("optimization", {{}}).get("execution_accelerators", {{}})
        for a in accels.get("cpu_execution_accelerator", []):
            known = a["name"] == "openvino" and not os.environ.get("MSCOMPILE_TEST_ORT_WITHOUT_OPENVINO")
            if not known:
                raise pb_utils.TritonModelException("unknown Execution Accelerator '" + a["name"] + "' is requested")
        name = cfg.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], name)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in cfg["input"]]
        self.outputs = [o["name"] for o in cfg["output"]]
        self.batching = int(cfg.get("max_batch_size", 0)) > 0
        self._validate(cfg)

    def _validate(self, cfg):
        model = cfg["name"]
        ins = {{i.name: i for i in self.sess.get_inputs()}}
        outs = {{o.name: o for o in self.sess.get_outputs()}}
        if len(cfg["input"]) != len(ins):
            raise pb_utils.TritonModelException(
                f"unable to load model '{{model}}', configuration expects {{len(cfg['input'])}} inputs, "
                f"model provides {{len(ins)}}"
            )
        for kind, ios, known in (("input", cfg["input"], ins), ("output", cfg["output"], outs)):
            for io in ios:
                arg = known.get(io["name"])
                if arg is None:
                    raise pb_utils.TritonModelException(
                        f"unexpected inference {{kind}} '{{io['name']}}', allowed {{kind}}s are: {{', '.join(known)}}"
                    )
                want = ONNX_TYPES.get(arg.type)
                if want != io["data_type"]:
                    raise pb_utils.TritonModelException(
                        f"unable to load model '{{model}}', configuration expects datatype {{io['data_type']}} for "
                        f"{{kind}} '{{io['name']}}', model provides {{want}}"
                    )
                shape = [d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape]
                dims = [int(d) for d in io.get("reshape", {{}}).get("shape", io["dims"])]
                if self.batching:
                    if not shape or shape[0] != -1:
                        raise pb_utils.TritonModelException(
                            f"unable to load model '{{model}}', model configuration supports batching but first "
                            f"dimension of tensor '{{io['name']}}' expected by framework is not a variable-size batch "
                            f"dimension: {{shape}} whereas model configuration shape is: {{dims}}"
                        )
                    shape = shape[1:]
                if len(shape) != len(dims) or any(m != -1 and m != d for m, d in zip(shape, dims)):
                    raise pb_utils.TritonModelException(
                        f"unable to load model '{{model}}', configuration expects shape {{dims}} for {{kind}} "
                        f"'{{io['name']}}', model provides {{shape}}"
                    )

    def execute(self, requests):
        # the requests the dynamic batcher merged run as one batch, as a real backend does
        feeds = [{{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs}} for r in requests]
        sizes = [next(iter(f.values())).shape[0] for f in feeds]
        same = self.batching and all(
            f[n].shape[1:] == feeds[0][n].shape[1:] for f in feeds for n in self.inputs
        )
        if same and len(feeds) > 1:
            merged = {{n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}}
            outs = self.sess.run(self.outputs, merged)
            cuts = np.cumsum(sizes)[:-1]
            parts = [np.split(o, cuts) for o in outs]
            results = [[p[i] for p in parts] for i in range(len(feeds))]
        else:
            results = [self.sess.run(self.outputs, f) for f in feeds]
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in zip(self.outputs, res)])
            for res in results
        ]
'''


OPENVINO_BACKEND = '''
"""Test-only Python-based backend named openvino: runs model.xml with OpenVINO under the
rules of Triton's C++ OpenVINO backend (see triton_harness.py)."""
import json
import os
import sys

sys.path.insert(0, {site!r})
import numpy as np  # noqa: E402
import openvino as ov  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

PARAMS = {{
    "INFERENCE_NUM_THREADS": lambda v: v.isdigit(),
    "COMPILATION_NUM_THREADS": lambda v: v.isdigit(),
    "HINT_BF16": lambda v: v == "yes",
    "NUM_STREAMS": lambda v: v in ("auto", "numa") or v.isdigit(),
    "PERFORMANCE_HINT": lambda v: v in ("latency", "throughput", "cumulative_throughput"),
}}


def _dims_match(model_shape, dims, name, what):
    # doesMatch: a static IR dim must be given exactly; an unbounded dynamic one takes anything
    ok = len(model_shape) == len(dims) and all(
        m.is_dynamic or m.get_length() == d for m, d in zip(model_shape, dims)
    )
    if not ok:
        raise pb_utils.TritonModelException(
            f"tensor '{{name}}': the model expects {{len(model_shape)}} dimensions (shape {{model_shape}}) "
            f"but the model configuration specifies {{dims}} ({{what}})"
        )


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {{k: v["string_value"] for k, v in cfg.get("parameters", {{}}).items()}}
        for key, valid in PARAMS.items():
            if key in params and not valid(params[key].lower()):
                raise pb_utils.TritonModelException(f"expected the parameter '{{key}}' to be valid, got {{params[key]}}")
        self.mbs = int(cfg.get("max_batch_size", 0))
        self.pad = params.get("ENABLE_BATCH_PADDING", "").lower() == "yes"
        name = cfg.get("default_model_filename") or "model.xml"
        core = ov.Core()
        model = core.read_model(os.path.join(args["model_repository"], args["model_version"], name))
        self.inputs = [i["name"] for i in cfg["input"]]
        self.outputs = [o["name"] for o in cfg["output"]]
        lead = [self.mbs] if self.mbs else []
        for kind, ports in (("input", model.inputs), ("output", model.outputs)):
            by = {{p.get_any_name(): p for p in ports}}
            for io in cfg[kind]:
                dims = lead + [int(d) for d in io["dims"]]
                shape = by[io["name"]].get_partial_shape()
                if self.mbs:  # the batch dim is reshaped, not compared (inputs); outputs compare it exactly
                    if kind == "input":
                        dims, shape = dims[1:], shape[1:]
                    elif shape[0].is_static and shape[0].get_length() != self.mbs:
                        raise pb_utils.TritonModelException(f"output '{{io['name']}}' batch mismatch")
                    else:
                        dims, shape = dims[1:], shape[1:]
                _dims_match(list(shape), dims, io["name"], kind)
        if self.mbs:
            fixed = {{}}
            for p in model.inputs:
                shape = p.get_partial_shape()
                shape[0] = self.mbs
                if self.pad and shape.is_dynamic:
                    raise pb_utils.TritonModelException(
                        f"input '{{p.get_any_name()}}' has dynamic non-batch dims {{shape}}: padding fills the "
                        "compiled input tensor, which has no shape"
                    )
                fixed[p.get_any_name()] = shape
            model.reshape(fixed)
        self.compiled = core.compile_model(model, "CPU", {{"INFERENCE_NUM_THREADS": 1}})

    def _run(self, feeds):
        return [np.asarray(v) for v in self.compiled(feeds).values()]

    def execute(self, requests):
        feeds = [{{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs}} for r in requests]
        if not self.mbs:
            results = [self._run(f) for f in feeds]
        else:
            sizes = [f[self.inputs[0]].shape[0] for f in feeds]
            total = sum(sizes)
            if total != self.mbs and not self.pad:
                msg = (
                    f"expected requests with batch size '{{self.mbs}}', got '{{total}}'... this error can be "
                    "avoided by setting 'ENABLE_BATCH_PADDING' parameter in model configuration to 'YES'"
                )
                return [pb_utils.InferenceResponse(error=pb_utils.TritonError(msg)) for _ in requests]
            merged = {{}}
            for n in self.inputs:
                x = np.concatenate([f[n] for f in feeds])
                if total < self.mbs:
                    x = np.concatenate([x, np.zeros((self.mbs - total,) + x.shape[1:], x.dtype)])
                merged[n] = x
            outs = [o[:total] for o in self._run(merged)]
            cuts = np.cumsum(sizes)[:-1]
            parts = [np.split(o, cuts) for o in outs]
            results = [[p[i] for p in parts] for i in range(len(feeds))]
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in zip(self.outputs, res)])
            for res in results
        ]
'''


@dataclass
class Triton:
    binary: Path
    backends: Path
    site: Path

    @property
    def args(self) -> list[str]:
        return [f"--backend-directory={self.backends}"]


_PROVISIONED: Triton | str | None = None


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")


def _server_tree() -> Path:
    root = CACHE / "pytriton-0.7.0"
    once(root, lambda: (root / ".complete").exists(), lambda: _make_server_tree(root))
    return root


def _make_server_tree(root: Path) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".pytriton-"))
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PYTRITON, "-d", str(tmp / "wheel")])
    wheel = next((tmp / "wheel").glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp / "x")
    shutil.rmtree(tmp / "wheel")
    server = tmp / "x" / "pytriton" / "tritonserver"
    stub = server / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
    shutil.copy2(stub, server / "backends" / "python" / "triton_python_backend_stub")
    for exe in (server / "bin" / "tritonserver", server / "backends" / "python" / "triton_python_backend_stub"):
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    (tmp / "x" / ".complete").write_text(PYTRITON + "\n")
    shutil.rmtree(root, ignore_errors=True)
    os.rename(tmp / "x", root)
    shutil.rmtree(tmp, ignore_errors=True)


def _stub_site() -> Path:
    site = CACHE / "stub-site-py311-v4"
    once(site, lambda: (site / ".complete").exists(), lambda: _make_stub_site(site))
    return site


def _make_stub_site(site: Path) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".stub-site-"))
    # the stub's own Python resolves the wheels (cp311, numpy<2 as the stub needs)
    _run(
        [
            str(STUB_PYTHON),
            "-m",
            "pip",
            "install",
            "-q",
            "--target",
            str(tmp),
            "numpy<2",
            "onnxruntime",
            "tokenizers",
            "openvino",
            "pillow",  # the image ensemble's preprocess step (mscompile.hf_steps)
        ]
    )
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(site, ignore_errors=True)
    os.rename(tmp, site)


def triton() -> Triton | str:
    """The provisioned server, or why there is none (a skip reason)."""
    global _PROVISIONED
    if _PROVISIONED is not None:
        return _PROVISIONED
    if os.environ.get("MSCOMPILE_TEST_NO_TRITON"):
        _PROVISIONED = "MSCOMPILE_TEST_NO_TRITON is set"
        return _PROVISIONED
    if not STUB_PYTHON.exists() or not Path("/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0").exists():
        _PROVISIONED = (
            f"a real Triton server needs {STUB_PYTHON} and its libpython3.11.so (Debian's python3.11) for the "
            "python backend stub"
        )
        return _PROVISIONED
    try:
        root = _server_tree()
        site = _stub_site()
    except Exception as exc:  # noqa: BLE001 - no network, no pip: the reason is the skip
        _PROVISIONED = f"could not fetch {PYTRITON} or the stub's packages from PyPI: {exc}"
        return _PROVISIONED
    server = root / "pytriton" / "tritonserver"
    backend = server / "backends" / "onnxruntime"
    backend.mkdir(exist_ok=True)
    (backend / "model.py").write_text(BACKEND.format(site=str(site)))
    (server / "backends" / "openvino").mkdir(exist_ok=True)
    (server / "backends" / "openvino" / "model.py").write_text(OPENVINO_BACKEND.format(site=str(site)))
    _PROVISIONED = Triton(server / "bin" / "tritonserver", server / "backends", site)
    return _PROVISIONED


def server_args(tri: Triton) -> list[str]:
    """serve-check/deploy arguments that start this server with the stand-in backends."""
    return ["--tritonserver", str(tri.binary), f"--tritonserver-arg=--backend-directory={tri.backends}"]
