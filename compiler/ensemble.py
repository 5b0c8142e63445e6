"""Triton ensembles: preprocess -> the deployed model -> postprocess, as one unit.

The steps are the user's Python functions (`module:function`), published as
python-backend models whose version folder holds the user's module, its
`files`, and a generated model.py; the ensemble model wires names, dtypes and
shapes through `ensemble_scheduling`, pinned to the member versions published
with it. Every config is a `ModelConfig` message.

The gate is end to end: the raw validation inputs (e.g. sentences) go through
the shipped step code (imported from a staged copy of exactly what is
published), the deployed variant on its runtime, and the postprocess; the
reference is the same chain with the PyTorch model. One request per sample,
as a client would send them."""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mscompile.accuracy import evaluate

from .backends import get
from .config import ensemble_name, resolve_path, step_names
from .data import image_files
from .errors import ConfigError, TargetSkippedError
from .loading import as_output_list, cwd_on_path, load_module, resolve_checkpoint, resolve_shipped_file
from .runtimes import RuntimeUnavailableError
from .sections import IOSpec, OutputSpec
from .tritonrepo.config import TRITON_DTYPES, triton_pb

if TYPE_CHECKING:
    from .config import ModelConfig
    from .sections import PipelineConfig, PipelineStep

STRING = "TYPE_STRING"
NP_TRITON = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
    "string": STRING,
}


# names mscompile writes in a step's version folder itself
RESERVED_FILES = ("model.py", "build_manifest.json", "members.json")


# -- the step code ---------------------------------------------------------------------


def step_sources(step: PipelineStep, key: str) -> dict[str, Path]:
    """File name in the version folder -> source: the function's module and its files."""
    module, _, _fn = step.function.partition(":")
    with cwd_on_path():
        spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise ConfigError(f"{key}.function: module {module!r} is not an importable .py file; fix the module path")
    out = {Path(spec.origin).name: Path(spec.origin)}
    for j, f in enumerate(step.files):
        path = resolve_shipped_file(f, f"{key}.files[{j}]")
        if path.name in out or path.name in RESERVED_FILES:
            raise ConfigError(f"{key}.files[{j}]: {path.name!r} clashes with another file of the step; rename it")
        out[path.name] = path
    return out


def stage(step: PipelineStep, key: str, folder: Path) -> str:
    """Copy the step's files into `folder`; returns the module's file name."""
    files = step_sources(step, key)
    for name, src in files.items():
        shutil.copyfile(src, folder / name)
    return next(iter(files))


def load_function(folder: Path, module_file: str, function: str, label: str) -> Any:
    """Import the staged module by path (as the server does), call its setup(folder)."""
    spec = importlib.util.spec_from_file_location(f"mscompile_step_{label}", folder / module_file)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
        if hasattr(mod, "setup"):
            mod.setup(str(folder))
    except Exception as exc:
        raise ConfigError(
            f"pipeline.{label}.function: importing {module_file} or its setup(folder) failed, as it would on the "
            f"server (the folder holds only the module and the step's files): {type(exc).__name__}: {exc}"
        ) from None
    fn = getattr(mod, function.rpartition(":")[2], None)
    if fn is None:
        raise ConfigError(f"pipeline.{label}.function: {function!r}: the module has no such function")
    return fn


def _image_folder(path: Path) -> np.ndarray:
    """The folder's images (sorted by name) as uint8 RGB [n, h, w, 3]; one request batch
    has one size, so every image is resized (bilinear) to the first one's size."""
    from PIL import Image

    ims = [Image.open(f).convert("RGB") for f in image_files(path, "pipeline.validation")]
    size = ims[0].size
    return np.stack([np.asarray(im if im.size == size else im.resize(size, Image.Resampling.BILINEAR)) for im in ims])


def raw_validation(pc: PipelineConfig) -> dict[str, np.ndarray]:
    path = resolve_path(pc.validation)
    if path.is_dir():
        assert pc.preprocess is not None
        data = {pc.preprocess.inputs[0].name: _image_folder(path)}
    elif not path.is_file():
        raise ConfigError(f"pipeline.validation: {path} not found; check the path")
    elif path.suffix == ".txt":
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        assert pc.preprocess is not None
        data = {pc.preprocess.inputs[0].name: np.array(lines, dtype=object).reshape(-1, 1)}
    else:
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError) as exc:
            raise ConfigError(f"pipeline.validation: cannot read {path} as .npz ({exc})") from None
        wanted = [t.name for t in pc.preprocess.inputs] if pc.preprocess is not None else []
        missing = [w for w in wanted if w not in data]
        if missing or not data:
            raise ConfigError(
                f"pipeline.validation: {path} has no array named {(missing or ['(any)'])[0]!r}; it has "
                f"{sorted(data)}, the pipeline's raw inputs are {wanted}"
            )
    n = min(len(v) for v in data.values())
    if n == 0:
        raise ConfigError(f"pipeline.validation: {path} holds no samples")
    if pc.samples:
        n = min(n, pc.samples)
    return {k: v[:n] for k, v in data.items()}


def _as_batch(out: Any, where: str) -> dict[str, np.ndarray]:
    if not isinstance(out, dict):
        raise ConfigError(f"{where}: the function returned {type(out).__name__}, not a dict of arrays")
    try:
        return {k: np.asarray(v) for k, v in out.items()}
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: the function returned values that are not arrays ({exc})") from None


def _call(fn: Any, batch: dict[str, np.ndarray], where: str, function: str) -> dict[str, np.ndarray]:
    """A step function on one request: its result, or ConfigError naming the step (the
    user's code raised)."""
    try:
        out = fn(batch)
    except Exception as exc:  # the step's code: its error, named, exit 2
        raise ConfigError(f"{where}: {function} raised {type(exc).__name__}: {exc}") from None
    return _as_batch(out, where)


def _fits(value: np.ndarray, dims: list[Any]) -> bool:
    """A request's array against declared dims (batch axis included): same rank, every
    fixed dim equal (-1 or a name: any size)."""
    return value.ndim == len(dims) and all(
        not isinstance(d, int) or d < 0 or d == n for d, n in zip(dims, value.shape, strict=True)
    )


def _dtype_fits(value: np.ndarray, dtype: str) -> bool:
    """Whether Triton's step can send `value` as the declared dtype (it casts numbers)."""
    if dtype == "string":
        return value.dtype.kind in "OUS"
    return value.dtype.kind in "biuf"


def _check_step_outputs(result: dict[str, np.ndarray], declared: list[Any], where: str) -> None:
    """What a step returned, per request, against what its config declares (Triton would
    refuse every response that does not match)."""
    for t in declared:
        v = result[t.name]
        if not _dtype_fits(v, t.dtype):
            raise ConfigError(
                f"{where}.outputs: {t.name!r} is declared {t.dtype} but the function returned {v.dtype}; "
                "fix the declaration or the function"
            )
        if not _fits(v, [1, *t.shape]):
            raise ConfigError(
                f"{where}.outputs: {t.name!r} is declared shape {t.shape} per request, but the function returned "
                f"{list(v.shape[1:])} (batch {v.shape[0] if v.ndim else '-'}); fix the declaration or the function"
            )


def run_chain(
    cfg: ModelConfig,
    pre: Any,
    post: Any,
    model: Any,
    raw: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """raw -> pre -> model -> post, one request (sample) at a time; the final outputs. Each
    step's result is checked against what the config declares for it."""
    pc = cfg.pipeline
    assert pc is not None
    n = len(next(iter(raw.values())))
    outs: dict[str, list[np.ndarray]] = {}
    for i in range(n):
        x = {k: v[i : i + 1] for k, v in raw.items()}
        if pre is not None:
            assert pc.preprocess is not None
            feeds = _call(pre, x, "pipeline.preprocess", pc.preprocess.function)
        else:
            feeds = x
        missing = [inp.name for inp in cfg.inputs if inp.name not in feeds]
        if missing:
            raise ConfigError(f"pipeline.preprocess: its result lacks the model inputs {missing}")
        for inp in cfg.inputs:
            v = feeds[inp.name]
            if not _dtype_fits(v, inp.dtype) or not _fits(v, [1, *inp.shape[1:]]):
                raise ConfigError(
                    f"pipeline.preprocess: {inp.name!r} feeds the model input declared {inp.dtype} {inp.shape}, "
                    f"but the function returned {v.dtype} {list(v.shape)} for one request; fix the function or "
                    "inputs:"
                )
        feeds = {inp.name: feeds[inp.name].astype(inp.dtype) for inp in cfg.inputs}
        y = dict(zip([o.name for o in cfg.outputs], model(feeds), strict=True))
        if post is not None:
            assert pc.postprocess is not None
            names = pc.postprocess.inputs or [o.name for o in cfg.outputs]
            avail = {**feeds, **y}
            result = _call(post, {k: avail[k] for k in names}, "pipeline.postprocess", pc.postprocess.function)
            wanted = [t.name for t in pc.postprocess.outputs]
            lacking = [w for w in wanted if w not in result]
            if lacking:
                raise ConfigError(f"pipeline.postprocess: its result lacks the declared outputs {lacking}")
            _check_step_outputs(result, pc.postprocess.outputs, "pipeline.postprocess")
            y = {w: result[w] for w in wanted}
        for k, v in y.items():
            outs.setdefault(k, []).append(v)
    return {k: np.concatenate(v, axis=0) for k, v in outs.items()}


class Chain:
    """The staged step functions (exactly what is published)."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.dir = Path(tempfile.mkdtemp(prefix="mscompile-pipeline-"))
        pc = cfg.pipeline
        assert pc is not None
        self.pre = self.post = None
        for label in ("preprocess", "postprocess"):
            step = getattr(pc, label)
            if step is None:
                continue
            folder = self.dir / label
            folder.mkdir()
            module_file = stage(step, f"pipeline.{label}", folder)
            fn = load_function(folder, module_file, step.function, label)
            if label == "preprocess":
                self.pre = fn
            else:
                self.post = fn

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Chain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def torch_model(cfg: ModelConfig) -> Any:
    import torch

    module = load_module(cfg.source, resolve_checkpoint(cfg.source.checkpoint))

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(feeds[i.name])) for i in cfg.inputs]
            res = as_output_list(module(*args), len(cfg.outputs), "outputs")
        return [t.detach().float().numpy() if t.is_floating_point() else t.numpy() for t in res]

    return run


def variant_model(cfg: ModelConfig, target: Any, artifact: Any) -> tuple[Any, str]:
    """The deployed variant as a function of feeds, on the runtime its backend serves it
    with; and that runtime's name."""
    backend = get(target.backend)
    session = backend.session(target)
    if session is None:
        raise ConfigError(
            f"pipeline: the deployed target {target.name!r} ({backend.name}) is not one model a session runs; "
            "an ensemble needs a tensor model (onnxruntime, openvino or tensorrt)"
        )
    try:
        infer = session(str(artifact.model_file), [o.name for o in cfg.outputs])
    except RuntimeUnavailableError as exc:
        raise TargetSkippedError(
            f"pipeline: the end-to-end gate runs the deployed {backend.name} variant {target.name!r}, "
            f"which cannot run here: {exc}"
        ) from None
    return (lambda feeds: list(infer(feeds))), backend.name


def chain_gate(cfg: ModelConfig, target: Any, artifact: Any, progress: Any = None) -> dict[str, Any]:
    """The end-to-end gate: the published chain with the deployed variant against the
    chain with the PyTorch model. Returns the report (passed, metrics, failures)."""
    pc = cfg.pipeline
    assert pc is not None
    raw = raw_validation(pc)
    model, runtime = variant_model(cfg, target, artifact)
    with Chain(cfg) as chain:
        if progress:
            progress(f"pipeline: {len(next(iter(raw.values())))} raw samples through the chain ({runtime}, PyTorch)")
        ref = run_chain(cfg, chain.pre, chain.post, torch_model(cfg), raw)
        got = run_chain(cfg, chain.pre, chain.post, model, raw)
    io = IOSpec(inputs=cfg.inputs, outputs=[OutputSpec(name=k) for k in ref])
    metrics, per_output, failures = evaluate(
        {k: v.astype(np.float32) for k, v in got.items()},
        {k: v.astype(np.float32) for k, v in ref.items()},
        None,
        io,
        pc.tolerance,
    )
    return {
        "ensemble": ensemble_name(cfg),
        "runtime": runtime,
        "samples": len(next(iter(raw.values()))),
        "metrics": metrics,
        "per_output": per_output,
        "tolerance": pc.tolerance.model_dump(exclude_none=True),
        "passed": not failures,
        "failures": failures,
    }


def chain_reference(cfg: ModelConfig) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(raw validation inputs, the PyTorch chain's outputs): what serve-check compares with."""
    pc = cfg.pipeline
    assert pc is not None
    raw = raw_validation(pc)
    with Chain(cfg) as chain:
        return raw, run_chain(cfg, chain.pre, chain.post, torch_model(cfg), raw)


# -- what Triton gets ------------------------------------------------------------------


MODEL_PY = '''"""Generated by mscompile: runs {function} from {module_file} in Triton's python backend."""

import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
for _p in reversed({python_path!r} + [HERE]):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


def _load():
    spec = importlib.util.spec_from_file_location({label!r}, os.path.join(HERE, {module_file!r}))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if hasattr(mod, "setup"):
        mod.setup(HERE)
    return getattr(mod, {fn!r})


def _text(b):
    return b.decode("utf-8") if isinstance(b, bytes) else str(b)


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.fn = _load()
        self.inputs = [(i["name"], i["data_type"]) for i in cfg["input"]]
        self.outputs = [(o["name"], o["data_type"]) for o in cfg["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            batch = {{}}
            for name, dtype in self.inputs:
                x = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                if dtype == "TYPE_STRING":
                    x = np.vectorize(_text, otypes=[object])(x)
                batch[name] = x
            try:
                out = self.fn(batch)
                tensors = []
                for name, dtype in self.outputs:
                    v = np.asarray(out[name])
                    v = v.astype(np.object_) if dtype == "TYPE_STRING" else v.astype(pb_utils.triton_string_to_numpy(dtype))
                    tensors.append(pb_utils.Tensor(name, v))
                responses.append(pb_utils.InferenceResponse(tensors))
            except Exception as exc:  # the client gets the step's error, the model stays up
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{fn}: {{type(exc).__name__}}: {{exc}}"))
                )
        return responses
'''


def _tensor(msg: Any, name: str, dtype: str, dims: list[int]) -> None:
    t = msg.add()
    t.name = name
    t.data_type = triton_pb().DataType.Value(dtype)
    t.dims.extend(dims)


def _model_io(
    cfg: ModelConfig, io_sig: dict[str, Any]
) -> tuple[dict[str, tuple[str, list[int]]], dict[str, tuple[str, list[int]]]]:
    """The deployed model's inputs and outputs as Triton sees them (dtype, dims without batch)."""

    def conv(specs: list[dict[str, Any]]) -> dict[str, tuple[str, list[int]]]:
        return {
            s["name"]: (TRITON_DTYPES[s["dtype"]], [d if isinstance(d, int) else -1 for d in s["dims"]][1:])
            for s in specs
        }

    return conv(io_sig["inputs"]), conv(io_sig["outputs"])


def served_models(
    cfg: ModelConfig, model_name: str, model_version: int, io_sig: dict[str, Any], staging: Path
) -> tuple[list[tuple[str, Any, dict[str, Path]]], tuple[str, Any, dict[str, Path]]]:
    """The step models (name, ModelConfig, files) and the ensemble's, its steps pinned to
    `model_version` of the model; the step versions are filled in by `pin_steps`."""
    pc = cfg.pipeline
    assert pc is not None
    pb = triton_pb()
    ins, outs = _model_io(cfg, io_sig)
    mbs = cfg.max_batch_size()
    names = step_names(cfg)
    steps: list[tuple[str, Any, dict[str, Path]]] = []
    for label, name in names.items():
        step = getattr(pc, label)
        folder = staging / label
        folder.mkdir(parents=True, exist_ok=True)
        module_file = stage(step, f"pipeline.{label}", folder)
        fn = step.function.rpartition(":")[2]
        (folder / "model.py").write_text(
            MODEL_PY.format(
                function=step.function,
                module_file=module_file,
                python_path=list(pc.python_path),
                label=f"mscompile_step_{label}",
                fn=fn,
            )
        )
        mc = pb.ModelConfig()
        mc.name = name
        mc.backend = "python"
        mc.max_batch_size = mbs
        if label == "preprocess":
            for t in step.inputs:
                _tensor(mc.input, t.name, NP_TRITON[t.dtype], t.shape)
            for n, (dt, dims) in ins.items():
                _tensor(mc.output, n, dt, dims)
        else:
            readers = step.inputs or list(outs)
            for n in readers:
                dt, dims = outs.get(n) or ins[n]
                _tensor(mc.input, n, dt, dims)
            for t in step.outputs:
                _tensor(mc.output, t.name, NP_TRITON[t.dtype], t.shape)
        g = mc.instance_group.add()
        g.kind = pb.ModelInstanceGroup.KIND_CPU
        g.count = 1
        files = {p.name: p for p in sorted(folder.iterdir())}
        steps.append((name, mc, files))
    ens = pb.ModelConfig()
    ens.name = ensemble_name(cfg)
    ens.platform = "ensemble"
    ens.max_batch_size = mbs
    first_in = pc.preprocess.inputs if pc.preprocess else None
    if first_in:
        for t in first_in:
            _tensor(ens.input, t.name, NP_TRITON[t.dtype], t.shape)
    else:
        for n, (dt, dims) in ins.items():
            _tensor(ens.input, n, dt, dims)
    if pc.postprocess:
        for t in pc.postprocess.outputs:
            _tensor(ens.output, t.name, NP_TRITON[t.dtype], t.shape)
    else:
        for n, (dt, dims) in outs.items():
            _tensor(ens.output, n, dt, dims)
    sched = ens.ensemble_scheduling
    if "preprocess" in names:
        s = sched.step.add()
        s.model_name = names["preprocess"]
        s.model_version = -1
        for t in pc.preprocess.inputs:  # type: ignore[union-attr]
            s.input_map[t.name] = t.name
        for n in ins:
            s.output_map[n] = n
    s = sched.step.add()
    s.model_name = model_name
    s.model_version = model_version
    for n in ins:
        s.input_map[n] = n
    for n in outs:
        s.output_map[n] = n
    if "postprocess" in names:
        s = sched.step.add()
        s.model_name = names["postprocess"]
        s.model_version = -1
        for n in pc.postprocess.inputs or list(outs):  # type: ignore[union-attr]
            s.input_map[n] = n
        for t in pc.postprocess.outputs:  # type: ignore[union-attr]
            s.output_map[t.name] = t.name
    # the ensemble's version folder records its members: a new member version makes a new ensemble version
    return steps, (ens.name, ens, {})


def pin_steps(ens: Any, versions: dict[str, int]) -> Any:
    for s in ens.ensemble_scheduling.step:
        if s.model_name in versions:
            s.model_version = versions[s.model_name]
    return ens


def members_file(staging: Path, ens: Any) -> Path:
    path = staging / "members.json"
    path.write_text(
        json.dumps({s.model_name: s.model_version for s in ens.ensemble_scheduling.step}, indent=2, sort_keys=True)
        + "\n"
    )
    return path
