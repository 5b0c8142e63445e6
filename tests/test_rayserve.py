"""Ray Serve as a second hand-off target: the app written beside the Triton repository
(app.py batched with @serve.batch, serve_config.yaml that Ray Serve's own schema
accepts), started with `serve run` on loopback and gated over HTTP by serve-check."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from helpers import REPO, run_cli, write_config
from ray_harness import ray_missing


@pytest.fixture
def digits_rayserve(tmp_path):
    if ray_missing():
        pytest.skip(ray_missing())
    cfg = yaml.safe_load((REPO / "examples/digits/model.yaml").read_text())
    cfg["triton"]["repository"] = str(tmp_path / "repo")
    cfg["targets"] = [cfg["targets"][0]]  # fp32
    cfg["rayserve"] = {"folder": str(tmp_path / "rayserve"), "autoscaling": {"min_replicas": 1, "max_replicas": 2}}
    path = write_config(cfg, tmp_path / "model.yaml")
    r = run_cli("build", str(path), "--json")
    assert r.returncode == 0, r.stderr
    return path, json.loads(r.stdout), tmp_path / "rayserve" / "digits" / "1"


def test_build_writes_a_ray_serve_app_that_serve_accepts(digits_rayserve):
    from ray.serve.schema import ServeDeploySchema

    _, out, app = digits_rayserve
    assert out["rayserve"] == str(app)
    assert sorted(p.name for p in app.iterdir()) == ["app.py", "build_manifest.json", "model.onnx", "serve_config.yaml"]
    conf = yaml.safe_load((app / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(conf)  # Ray Serve's own schema
    (application,) = conf["applications"]
    assert application["route_prefix"] == "/digits" and application["import_path"] == "app:app"
    assert application["runtime_env"]["working_dir"] == f"local://{app}"
    dep = application["deployments"][0]
    assert dep["autoscaling_config"]["max_replicas"] == 2 and "num_replicas" not in dep
    text = (app / "app.py").read_text()
    # the batcher takes Triton's settings: max_batch_size 64, max_queue_delay 500 us
    assert "@serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0005)" in text
    published = Path(out["published"][0]["path"]) / "model.onnx"
    assert (app / "model.onnx").read_bytes() == published.read_bytes()


def test_serve_check_runs_the_app_and_gates_it(digits_rayserve):
    path, _, app = digits_rayserve
    r = run_cli("serve-check", str(path), "--rayserve", "--json", "--concurrency", "8")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    http = s["protocols"]["http"]
    assert s["server"] == "rayserve" and s["passed"] and http["requests"] == 360
    assert http["metrics"]["max_abs"] == pytest.approx(s["gate_metrics"]["max_abs"], abs=1e-6)
    assert http["metrics"]["accuracy_drop"] == 0.0

    # an app that answers wrongly: exit 3, naming the metric
    m = onnx.load(str(app / "model.onnx"))
    out = m.graph.output[0]
    for n in m.graph.node:
        n.output[:] = [o + "_x" if o == out.name else o for o in n.output]
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.array(3.0, np.float32), "k"))
    m.graph.node.append(onnx.helper.make_node("Mul", [out.name + "_x", "k"], [out.name]))
    onnx.save(m, str(app / "model.onnx"))
    r = run_cli("serve-check", str(path), "--rayserve")
    assert r.returncode == 3, r.stderr
    assert "on Ray Serve answers outside the gate of target 'fp32'" in r.stderr


def test_rayserve_needs_an_onnxruntime_or_openvino_target(tmp_path):
    cfg = yaml.safe_load((REPO / "examples/digits/model_tensorrt.yaml").read_text())
    cfg["targets"] = [t for t in cfg["targets"] if t["backend"] == "tensorrt"]
    cfg["rayserve"] = {}
    r = run_cli("validate", str(write_config(cfg, tmp_path / "m.yaml")))
    assert r.returncode == 2 and "rayserve: the app runs ONNX Runtime or OpenVINO" in r.stderr, r.stderr


@pytest.mark.parametrize("folder", ["repo", "repo/apps", "."])
def test_the_apps_folder_may_not_overlap_the_triton_repository(tmp_path, folder):
    """rayserve.folder equal to triton.repository wrote no app (Triton's version folder was
    taken for "already written"), and serve-check --rayserve then crashed (KeyError)."""
    cfg = yaml.safe_load((REPO / "examples/digits/model.yaml").read_text())
    cfg["triton"]["repository"] = str(tmp_path / "repo")
    cfg["rayserve"] = {"folder": str(tmp_path / folder)}
    path = write_config(cfg, tmp_path / "m.yaml")
    for command in ("validate", "build"):
        r = run_cli(command, str(path))
        assert r.returncode == 2, r.stderr
        assert "rayserve.folder: " in r.stderr and "overlap" in r.stderr
    assert not (tmp_path / "repo").exists()


def test_an_openvino_variant_is_served_by_openvino_in_the_app(tmp_path):
    if ray_missing():
        pytest.skip(ray_missing())
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'mscompile[openvino]')")
    cfg = yaml.safe_load((REPO / "examples/digits/model_openvino.yaml").read_text())
    cfg["triton"]["repository"] = str(tmp_path / "repo")
    cfg["triton"].pop("deploy", None)
    cfg["targets"] = [t for t in cfg["targets"] if t["name"] == "ov_fp32"]
    cfg["rayserve"] = {"folder": str(tmp_path / "rayserve")}
    path = write_config(cfg, tmp_path / "model.yaml")
    r = run_cli("build", str(path), "-q")
    assert r.returncode == 0, r.stderr
    app = tmp_path / "rayserve" / "digits_ov" / "1"
    assert sorted(p.suffix for p in app.iterdir()) == [".bin", ".json", ".py", ".xml", ".yaml"]
    assert "RUNTIME = 'openvino'" in (app / "app.py").read_text()
    r = run_cli("serve-check", str(path), "--rayserve", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["passed"] and s["variant"] == "ov_fp32" and s["protocols"]["http"]["requests"] == 360
