import pytest
import yaml
from google.protobuf import text_format
from helpers import REPO
from mscompile.errors import ConfigError
from mscompile.publish import model_config
from mscompile.tasks import parse_config
from mscompile.tritonrepo.config import parse, to_text
from tritonclient.grpc import model_config_pb2

DIGITS_IO = {
    "inputs": [{"name": "images", "dtype": "float32", "dims": ["batch", 1, 8, 8]}],
    "outputs": [{"name": "logits", "dtype": "float32", "dims": ["batch", 10]}],
}


def _cfg(**triton):
    d = yaml.safe_load((REPO / "examples/digits/model.yaml").read_text())
    d["triton"].update(triton)
    return parse_config(d)


def test_digits_config_round_trips_through_tritons_schema():
    text = to_text(model_config(_cfg(), "digits", DIGITS_IO))
    mc = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert mc.name == "digits" and mc.platform == "onnxruntime_onnx" and mc.max_batch_size == 64
    assert list(mc.input[0].dims) == [1, 8, 8]  # batch dim left out with max_batch_size > 0
    assert list(mc.output[0].dims) == [10]
    assert mc.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(mc.dynamic_batching.preferred_batch_size) == []  # none unless model.yaml gives them
    assert mc.dynamic_batching.max_queue_delay_microseconds == 500
    assert mc.version_policy.latest.num_versions == 2
    assert mc.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    w = mc.model_warmup[0]
    # one request (a config searched down to max_batch_size 1 still loads), opt shape otherwise
    assert w.batch_size == 1 and list(w.inputs["images"].dims) == [1, 8, 8] and w.inputs["images"].zero_data


def test_dynamic_non_batch_dims_are_minus_one():
    d = yaml.safe_load((REPO / "examples/minilm/model.yaml").read_text())
    io = {
        "inputs": [
            {"name": n, "dtype": "int64", "dims": ["batch", "sequence"]}
            for n in ("input_ids", "attention_mask", "token_type_ids")
        ],
        "outputs": [{"name": "embeddings", "dtype": "float32", "dims": ["batch", 384]}],
    }
    mc = parse(to_text(model_config(parse_config(d), "minilm", io)))
    assert [list(i.dims) for i in mc.input] == [[-1]] * 3
    assert mc.input[0].data_type == model_config_pb2.TYPE_INT64
    assert list(mc.model_warmup[0].inputs["input_ids"].dims) == [128]


def test_max_batch_size_zero_keeps_all_dims_and_no_batching():
    mc = parse(to_text(model_config(_cfg(max_batch_size=0, dynamic_batching=None), "digits", DIGITS_IO)))
    assert mc.max_batch_size == 0
    assert list(mc.input[0].dims) == [-1, 1, 8, 8]
    assert not mc.HasField("dynamic_batching")


def test_output_without_batch_dim_is_refused():
    io = {
        "inputs": DIGITS_IO["inputs"],
        "outputs": [{"name": "logits", "dtype": "float32", "dims": [10]}],
    }
    with pytest.raises(ConfigError, match="output 'logits' has no dynamic first dimension"):
        model_config(_cfg(), "digits", io)


@pytest.mark.parametrize(
    ("key", "value"),
    [("name", "${MODEL}"), ("inputs.0.name", "${INPUT}"), ("outputs.0.name", "{{ output }}"), ("inputs.0.name", 'a"b')],
)
def test_no_placeholder_reaches_a_generated_config(key, value):
    """Every string model.yaml puts into config.pbtxt is checked: a template placeholder
    (a common failure of template-filled configs) is refused naming its key."""
    d = yaml.safe_load((REPO / "examples/digits/model.yaml").read_text())
    *path, last = key.split(".")
    node = d
    for k in path:
        node = node[int(k)] if k.isdigit() else node[k]
    node[last] = value
    with pytest.raises(ConfigError, match=key.replace(".0.", r"\[0\]\.")):
        parse_config(d)


def test_every_generated_config_parses_back_unchanged():
    from mscompile.backends import all_backends, backends_of

    for name, backend in backends_of("tensor").items():
        d = yaml.safe_load((REPO / "examples/digits/model.yaml").read_text())
        d["targets"] = [{"name": "t", "backend": name}]
        cfg = parse_config(d)
        for m in backend.serving(cfg, cfg.targets[0], "digits", DIGITS_IO, None):
            text = to_text(m.config)
            assert "${" not in text and "{{" not in text
            assert parse(text) == m.config, name
    assert all_backends()


def _ov_cfg(batching: str | None, example: str = "digits/model.yaml", preferred=None):
    d = yaml.safe_load((REPO / "examples" / example).read_text())
    if preferred is not None:
        d["triton"]["dynamic_batching"]["preferred_batch_size"] = preferred
    t = {"name": "ov", "backend": "openvino", "precision": "fp32"}
    if batching:
        t["openvino"] = {"batching": batching}
    d["targets"] = [t]
    return parse_config(d)


def test_openvino_config_without_batching_by_default():
    """Triton's OpenVINO backend refuses any batch but max_batch_size unless it pads:
    by default the config does not batch and each request runs at its own shape."""
    mc = parse(to_text(model_config(_ov_cfg(None), "digits", DIGITS_IO)))
    assert mc.backend == "openvino" and mc.max_batch_size == 0
    assert list(mc.input[0].dims) == [-1, 1, 8, 8] and list(mc.output[0].dims) == [-1, 10]
    assert not mc.HasField("dynamic_batching") and "ENABLE_BATCH_PADDING" not in mc.parameters
    w = mc.model_warmup[0]
    # 1: Triton skips a sample of batch_size 0; without batching the dims are the whole shape
    assert w.batch_size == 1 and list(w.inputs["images"].dims) == [8, 1, 8, 8]


def test_openvino_padding_batches_to_full_executions():
    mc = parse(to_text(model_config(_ov_cfg("pad", preferred=[]), "digits", DIGITS_IO)))
    assert mc.max_batch_size == 64 and list(mc.input[0].dims) == [1, 8, 8]
    assert mc.parameters["ENABLE_BATCH_PADDING"].string_value == "YES"
    assert list(mc.dynamic_batching.preferred_batch_size) == [64]  # only a full batch wastes nothing
    # sizes model.yaml gives are kept
    mc = parse(to_text(model_config(_ov_cfg("pad", preferred=[8, 16]), "digits", DIGITS_IO)))
    assert list(mc.dynamic_batching.preferred_batch_size) == [8, 16]


def test_openvino_padding_refused_with_dynamic_non_batch_dims():
    with pytest.raises(ConfigError) as e:
        _ov_cfg("pad", "minilm/model.yaml")
    assert "openvino.batching: pad needs every non-batch dimension static" in str(e.value)
    assert "input_ids[1]" in str(e.value) and "batching: none" in str(e.value)


def test_openvino_without_batching_refused_inside_a_batching_ensemble():
    d = yaml.safe_load((REPO / "examples/minilm/model.yaml").read_text())
    d["targets"] = [{"name": "ov", "backend": "openvino", "precision": "fp32"}]
    with pytest.raises(ConfigError) as e:
        parse_config(d)
    assert "a Triton ensemble that batches cannot contain" in str(e.value)
