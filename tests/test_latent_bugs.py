"""Bugs that followed from the growth beside the backend interface (issue 20): each
failed before its fix."""

import pytest
import yaml
from helpers import REPO
from mscompile.errors import ConfigError, MscompileError
from mscompile.tasks import parse_config


def _trt_with_pipeline() -> dict:
    d = yaml.safe_load((REPO / "examples/digits/model_tensorrt.yaml").read_text())
    d["triton"]["deploy"] = "fastest"
    d["pipeline"] = {
        "postprocess": {"function": "examples.minilm.pipeline:postprocess", "outputs": [{"name": "y"}]},
        "validation": "calibration_data/digits_val.npz",
    }
    return d


def test_a_pipeline_whose_deployed_variant_is_a_tensorrt_engine_is_not_an_internal_error(tmp_path):
    """The end-to-end gate ran ONNX Runtime on whatever was deployed; for an engine it
    failed inside ONNX Runtime. Now the backend runs its own variant (TensorRT here), or
    says plainly why it cannot."""
    from mscompile.artifacts import TrtEngine
    from mscompile.ensemble import chain_gate

    cfg = parse_config(_trt_with_pipeline())
    target = next(t for t in cfg.targets if t.backend == "tensorrt")
    engine = TrtEngine(path=tmp_path, digest="0" * 64)
    (tmp_path / "model.plan").write_bytes(b"not an engine")
    with pytest.raises(MscompileError) as e:
        chain_gate(cfg, target, engine)
    assert f"the end-to-end gate runs the deployed tensorrt variant {target.name!r}" in str(e.value)
    assert "TensorRT" in str(e.value)


def test_a_rayserve_app_for_a_variant_it_cannot_serve_is_refused_before_anything_is_published():
    d = yaml.safe_load((REPO / "examples/digits/model_tensorrt.yaml").read_text())
    d["rayserve"] = {}
    d["triton"]["deploy"] = "trt_fp16"
    with pytest.raises(ConfigError) as e:
        parse_config(d)
    assert "triton.deploy: 'trt_fp16' cannot be served by the rayserve: app; deploy one of fp32" in str(e.value)
    # with deploy: fastest the choice is known only after the gates: checked before publishing
    from mscompile.rayserve import servable

    d["triton"]["deploy"] = "fastest"
    cfg = parse_config(d)
    with pytest.raises(ConfigError, match=r"rayserve: the deployed target 'trt_fp16' \(tensorrt\) has no Ray Serve"):
        servable(cfg, next(t for t in cfg.targets if t.name == "trt_fp16"))
