"""config.pbtxt as a message of Triton's own schema (tritonclient's
model_config_pb2), built from the real ONNX graph's inputs and outputs plus the
`triton` section. A typo'd field or enum fails here, never in the server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.protobuf import text_format

from ..sections import IOSpec

if TYPE_CHECKING:
    from ..config import ModelConfig
from ..errors import ConfigError

TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "float64": "TYPE_FP64",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "int16": "TYPE_INT16",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "bool": "TYPE_BOOL",
}


def triton_pb() -> Any:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _dims(spec: dict[str, Any], batched: bool, where: str) -> list[int]:
    dims = [d if isinstance(d, int) else -1 for d in spec["dims"]]
    if batched:
        if not dims or dims[0] != -1:
            raise ConfigError(
                f"triton.max_batch_size: {where} {spec['name']!r} has no dynamic first dimension "
                f"(dims {spec['dims']}); set max_batch_size: 0 or make dimension 0 dynamic"
            )
        dims = dims[1:]
    return dims


def _dtype(spec: dict[str, Any]) -> Any:
    pb = triton_pb()
    name = TRITON_DTYPES.get(spec["dtype"])
    if name is None:
        raise ConfigError(f"tensor {spec['name']!r} has dtype {spec['dtype']}, which Triton cannot serve")
    return pb.DataType.Value(name)


def _opt_dims(io: IOSpec, name: str, batched: bool = True) -> list[int]:
    """Warm-up dims from the range's opt shape (1 for unbounded dynamic dims), without the
    batch dim; a config without batching (max_batch_size 0) gets the whole shape."""
    inp = next(i for i in io.inputs if i.name == name)
    shape = list(inp.range.opt) if inp.range else [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    return shape[1:] if io.has_batch_axis() and batched else shape


def fp16_io(io_sig: dict[str, Any]) -> dict[str, Any]:
    """The signature of an fp16 graph converted without keep_io_types."""
    return {
        k: [dict(v, dtype="float16" if v["dtype"] == "float32" else v["dtype"]) for v in vs] for k, vs in io_sig.items()
    }


def base_model_config(
    cfg: ModelConfig,
    model_name: str,
    io_sig: dict[str, Any],
    *,
    backend: str,
    filename: str,
    platform: str = "",
    on_gpu: bool = False,
    max_batch_size: int | None = None,
) -> Any:
    """The part of a ModelConfig every backend shares: inputs and outputs from the
    real graph's signature, batching, instances, version policy and warm-up, from
    the `triton` section (preferred batch sizes only where model.yaml gives them).
    `max_batch_size` overrides the section's where a backend's batching rules need
    another (0: no batching, the batch dimension is then part of every tensor's dims).
    A backend adds its own fields."""

    pb = triton_pb()
    t = cfg.triton
    mbs = cfg.max_batch_size() if max_batch_size is None else max_batch_size
    batched = mbs > 0
    mc = pb.ModelConfig(
        name=model_name, platform=platform, backend=backend, max_batch_size=mbs, default_model_filename=filename
    )
    for spec in io_sig["inputs"]:
        mc.input.add(name=spec["name"], data_type=_dtype(spec), dims=_dims(spec, batched, "input"))
    for spec in io_sig["outputs"]:
        mc.output.add(name=spec["name"], data_type=_dtype(spec), dims=_dims(spec, batched, "output"))
    if t.dynamic_batching is not None and batched:
        db = mc.dynamic_batching
        # only where model.yaml gives them: Triton's batcher guide starts from none (batches as
        # large as the queue allows), and Model Analyzer keeps a config's preferred sizes in every
        # candidate, so it cannot search a max_batch_size below them
        db.preferred_batch_size.extend(t.dynamic_batching.preferred_batch_size)
        db.max_queue_delay_microseconds = t.dynamic_batching.max_queue_delay_microseconds
        db.SetInParent()
    for g in t.instance_group:
        # a GPU runtime runs on GPUs whatever the CPU default says
        kind = "KIND_GPU" if on_gpu and g.kind == "KIND_CPU" else g.kind
        ig = mc.instance_group.add(kind=pb.ModelInstanceGroup.Kind.Value(kind), count=g.count)
        if g.gpus:
            ig.gpus.extend(g.gpus)
    if t.version_policy is not None:
        vp = t.version_policy
        if vp.latest is not None:
            mc.version_policy.latest.num_versions = vp.latest
        elif vp.all:
            mc.version_policy.all.SetInParent()
        elif vp.specific:
            mc.version_policy.specific.versions.extend(vp.specific)
    if t.warmup:
        w = mc.model_warmup.add(name="mscompile_opt_shape")
        for spec in io_sig["inputs"]:
            dims = _opt_dims(cfg.io, spec["name"], batched)
            # Triton's core sends batch_size requests of batch 1 each and silently skips a
            # sample whose batch_size is 0 (model_config.proto: >= 1, and 1 without batching).
            # One request: a config searched down to max_batch_size 1 (Model Analyzer keeps the
            # warmup of the config it starts from) still loads
            w.batch_size = 1
            w.inputs[spec["name"]].data_type = _dtype(spec)
            w.inputs[spec["name"]].dims.extend(dims)
            # zeros are valid for every input, token ids included (random ids may be out of vocabulary)
            w.inputs[spec["name"]].zero_data = True
    return mc


def to_text(mc: Any) -> str:
    return text_format.MessageToString(mc)


def parse(text: str) -> Any:
    """Parse config.pbtxt text into a ModelConfig (raises on any unknown field)."""
    return text_format.Parse(text, triton_pb().ModelConfig())


def throughput_knee(rows: list[dict[str, Any]], gain: float = 1.10) -> int:
    """The batch size where throughput stops growing by more than `gain` per step."""
    rows = sorted(rows, key=lambda r: r["batch"])
    best = rows[0]
    for r in rows[1:]:
        if r["throughput"] < best["throughput"] * gain:
            break
        best = r
    return int(best["batch"])
