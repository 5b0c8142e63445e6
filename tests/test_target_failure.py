"""A target whose pass fails is that target's failure, not the build's: the other
targets still run and are gated; under on_fail: skip the build publishes what passed,
under on_fail: error it exits 1 after every target ran, the summary listing them all.
The failure is injected at the pass's named point (MSCOMPILE_RAISE_AT), inside its run."""

import json

from helpers import make_tiny_project, run_cli, write_config

FAULT = {"MSCOMPILE_RAISE_AT": "pass:fp16/convert_fp16"}


def test_failed_pass_of_one_target_leaves_the_others_published_under_on_fail_skip(tmp_path):
    d = make_tiny_project(tmp_path)
    d["targets"][1]["on_fail"] = "skip"
    path = write_config(d, tmp_path / "model.yaml")
    r = run_cli("build", str(path), "--json", cwd=tmp_path, env=FAULT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    v = {x["name"]: x for x in out["variants"]}
    assert v["fp32"]["status"] == "OK" and v["fp16"]["status"] == "FAIL"
    assert "pass 'fp16/convert_fp16' failed: InjectedFault" in v["fp16"]["reason"]
    assert "variant fp16 failed while building and is left out (on_fail: skip)" in r.stderr
    assert out["version"] == 1 and (tmp_path / "repo/tiny/1/model.onnx").is_file()


def test_failed_pass_under_on_fail_error_exits_1_after_every_target_ran(tmp_path):
    d = make_tiny_project(tmp_path)
    d["targets"] = [d["targets"][1], d["targets"][0]]  # the failing target first
    path = write_config(d, tmp_path / "model.yaml")
    r = run_cli("build", str(path), "--json", cwd=tmp_path, env=FAULT)
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)  # --json prints the summary on failure too
    v = {x["name"]: x for x in out["variants"]}
    assert v["fp32"]["status"] == "OK" and v["fp32"]["metrics"]["max_abs"] <= 1e-4  # ran after the failure
    assert v["fp16"]["status"] == "FAIL" and out["exit_code"] == 1
    assert "target fp16: pass 'fp16/convert_fp16' failed" in r.stderr and "on_fail: skip" in r.stderr
    assert not (tmp_path / "repo").exists()
