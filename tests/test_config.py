import json

import pytest
import yaml
from helpers import REPO, uncovered
from mscompile.config import ModelConfig
from mscompile.errors import ConfigError
from mscompile.tasks import json_schema, load_config, parse_config


def base() -> dict:
    return yaml.safe_load((REPO / "examples/digits/model.yaml").read_text())


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(data, where="model.yaml")
    return e.value.problems


def test_examples_parse():
    for ex in ("digits", "minilm"):
        cfg = load_config(REPO / f"examples/{ex}/model.yaml")
        assert isinstance(cfg, ModelConfig)
    cfg = load_config(REPO / "examples/minilm/model.yaml")
    assert cfg.dim_name(cfg.inputs[0], 1) == "sequence"
    assert cfg.max_batch_size() == 64


def test_unknown_key_names_path_and_suggests():
    d = base()
    d["targets"][1]["tolerence"] = {"cosine": 0.9}
    (msg,) = problems(d)
    assert msg.startswith(
        "model.yaml: targets[1].tolerence: unknown key for backend onnxruntime; did you mean 'tolerance'?"
    )
    assert "allowed here:" in msg and "precision" in msg


def test_bad_enum_names_key_and_allowed_values():
    d = base()
    d["targets"][1]["precision"] = "int4"
    (msg,) = problems(d)
    assert "targets[1].precision" in msg and "'fp32'" in msg and "'int4'" in msg


def test_wrong_type_names_key():
    d = base()
    d["triton"]["max_batch_size"] = "lots"
    assert any("triton.max_batch_size" in p and "integer" in p for p in problems(d))


def test_missing_required_key():
    d = base()
    del d["source"]["checkpoint"]
    assert problems(d) == ["model.yaml: source.checkpoint: required key is missing"]


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 200, "a b"])
def test_model_name_cannot_escape(name):
    d = base()
    d["name"] = name
    (msg,) = problems(d)
    assert msg.startswith("model.yaml: name: model name")


def test_range_opt_outside_min_max():
    d = base()
    d["inputs"][0]["range"]["opt"] = [128, 1, 8, 8]
    (msg,) = problems(d)
    assert "inputs[0].range: dimension 0 needs 1 <= min <= opt <= max" in msg


def test_fixed_dim_range_mismatch():
    d = base()
    d["inputs"][0]["range"]["max"] = [64, 1, 9, 8]
    assert any("dimension 2 is fixed at 8" in p for p in problems(d))


def test_max_batch_size_above_range():
    d = base()
    d["triton"]["max_batch_size"] = 128
    assert any("exceeds inputs[0].range.max[0] = 64" in p for p in problems(d))


def test_batching_needs_dynamic_first_dim():
    d = base()
    d["inputs"][0]["shape"] = [1, 1, 8, 8]
    d["inputs"][0].pop("range")
    assert any("needs a dynamic batch dimension" in p for p in problems(d))


def test_duplicate_target_and_bad_deploy():
    d = base()
    d["targets"][1]["name"] = "fp32"
    d["triton"]["deploy"] = "int4"
    ps = problems(d)
    assert any("targets[1].name: 'fp32' is used twice" in p for p in ps)
    assert any("triton.deploy: 'int4' is not a target" in p for p in ps)


def test_factory_must_be_module_colon_callable():
    d = base()
    d["source"]["factory"] = "__import__('os').system('x')"
    assert any(p.startswith("model.yaml: source.factory") for p in problems(d))


def test_yaml_python_tags_refused(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)


def test_yaml_duplicate_key_refused(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("name: a\nname: b\n")
    with pytest.raises(ConfigError, match=r"m.yaml:2:1: invalid YAML: duplicate key 'name'"):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="model config not found"):
        load_config(tmp_path / "nope.yaml")


def test_schema_is_json_schema_of_every_section_of_every_task():
    s = json_schema()
    json.dumps(s)
    tensor, llm = (s["$defs"][ref["$ref"].rpartition("/")[2]] for ref in s["oneOf"])
    assert set(tensor["properties"]) >= {"name", "task", "source", "inputs", "targets", "triton", "validation"}
    assert tensor["additionalProperties"] is False
    assert set(llm["properties"]) >= {"name", "task", "source", "targets", "triton", "validation", "calibration"}
    assert llm["additionalProperties"] is False
    assert (
        tensor["properties"]["task"]["default"] == "tensor" and llm["properties"]["task"]["const"] == "text-generation"
    )


# every cross-field message of the core (semantic_problems), with a change of the
# digits example that triggers it; backends' own messages: tests/backends/test_contract.py
def _mini(d):
    d["inputs"].append(
        {
            "name": "mask",
            "dtype": "float32",
            "shape": [-1, "seq"],
            "range": {"min": [1, 1], "opt": [8, 4], "max": [64, 8]},
        }
    )
    d["inputs"].append(
        {
            "name": "ids",
            "dtype": "float32",
            "shape": [-1, "seq"],
            "range": {"min": [1, 2], "opt": [8, 4], "max": [64, 8]},
        }
    )


CORE_PROBLEMS = [
    (
        lambda d: d["targets"][1].update(name="fp32"),
        "targets[1].name: 'fp32' is used twice; target names must be unique",
    ),
    (lambda d: d["inputs"].append(dict(d["inputs"][0])), "inputs[1].name: 'images' is declared twice"),
    (
        lambda d: d["inputs"][0]["range"].update(min=[1, 1, 8]),
        "inputs[0].range.min: has 3 dimensions, shape [-1, 1, 8, 8] has 4",
    ),
    (
        lambda d: d["inputs"][0]["range"].update(opt=[128, 1, 8, 8]),
        "inputs[0].range: dimension 0 needs 1 <= min <= opt <= max",
    ),
    (lambda d: d["inputs"][0]["range"].update(max=[64, 1, 9, 8]), "inputs[0].range: dimension 2 is fixed at 8"),
    (_mini, "inputs[2].range: dynamic dimension 'seq' has min..max 2..8 here but 1..8 in inputs 'mask'"),
    (lambda d: d["outputs"].append({"name": "logits"}), "outputs[1].name: 'logits' is declared twice"),
    (lambda d: d["outputs"].append({"name": "images"}), "outputs[1].name: 'images' is also an input name"),
    (
        lambda d: d["inputs"][0].update(
            shape=[1, 1, 8, 8], range={"min": [1, 1, 8, 8], "opt": [1, 1, 8, 8], "max": [1, 1, 8, 8]}
        ),
        "triton.max_batch_size: 64 needs a dynamic batch dimension, but inputs[0].shape[0] is 1",
    ),
    (
        lambda d: d["triton"].update(max_batch_size=128),
        "triton.max_batch_size: 128 exceeds inputs[0].range.max[0] = 64",
    ),
    (
        lambda d: d["triton"].update(
            max_batch_size=8, dynamic_batching={"preferred_batch_size": [4, 16], "max_queue_delay_microseconds": 500}
        ),
        "triton.dynamic_batching.preferred_batch_size[1]: 16 exceeds max_batch_size 8",
    ),
    (
        lambda d: d["triton"].update(version_policy={"latest": 1, "all": True}),
        "triton.version_policy: set exactly one of latest, all, specific",
    ),
    (
        lambda d: d["triton"].update(version_policy={"all": True}, retention={"keep_last": 3}),
        "triton.retention: version_policy all serves every version",
    ),
    (
        lambda d: d["triton"].update(version_policy={"latest": 3}, retention={"keep_last": 2}),
        "triton.retention.keep_last: 2 is below version_policy.latest (3)",
    ),
    (
        lambda d: (d.update(profile={"enabled": False}), d["triton"].update(deploy="fastest")),
        "triton.deploy: fastest needs profiling; remove profile.enabled: false",
    ),
    (lambda d: d["triton"].update(deploy="int4"), "triton.deploy: 'int4' is not a target; use one of"),
    (
        lambda d: d["validation"].update(generator="a.b:c"),
        "validation: set exactly one of data (a file or folder) or generator",
    ),
    (lambda d: d["validation"].update(data="x.txt"), "validation.tokenizer: x.txt is a text file"),
    (lambda d: d["validation"].update(tokenizer="a.b:c"), "validation.tokenizer: only used with a .txt data file"),
    (
        lambda d: d["calibration"].update(data=d["validation"]["data"]),
        "calibration.data: the calibration set must differ",
    ),
    (lambda d: d["validation"].update(labels="images"), "validation.labels: 'images' is also an input name"),
    (
        lambda d: d["validation"].update(padding_mask="mask"),
        "validation.padding_mask: 'mask' is not an input (inputs: images); name the mask input",
    ),
    (
        lambda d: d["validation"].update(padding_mask="images"),
        "validation.padding_mask: input 'images' is float32; a padding mask holds integers or booleans",
    ),
    (
        lambda d: d.update(profile={"batch_sizes": [1, 128]}),
        "profile.batch_sizes[1]: 128 is outside the batch range 1..64",
    ),
    (
        lambda d: (
            d["inputs"][0].update(
                shape=[1, 1, 8, 8], range={"min": [1, 1, 8, 8], "opt": [1, 1, 8, 8], "max": [1, 1, 8, 8]}
            ),
            d["triton"].update(max_batch_size=0, dynamic_batching=None),
            d.update(profile={"batch_sizes": [4]}),
        ),
        "profile.batch_sizes[0]: 4; the inputs have no batch axis",
    ),
    (
        lambda d: (d.update(name="m" * 128), d["targets"][0].update(name="t" * 128), d["triton"].update(deploy="all")),
        "would be a folder name over 255 bytes",
    ),
    (
        lambda d: d["targets"][0].update(tolerance={"per_output": {"scores": {"cosine": 0.9}}}),
        "targets[0].tolerance.per_output: 'scores' is not an output; the outputs are ['logits']",
    ),
    (
        lambda d: d["targets"][0].update(tolerance={"cosine": 0.9, "per_output": {"logits": {"cosine": 0.5}}}),
        "targets[0].tolerance.cosine: gates no output",
    ),
]


@pytest.mark.parametrize(("change", "message"), CORE_PROBLEMS)
def test_every_core_problem_is_reported_with_its_key(change, message):
    d = base()
    change(d)
    assert any(message in p for p in problems(d)), problems(d)


def test_every_core_problem_message_has_a_case():
    import inspect

    from mscompile.config import semantic_problems

    assert not uncovered([inspect.getsource(semantic_problems)], CORE_PROBLEMS)


def _with_pipeline(d, **changes):
    d["pipeline"] = {
        "preprocess": {
            "function": "examples.minilm.pipeline:preprocess",
            "inputs": [{"name": "text", "dtype": "string", "shape": [1]}],
        },
        "validation": "calibration_data/minilm_val.txt",
    }
    d["pipeline"].update(changes)
    return d


PIPELINE_PROBLEMS = [
    (lambda d: _with_pipeline(d, preprocess=None), "pipeline: give a preprocess or a postprocess step"),
    (
        lambda d: (_with_pipeline(d), d["triton"].update(deploy="all")),
        "pipeline: needs one deployed model; triton.deploy: all",
    ),
    (
        lambda d: (_with_pipeline(d), d["triton"].update(max_batch_size=0)),
        "pipeline: the ensemble batches requests",
    ),
    (
        lambda d: _with_pipeline(
            d,
            postprocess={
                "function": "examples.minilm.pipeline:postprocess",
                "inputs": ["nope"],
                "outputs": [{"name": "y"}],
            },
        ),
        "pipeline.postprocess.inputs[0]: 'nope' is neither a model output nor a model input",
    ),
    (
        lambda d: _with_pipeline(
            d, preprocess={"function": "examples.minilm.pipeline:preprocess", "inputs": [{"name": "a"}]}
        ),
        "pipeline.validation: a .txt file feeds one string input",
    ),
    (lambda d: _with_pipeline(d, validation="raw.csv"), "pipeline.validation: 'raw.csv' must be a .txt or .npz file"),
    (
        lambda d: _with_pipeline(d, validation="examples"),  # a folder: images for one uint8 [h, w, 3] input
        "pipeline.validation: a folder of images feeds one uint8 [h, w, 3] input",
    ),
    (lambda d: _with_pipeline(d, name="bad name!"), "pipeline.name: 'bad name!' is not a valid model name"),
    (
        lambda d: _with_pipeline(d, name=d["name"]),
        "pipeline.name: the ensemble would be published as 'digits', the name of the model",
    ),
]


@pytest.mark.parametrize(("change", "message"), PIPELINE_PROBLEMS)
def test_every_pipeline_problem_is_reported_with_its_key(change, message):
    d = base()
    change(d)
    assert any(message in p for p in problems(d)), problems(d)


def test_every_pipeline_problem_message_has_a_case():
    import inspect

    from mscompile.config import _pipeline_problems

    assert not uncovered([inspect.getsource(_pipeline_problems)], PIPELINE_PROBLEMS)
