import json

import pytest
import yaml
from helpers import REPO
from mscompile.config import ModelConfig, json_schema, load_config, parse_config
from mscompile.errors import ConfigError


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
    assert msg.startswith("model.yaml: targets[1].tolerence: unknown key; did you mean 'tolerance'?")
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


def test_schema_is_json_schema_of_every_section():
    s = json_schema()
    json.dumps(s)
    assert set(s["properties"]) >= {"name", "source", "inputs", "targets", "triton", "validation"}
    assert s["additionalProperties"] is False
