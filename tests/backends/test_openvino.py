"""backend: openvino, for real: ONNX -> IR, NNCF INT8, gates on the OpenVINO
runtime, profiles, the Triton OpenVINO backend's config, and the recovery try
(NNCF accuracy control). Skipped with the reason where OpenVINO or NNCF is absent."""

import importlib.util
import json

import numpy as np
import pytest
import yaml
from helpers import REPO, run_cli, write_config
from mscompile.tritonrepo.config import parse

MISSING = [m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (pip install 'mscompile[openvino]')")


@pytest.fixture
def ov_config(tmp_path) -> dict:
    cfg = yaml.safe_load((REPO / "examples/digits/model_openvino.yaml").read_text())
    cfg["triton"]["repository"] = str(tmp_path / "repo")
    return cfg


def test_openvino_variants_are_gated_on_openvino_and_published_for_its_backend(tmp_path, ov_config):
    import openvino as ov

    path = write_config(ov_config, tmp_path / "model.yaml")
    home = {"MSCOMPILE_HOME": str(tmp_path / "home")}
    r = run_cli("build", str(path), "--json", env=home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    v = {x["name"]: x for x in out["variants"]}
    assert v["ov_fp32"]["gated_on"] == ["openvino"] and v["ov_int8"]["gated_on"] == ["openvino"]
    # served through ONNX Runtime's OpenVINO accelerator: gated on both runtimes
    assert v["ort_ov"]["gated_on"] == ["onnxruntime", "openvino"]
    assert v["ov_int8"]["quantization"]["quantizer"] == "nncf.quantize"
    assert v["ov_int8"]["quantization"]["fake_quantize_nodes"] > 0
    assert v["ov_int8"]["metrics"]["accuracy_drop"] <= 0.5
    assert v["ov_fp32"]["profile"]["runtime"] == "openvino"

    repo = tmp_path / "repo"
    mc = parse((repo / "digits_ov_ov_int8/config.pbtxt").read_text())
    assert mc.backend == "openvino" and mc.default_model_filename == "model.xml" and not mc.platform
    assert mc.parameters["PERFORMANCE_HINT"].string_value == "LATENCY"
    assert mc.parameters["NUM_STREAMS"].string_value == "1"
    assert mc.instance_group[0].kind == mc.instance_group[0].KIND_CPU
    version = repo / "digits_ov_ov_int8/1"
    assert sorted(p.name for p in version.iterdir()) == ["build_manifest.json", "model.bin", "model.xml"]
    # the published IR computes what the gate measured
    val = np.load(REPO / "calibration_data/digits_val.npz")
    compiled = ov.Core().compile_model(str(version / "model.xml"), "CPU")
    acc = (compiled({"images": val["images"]})[0].argmax(1) == val["labels"]).mean() * 100
    assert acc == pytest.approx(v["ov_int8"]["metrics"]["accuracy"])
    acc_fp32 = parse((repo / "digits_ov_ort_ov/config.pbtxt").read_text())
    assert acc_fp32.optimization.execution_accelerators.cpu_execution_accelerator[0].name == "openvino"

    again = json.loads(run_cli("build", str(path), "--json", env=home).stdout)
    assert again["passes_run"] == 0


def test_int8_that_misses_its_gate_tries_nncf_accuracy_control_then_fails_with_exit_3(tmp_path, ov_config):
    ov_config["targets"] = [
        {"name": "ov_int8", "backend": "openvino", "precision": "int8", "tolerance": {"cosine_min": 0.99999}}
    ]
    path = write_config(ov_config, tmp_path / "model.yaml")
    r = run_cli("build", str(path), "--json", env={"MSCOMPILE_HOME": str(tmp_path / "home")})
    assert r.returncode == 3, r.stderr
    v = json.loads(r.stdout)["variants"][0]
    assert [t["mode"] for t in v["tries"]] == ["nncf", "nncf accuracy control"]
    assert "cosine_min" in v["reason"] and "after 2 NNCF tries" in v["reason"]
    assert v["quantization"]["quantizer"] == "nncf.quantize_with_accuracy_control"
    assert not (tmp_path / "repo").exists()
