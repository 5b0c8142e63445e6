"""TensorRT targets. Everything up to the engine build runs here; building and
running an engine needs TensorRT and an NVIDIA GPU (marker `tensorrt`), which
no machine mscompile is developed on has: those tests skip with the reason."""

import ast
import json

import numpy as np
import pytest
import yaml
from helpers import REPO, run_cli, write_config
from mscompile.backends.tensorrt import trt_profiles
from mscompile.device import tensorrt_status
from mscompile.passes.build_tensorrt import TrtBuildConfig, reproduce_script, timing_cache_path
from mscompile.publish import model_config
from mscompile.tasks import parse_config
from mscompile.tritonrepo.config import parse, to_text

TRT_OK, TRT_REASON = tensorrt_status()
needs_tensorrt = pytest.mark.skipif(not TRT_OK, reason=TRT_REASON)


@pytest.fixture
def trt_config(tmp_path):
    cfg = yaml.safe_load((REPO / "examples/digits/model_tensorrt.yaml").read_text())
    cfg["triton"]["repository"] = str(tmp_path / "repo")
    return cfg


def test_build_without_tensorrt_skips_honestly(tmp_path, trt_config):
    if TRT_OK:
        pytest.skip("TensorRT is present here: the engine tests below cover it")
    cfg = write_config(trt_config, tmp_path / "model.yaml")
    r = run_cli("build", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    status = {v["name"]: (v["status"], v["reason"]) for v in out["variants"]}
    assert status["fp32"][0] == "OK"
    for name in ("trt_fp16", "trt_int8"):
        # checked before any pass of the target runs: it names what is missing
        assert status[name][0] == "SKIPPED" and f"tensorrt target {name!r} needs tensorrt" in status[name][1]
    steps = {p["step"] for p in json.load(open(tmp_path / "repo/digits_trt_fp32/1/build_manifest.json"))["passes"]}
    assert not any(s.startswith("trt_") for s in steps), steps
    assert "warning: target trt_fp16 SKIPPED" in r.stderr
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["digits_trt_fp32"]

    r = run_cli("build", str(cfg), "--require-all-targets")
    assert r.returncode == 1
    assert "--require-all-targets: nothing was published" in r.stderr and "trt_int8" in r.stderr


def test_doctor_and_build_judge_tensorrt_by_one_rule(tmp_path, trt_config):
    """TensorRT importable and a GPU visible, but Polygraphy missing: the build skips the
    TensorRT targets naming polygraphy, and doctor says the same of the backend (it used
    to say TensorRT ok: it checked only the module and the GPU)."""
    import os

    from helpers import hidden_modules_env

    fake = tmp_path / "fake"
    (fake / "tensorrt").mkdir(parents=True)
    (fake / "tensorrt" / "__init__.py").write_text("__version__ = '10.0.0'\n")
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 9.0, 550.54.15'\n")
    smi.chmod(0o755)
    env = hidden_modules_env(tmp_path, ["polygraphy"])
    env.update(PYTHONPATH=f"{fake}{os.pathsep}{env['PYTHONPATH']}", PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    env["MSCOMPILE_HOME"] = str(tmp_path / "home")
    doctor = run_cli("doctor", env=env)
    assert doctor.returncode == 0, doctor.stderr
    rows = {ln.split()[1]: ln for ln in doctor.stdout.splitlines() if ln.startswith("backend ")}
    assert "NVIDIA H100" in doctor.stdout  # the fake GPU is seen
    assert " missing " in rows["tensorrt"] and "needs polygraphy" in rows["tensorrt"], rows["tensorrt"]
    trt_config["targets"] = [t for t in trt_config["targets"] if t["name"] in ("fp32", "trt_fp16")]
    r = run_cli("build", str(write_config(trt_config, tmp_path / "model.yaml")), "--json", env=env)
    assert r.returncode == 0, r.stderr
    v = {v["name"]: v for v in json.loads(r.stdout)["variants"]}
    assert v["trt_fp16"]["status"] == "SKIPPED" and "needs polygraphy" in v["trt_fp16"]["reason"], v["trt_fp16"]


def test_plan_shows_profiles_and_a_config_that_agrees_with_them(tmp_path, trt_config):
    cfg = write_config(trt_config, tmp_path / "model.yaml")
    r = run_cli("plan", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)["targets"]["trt_int8"]
    assert [p["name"] for p in t["profiles"]] == ["small", "large"]
    mc = parse(t["config_pbtxt"])
    assert mc.platform == "tensorrt_plan" and mc.default_model_filename == "model.plan"
    assert mc.max_batch_size == max(p["shapes"]["images"]["max"][0] for p in t["profiles"])
    for p in t["profiles"]:
        assert list(mc.input[0].dims) == p["shapes"]["images"]["max"][1:]
    assert [list(g.profile) for g in mc.instance_group] == [["0", "1"]]
    assert mc.instance_group[0].kind == mc.instance_group[0].KIND_GPU
    human = run_cli("plan", str(cfg)).stdout
    assert "TensorRT profile 'small': images min=(1, 1, 8, 8) opt=(1, 1, 8, 8) max=(8, 1, 8, 8)" in human


def test_reproduce_script_carries_every_setting(tmp_path, trt_config):
    cfg = parse_config(trt_config)
    t = next(x for x in cfg.targets if x.name == "trt_int8")
    bc = TrtBuildConfig(precision="int8", profiles=trt_profiles(cfg, t), settings=t.tensorrt, io=cfg.io)
    cache = timing_cache_path(
        tmp_path, {"tensorrt": "10.9", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    )
    text = reproduce_script(tmp_path / "m.onnx", "ab" * 32, tmp_path / "model.plan", bc, cache)
    ast.parse(text)  # valid Python
    assert "NetworkFromOnnxPath(ONNX, strongly_typed=True)" in text
    assert "profile.add('images', min=(1, 1, 8, 8), opt=(1, 1, 8, 8), max=(8, 1, 8, 8))" in text
    assert "profile.add('images', min=(8, 1, 8, 8), opt=(32, 1, 8, 8), max=(64, 1, 8, 8))" in text
    assert "memory_pool_limits={trt.MemoryPoolType.WORKSPACE: 4096 << 20}" in text
    assert "builder_optimization_level=3" in text and "load_timing_cache=TIMING_CACHE" in text
    assert "save_timing_cache=TIMING_CACHE" in text and cache.name == "timing-10.9-NVIDIA_H100_80GB_HBM3-9.0.cache"
    t2 = t.model_copy(
        update={
            "tensorrt": t.tensorrt.model_copy(
                update={"hardware_compatibility_level": "ampere_plus", "version_compatible": True}
            )
        }
    )
    bc2 = bc.model_copy(update={"settings": t2.tensorrt})
    text2 = reproduce_script(tmp_path / "m.onnx", "ab" * 32, tmp_path / "model.plan", bc2, None)
    assert "hardware_compatibility_level=trt.HardwareCompatibilityLevel.AMPERE_PLUS" in text2
    assert "version_compatible=True" in text2 and "TIMING_CACHE = None" in text2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["inputs"][0].pop("range"),
            "inputs[0].shape: dynamic dimension in [-1, 1, 8, 8] needs min/opt/max under inputs[0].range for TensorRT target 'trt_fp16'",
        ),
        (
            lambda c: c["targets"][2]["tensorrt"]["profiles"][0]["shapes"]["images"].update(opt=[9, 1, 8, 8]),
            "targets[2].tensorrt.profiles[0].shapes.images: dimension 0 needs 1 <= min <= opt <= max, got min=1 opt=9 max=8",
        ),
        (lambda c: c["triton"].update(max_batch_size=128), "exceeds"),
        (
            lambda c: c["targets"][1].update(graph_fusion="bert"),
            "targets[1].graph_fusion: unknown key for backend tensorrt (it is an option of backend onnxruntime)",
        ),
    ],
)
def test_bad_tensorrt_settings_exit_2_before_any_work(tmp_path, trt_config, change, message):
    change(trt_config)
    home = tmp_path / "home"
    r = run_cli("build", str(write_config(trt_config, tmp_path / "model.yaml")), env={"MSCOMPILE_HOME": str(home)})
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert not (tmp_path / "repo").exists() and not (home / "cache").exists()


def test_onnxruntime_gpu_accelerator_config(trt_config):
    trt_config["targets"][0]["gpu"] = {
        "accelerator": "tensorrt",
        "precision_mode": "FP16",
        "trt_engine_cache_path": "/cache",
    }
    cfg = parse_config(trt_config)
    io = {
        "inputs": [{"name": "images", "dtype": "float32", "dims": ["batch", 1, 8, 8]}],
        "outputs": [{"name": "logits", "dtype": "float32", "dims": ["batch", 10]}],
    }
    mc = parse(to_text(model_config(cfg, "digits", io, target=cfg.targets[0])))
    acc = mc.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    assert acc.parameters["trt_engine_cache_path"] == "/cache" and mc.platform == "onnxruntime_onnx"
    assert mc.instance_group[0].kind == mc.instance_group[0].KIND_GPU


@pytest.mark.tensorrt
@needs_tensorrt
def test_engine_builds_and_matches_pytorch(tmp_path, trt_config):
    """Runs where TensorRT and a GPU exist (the Docker image): real engines, real parity."""
    cfg = write_config(trt_config, tmp_path / "model.yaml")
    r = run_cli("build", str(cfg), "--json", "--require-all-targets")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for v in out["variants"]:
        assert v["status"] == "OK", v
    repo = tmp_path / "repo"
    for name in ("trt_fp16", "trt_int8"):
        d = repo / f"digits_trt_{name}"
        assert (d / "1/model.plan").stat().st_size > 0
        assert parse((d / "config.pbtxt").read_text()).platform == "tensorrt_plan"
    val = np.load(REPO / "calibration_data/digits_val.npz")
    assert len(val["labels"]) > 0
