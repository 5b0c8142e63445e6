"""backend: openvino, for real: ONNX -> IR, NNCF INT8, gates on the OpenVINO
runtime, profiles, the Triton OpenVINO backend's config, and the recovery try
(NNCF accuracy control). Skipped with the reason where OpenVINO or NNCF is absent."""

import importlib.util
import json

import numpy as np
import pytest
import yaml
from helpers import REPO, run_cli, write_config
from mscompile.tritonrepo.config import parse, to_text
from triton_harness import server_args

MISSING = [m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (pip install 'mscompile[openvino]')")


@pytest.fixture
def ov_config(tmp_path) -> dict:
    cfg = yaml.safe_load((REPO / "examples/digits/model_openvino.yaml").read_text())
    cfg["triton"]["repository"] = str(tmp_path / "repo")
    return cfg


@pytest.fixture(scope="module")
def ov_build(tmp_path_factory):
    """examples/digits/model_openvino.yaml built once for this module: (folder, config path, summary)."""
    tmp_path = tmp_path_factory.mktemp("ov")
    cfg = yaml.safe_load((REPO / "examples/digits/model_openvino.yaml").read_text())
    cfg["triton"]["repository"] = str(tmp_path / "repo")
    path = write_config(cfg, tmp_path / "model.yaml")
    r = run_cli("build", str(path), "--json", env={"MSCOMPILE_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stderr
    return tmp_path, path, json.loads(r.stdout)


def test_openvino_variants_are_gated_on_openvino_and_published_for_its_backend(ov_build):
    import openvino as ov

    tmp_path, path, out = ov_build
    home = {"MSCOMPILE_HOME": str(tmp_path / "home")}
    v = {x["name"]: x for x in out["variants"]}
    assert v["ov_fp32"]["gated_on"] == ["openvino"] and v["ov_int8"]["gated_on"] == ["openvino"]
    # served through ONNX Runtime's OpenVINO accelerator: gated on both runtimes
    assert v["ort_ov"]["gated_on"] == ["onnxruntime", "openvino"]
    assert "not through ONNX Runtime's OpenVINO execution provider" in v["ort_ov"]["served_by"]
    assert v["ov_int8"]["quantization"]["quantizer"] == "nncf.quantize"
    assert v["ov_int8"]["quantization"]["model_type"] == "default"  # auto: a CNN has no attention
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


def test_int8_that_misses_its_gate_tries_the_mixed_preset_and_accuracy_control_within_a_budget(tmp_path, ov_config):
    home = {"MSCOMPILE_HOME": str(tmp_path / "home")}
    target = {"name": "ov_int8", "backend": "openvino", "precision": "int8", "tolerance": {"cosine_min": 0.99999}}
    # no time for recovery: try 1 runs, the rest are named as not tried
    ov_config["targets"] = [dict(target, recovery={"budget_s": 0, "max_drop": 1e-9})]
    path = write_config(ov_config, tmp_path / "model.yaml")
    r = run_cli("build", str(path), "--json", env=home)
    assert r.returncode == 3, r.stderr
    v = json.loads(r.stdout)["variants"][0]
    assert [(t["mode"], t["preset"]) for t in v["tries"]] == [("nncf", "performance")]
    stopped = "not tried: try 2 (nncf, preset mixed), try 3 (nncf accuracy control, preset mixed)"
    assert stopped in v["tries"][0]["stopped"] and stopped in v["reason"]

    # with the default budget: try 1 from the cache, then the mixed preset, then accuracy
    # control, which can keep no INT8 layer within a drop of 1e-9: a verdict, not a crash
    ov_config["targets"] = [dict(target, recovery={"max_drop": 1e-9})]
    write_config(ov_config, path)
    r = run_cli("build", str(path), "--json", env=home)
    assert r.returncode == 3, r.stderr
    out = json.loads(r.stdout)
    v = out["variants"][0]
    assert [(t["mode"], t["preset"]) for t in v["tries"]] == [
        ("nncf", "performance"),
        ("nncf", "mixed"),
        ("nncf accuracy control", "mixed"),
    ]
    assert "returned every layer to float" in v["tries"][2]["reason"]
    assert "after 3 NNCF tries" in v["reason"]
    assert "try 2 (nncf, preset mixed): logits: cosine_min" in v["reason"]  # how close INT8 came
    assert v["quantization"]["quantizer"] == "nncf.quantize_with_accuracy_control"
    assert not (tmp_path / "repo").exists()
    # the verdict is stored like any step's: an unchanged build runs nothing again
    again = json.loads(run_cli("build", str(path), "--json", env=home).stdout)
    assert again["passes_run"] == 0 and again["variants"][0]["reason"] == v["reason"]


@pytest.fixture(scope="module")
def ov_server(tri, ov_build):
    """One Triton (explicit model control, the stand-in backends) on the module's repository:
    the serve-checks below load and unload on it (--url/--grpc-url)."""
    from mscompile.handoff import LocalServer

    tmp_path, _, _ = ov_build
    with LocalServer(tri.binary, tmp_path / "repo", tmp_path / "triton.log", tri.args) as s:
        yield ["--url", s.http_url, "--grpc-url", s.grpc_url]


def test_every_openvino_variant_serves_the_gates_answers_on_triton(ov_server, ov_build):
    """On Triton with the openvino stand-in, which refuses what Triton's C++ OpenVINO
    backend refuses (see triton_harness.py), every published variant loads and answers
    one request per sample (batch 1) with what its gate measured."""
    tmp_path, path, out = ov_build
    for variant in ("ov_fp32", "ov_int8", "ort_ov"):
        name = f"digits_ov_{variant}"
        mc = parse((tmp_path / "repo" / name / "config.pbtxt").read_text())
        if mc.backend == "openvino":
            # the backend reshapes a batching config to a static batch: none here
            assert mc.max_batch_size == 0 and list(mc.input[0].dims) == [-1, 1, 8, 8]
            assert not mc.HasField("dynamic_batching")
        r = run_cli("serve-check", str(path), "--model", name, *ov_server, "--json")
        assert r.returncode == 0, (variant, r.stderr)
        s = json.loads(r.stdout)
        gate = next(v for v in out["variants"] if v["name"] == variant)["metrics"]
        for proto in ("grpc", "http"):
            p = s["protocols"][proto]
            assert p["requests"] == 360 and p["passed"], (variant, proto, p)
            assert p["metrics"]["accuracy"] == pytest.approx(gate["accuracy"]), (variant, proto)


def test_openvino_stand_in_refuses_a_batch_the_real_backend_refuses(ov_server, ov_build):
    """A config as mscompile wrote it before (max_batch_size 64, dynamic batching, no
    padding) loads READY and then fails every batch-1 request, as on the real backend;
    with ENABLE_BATCH_PADDING it serves."""
    src, path, _ = ov_build
    pbtxt = src / "repo" / "digits_ov_ov_fp32" / "config.pbtxt"
    original = pbtxt.read_text()
    mc = parse(original)
    mc.max_batch_size = 64
    for io in (*mc.input, *mc.output):
        del io.dims[0]
    mc.dynamic_batching.max_queue_delay_microseconds = 500
    del mc.model_warmup[:]
    # one request in flight: the batcher has nothing to merge, every execution is batch 1
    args = (
        "serve-check",
        str(path),
        "--model",
        "digits_ov_ov_fp32",
        *ov_server,
        "--protocol",
        "grpc",
        "--concurrency",
        "1",
    )
    try:
        pbtxt.write_text(to_text(mc))
        r = run_cli(*args)
        assert r.returncode == 1, r.stderr
        assert "expected requests with batch size '64', got '1'" in r.stderr, r.stderr
        mc.parameters["ENABLE_BATCH_PADDING"].string_value = "YES"
        pbtxt.write_text(to_text(mc))
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr
    finally:
        pbtxt.write_text(original)


def test_onnxruntime_openvino_accelerator_needs_a_backend_with_openvinos_provider(tri, ov_build):
    """Where Triton's onnxruntime backend was built without ONNX Runtime's OpenVINO
    execution provider the config does not load; serve-check says what it needs."""
    _, path, _ = ov_build
    r = run_cli(
        "serve-check",
        str(path),
        "--model",
        "digits_ov_ort_ov",
        *server_args(tri),
        env={"MSCOMPILE_TEST_ORT_WITHOUT_OPENVINO": "1"},
    )
    assert r.returncode == 1, r.stderr
    assert "unknown Execution Accelerator 'openvino'" in r.stderr, r.stderr
    assert "OpenVINO execution provider" in r.stderr and "backend: openvino" in r.stderr, r.stderr


def test_auto_model_type_finds_attention_in_the_openvino_graph(tmp_path):
    """model_type: auto quantizes as a transformer exactly where the IR has attention: a
    Softmax over a product of two activations (through scale and mask), or the
    ScaledDotProductAttention OpenVINO fuses it into; not a classifier's Softmax."""
    import openvino as ov
    import torch
    from mscompile.passes.quantize_nncf import attention_blocks

    class Attention(torch.nn.Module):
        def forward(self, q, k):
            return torch.softmax(q @ k.transpose(-1, -2) / 8.0 + 1.0, -1)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return torch.softmax(self.fc(x) * 2.0, -1)

    class Sdpa(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    qk = (torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4))
    found = {}
    for net, args in (
        (Attention(), qk),
        (Classifier(), (torch.randn(2, 4),)),
        (Sdpa(), (*qk, torch.randn(1, 2, 5, 4))),
    ):
        f = tmp_path / f"{type(net).__name__}.onnx"
        torch.onnx.export(net, args, str(f), dynamo=False)
        found[type(net).__name__] = attention_blocks(ov.Core().read_model(str(f)))
    assert found == {"Attention": 1, "Classifier": 0, "Sdpa": 1}
