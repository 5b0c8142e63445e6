"""End to end on the digits example through the real CLI (exit codes included)."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import torch
from helpers import REPO, cli_argv, run_cli, write_config
from mscompile.tritonrepo.config import parse


def _build(cfg_path, *extra, env=None):
    r = run_cli("build", str(cfg_path), "--json", *extra, env=env)
    return r, (json.loads(r.stdout) if r.stdout.strip().startswith("{") else None)


def _ran(summary_events_dir):
    """Step ids that really ran in the newest build (from its events.jsonl)."""
    newest = max(summary_events_dir.glob("logs/*/events.jsonl"), key=lambda p: p.stat().st_mtime)
    ends = [json.loads(line) for line in newest.read_text().splitlines() if '"step_end"' in line]
    return sorted(e["step"] for e in ends if not e["cached"])


def test_build_publishes_a_model_that_matches_pytorch(tmp_path, digits_config, digits_module):
    cfg = write_config(digits_config, tmp_path / "model.yaml")
    r, out = _build(cfg)
    assert r.returncode == 0, r.stderr
    repo = tmp_path / "repo"
    assert out["version"] == 1 and out["published"][0]["new_version"] is True
    assert {v["name"]: v["status"] for v in out["variants"]} == {"fp32": "OK", "fp16": "OK", "int8": "OK"}
    mc = parse((repo / "digits/config.pbtxt").read_text())
    assert mc.name == "digits" and list(mc.input[0].dims) == [1, 8, 8] and mc.max_batch_size == 64

    # the published ONNX reproduces PyTorch and its held-out accuracy
    val = np.load(REPO / "calibration_data/digits_val.npz")
    net = digits_module()
    net.load_state_dict(torch.load(REPO / "examples/digits/digits.pt"))
    net.eval()
    with torch.no_grad():
        ref = net(torch.from_numpy(val["images"])).numpy()
    sess = ort.InferenceSession(str(repo / "digits/1/model.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"images": val["images"][i : i + 64]})[0] for i in range(0, len(ref), 64)])
    np.testing.assert_allclose(got, ref, atol=1e-4)
    acc_torch = (ref.argmax(1) == val["labels"]).mean()
    assert (got.argmax(1) == val["labels"]).mean() == acc_torch and acc_torch > 0.95
    fp32 = next(v for v in out["variants"] if v["name"] == "fp32")
    assert (
        fp32["metrics"]["accuracy"] == round(acc_torch * 100, 10)
        or abs(fp32["metrics"]["accuracy"] - acc_torch * 100) < 1e-9
    )

    manifest = json.loads((repo / "digits/1/build_manifest.json").read_text())
    assert manifest["deployed_variant"] == "fp32"
    assert {p["step"] for p in manifest["passes"]} >= {
        "load_checkpoint",
        "export_onnx",
        "optimize_graph",
        "fp16/convert_fp16",
    }
    assert manifest["libraries"]["onnxruntime"] == ort.__version__
    assert manifest["sources"]["checkpoint"]["checkpoint_sha256"]


def test_rebuild_runs_nothing_and_changes_rerun_only_their_target(tmp_path, digits_config):
    home = tmp_path / "home"
    env = {"MSCOMPILE_HOME": str(home)}
    cfg = write_config(digits_config, tmp_path / "model.yaml")
    assert _build(cfg, env=env)[0].returncode == 0
    r, out = _build(cfg, env=env)
    assert r.returncode == 0 and out["passes_run"] == 0 and out["passes_cached"] == 11
    assert out["published"] == [
        {
            "model": "digits",
            "version": 1,
            "path": str(tmp_path / "repo/digits/1"),
            "new_version": False,
            "pruned": [],
        }
    ]
    assert _ran(home) == []

    digits_config["targets"][1]["tolerance"]["cosine"] = 0.9999
    write_config(digits_config, cfg)
    assert _build(cfg, env=env)[0].returncode == 0
    assert _ran(home) == ["fp16/check_accuracy"]

    digits_config["targets"][1]["keep_io_types"] = False
    write_config(digits_config, cfg)
    r, out = _build(cfg, env=env)
    assert r.returncode == 0, r.stderr
    assert _ran(home) == ["fp16/check_accuracy", "fp16/convert_fp16", "fp16/profile"]

    r, out = _build(cfg, "--force", env=env)
    assert out["passes_run"] == 11 and out["passes_cached"] == 0
    assert out["version"] == 1  # same files: no new version for Triton to load


def test_killed_build_resumes_from_the_last_finished_pass(tmp_path, digits_config):
    home = tmp_path / "home"
    cfg = write_config(digits_config, tmp_path / "model.yaml")
    # killed by SIGKILL as the second pass (the export) starts: a named fault point, no timing
    env = {**os.environ, "MSCOMPILE_HOME": str(home), "MSCOMPILE_KILL_AT": "step:start#2"}
    killed = subprocess.run(cli_argv("build", str(cfg), "-q"), cwd=REPO, env=env)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "repo/digits/1").exists()
    r, out = _build(cfg, env={"MSCOMPILE_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    ran = _ran(home)
    assert "load_checkpoint" not in ran and "optimize_graph" in ran
    assert out["version"] == 1


def test_gate_failure_exits_3_and_publishes_nothing(tmp_path, digits_config):
    digits_config["targets"][1]["tolerance"] = {"max_abs": 1e-9}
    cfg = write_config(digits_config, tmp_path / "model.yaml")
    r, out = _build(cfg)
    assert r.returncode == 3
    assert "error: accuracy gate failed, nothing was published" in r.stderr
    assert "fp16: logits: max_abs" in r.stderr and "> 1e-09" in r.stderr
    assert out["variants"][1]["status"] == "FAIL"
    assert not (tmp_path / "repo").exists()

    digits_config["targets"][1]["on_fail"] = "skip"
    write_config(digits_config, cfg)
    r, out = _build(cfg)
    assert r.returncode == 0
    assert "variant fp16 missed its gate and is left out" in r.stderr
    assert out["version"] == 1


def test_deploy_all_writes_one_model_per_variant(tmp_path, digits_config):
    digits_config["triton"]["deploy"] = "all"
    cfg = write_config(digits_config, tmp_path / "model.yaml")
    r, out = _build(cfg)
    assert r.returncode == 0, r.stderr
    for variant in ("fp32", "fp16"):
        d = tmp_path / "repo" / f"digits_{variant}"
        assert parse((d / "config.pbtxt").read_text()).name == f"digits_{variant}"
        assert json.loads((d / "1/build_manifest.json").read_text())["deployed_variant"] == variant
    fp16 = ort.InferenceSession(str(tmp_path / "repo/digits_fp16/1/model.onnx"), providers=["CPUExecutionProvider"])
    assert fp16.get_inputs()[0].type == "tensor(float)"


def test_plan_validate_schema_and_human_summary(tmp_path, digits_config):
    home = tmp_path / "home"
    env = {"MSCOMPILE_HOME": str(home)}
    cfg = write_config(digits_config, tmp_path / "model.yaml")
    r = run_cli("plan", str(cfg), "--json", env=env)
    assert r.returncode == 0
    planned = json.loads(r.stdout)
    assert {row["action"] for row in planned["steps"]} == {"run"}
    assert parse(planned["targets"]["fp32"]["config_pbtxt"]).max_batch_size == 64  # from a PyTorch probe
    r = run_cli("validate", str(cfg), env=env)
    assert r.returncode == 0, r.stderr
    assert "forward pass at range max: ok" in r.stdout and "nothing was written" in r.stdout
    assert not (tmp_path / "repo").exists() and not (home / "cache").exists()
    r = run_cli("build", str(cfg), env=env)
    assert r.returncode == 0
    assert r.stdout.splitlines()[0].split() == [
        "variant",
        "backend",
        "precision",
        "size",
        "gated",
        "on",
        "parity",
        "vs",
        "PyTorch",
        "speed",  # each backend's own figure: p50 ms per batch here, tokens/s for LLM backends
        "status",
        "cached",
    ]
    assert "published digits version 1 (new version)" in r.stdout
    assert "export_onnx" in r.stderr  # progress goes to stderr
    r = run_cli("plan", str(cfg), "--json", env=env)
    assert {row["action"] for row in json.loads(r.stdout)["steps"]} == {"cached"}
    r = run_cli("schema")
    assert json.loads(r.stdout)["title"] == "mscompile model.yaml"


def test_cli_start_up_does_not_import_heavy_libraries():
    code = "import sys, mscompile.cli; bad = {'torch', 'onnx', 'onnxruntime', 'tritonclient'} & set(sys.modules); assert not bad, bad"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
