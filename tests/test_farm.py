"""The build farm on a real Ray cluster (a head and a second node with a GPU slot and
`accelerator_type:H100`, both on loopback): two models built as Ray tasks publish what a
local build publishes; TensorRT tasks go only to the H100 node (and are SKIPPED there,
TensorRT being absent); a worker killed mid-task is retried and the build ends with one
complete version; a task that keeps dying fails the target with a clear error."""

import json
from pathlib import Path

import pytest
import yaml
from helpers import REPO, run_cli, write_config
from ray_harness import Cluster, ray_missing


@pytest.fixture(scope="module")
def cluster():
    why = ray_missing()
    if why:
        pytest.skip(why)
    c = Cluster().start()
    yield c
    c.stop()


def _configs(tmp_path: Path) -> list[Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    digits = yaml.safe_load((REPO / "examples/digits/model.yaml").read_text())
    digits["triton"]["repository"] = str(tmp_path / "repo")
    trt = yaml.safe_load((REPO / "examples/digits/model_tensorrt.yaml").read_text())
    trt["triton"]["repository"] = str(tmp_path / "repo")
    for t in trt["targets"]:
        if t["name"] == "trt_fp16":
            t["gpus"] = ["H100"]  # a node of this kind exists
        if t["name"] == "trt_int8":
            t["gpus"] = ["A100"]  # none does
    return [write_config(digits, tmp_path / "digits.yaml"), write_config(trt, tmp_path / "digits_trt.yaml")]


def _files(repo: Path) -> dict[str, dict]:
    out = {}
    for manifest in sorted(repo.glob("*/*/build_manifest.json")):
        m = json.loads(manifest.read_text())
        out[f"{m['model']}/{m['version']}"] = m["files"]
    return out


def test_farm_builds_two_models_as_a_local_build_does(tmp_path, cluster):
    configs = _configs(tmp_path / "local")
    for c in configs:  # the reference: local builds in their own state folder
        r = run_cli("build", str(c), "-q", env={"MSCOMPILE_HOME": str(tmp_path / "local-state")})
        assert r.returncode == 0, r.stderr
    local = _files(tmp_path / "local" / "repo")

    configs = _configs(tmp_path / "farm")
    env = {"MSCOMPILE_HOME": str(tmp_path / "farm-state"), **cluster.env}
    r = run_cli("build", *map(str, configs), "--ray", cluster.address, "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # nothing but JSON on stdout
    assert [m["model"] for m in out["models"]] == ["digits", "digits_trt"]
    farm = out["farm"]
    assert farm["tasks"] == 6 and farm["done"] == 4 and farm["skipped"] == 2 and farm["failed"] == 0
    tasks = {t["key"]: t for t in farm["results"]}
    h100 = tasks["digits_trt/trt_fp16@H100"]
    assert h100["status"] == "SKIPPED" and "accelerator_type:H100" in h100["node_resources"]
    assert "needs tensorrt" in h100["reason"]
    a100 = tasks["digits_trt/trt_int8@A100"]
    assert (
        a100["status"] == "SKIPPED"
        and a100["reason"] == "no node of kind A100 in the Ray cluster (resource accelerator_type:A100)"
    )
    for key in ("digits/fp32", "digits/fp16", "digits/int8", "digits_trt/fp32"):
        assert tasks[key]["status"] == "OK", tasks[key]
    # the two fp32 targets are the same steps on the same graph: the cache holds them once
    assert sum(bool(tasks[k]["ran"]) for k in ("digits/fp32", "digits_trt/fp32")) <= 2
    variants = {v["name"]: v for v in out["models"][1]["variants"]}
    assert variants["trt_fp16"]["status"] == "SKIPPED" and "farm node" in variants["trt_fp16"]["reason"]
    # the same versions with the same file digests as the local builds
    assert _files(tmp_path / "farm" / "repo") == local

    # a local rebuild on the farm's cache: every step from the cache, nothing new published
    r = run_cli("build", str(configs[0]), "--json", env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["passes_run"] == 0 and res["published"][0]["new_version"] is False
    # and the farm again: every task from the cache
    r = run_cli("build", *map(str, configs), "--ray", cluster.address, "--json", env=env)
    assert r.returncode == 0, r.stderr
    farm = json.loads(r.stdout)["farm"]
    assert farm["done"] == 4 and farm["cached"] == 4


def test_a_worker_killed_mid_task_is_retried_and_one_version_is_published(tmp_path, cluster):
    (digits, _) = _configs(tmp_path)
    env = {
        "MSCOMPILE_HOME": str(tmp_path / "state"),
        "MSCOMPILE_FARM_KILL_AT": "step:ran",  # SIGKILL the first worker whose pass returns
        **cluster.env,
    }
    r = run_cli("build", str(digits), "--ray", cluster.address, "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    farm = out["farm"]
    assert farm["retried"] == 1 and farm["failed"] == 0 and farm["done"] == 3
    assert [p["version"] for p in out["models"][0]["published"]] == [1]
    versions = sorted(p.name for p in (tmp_path / "repo" / "digits").iterdir() if p.is_dir())
    assert versions == ["1"]
    assert not list((tmp_path / "repo" / "digits").glob(".staging-*"))


def test_a_task_that_keeps_dying_fails_the_target_without_a_ray_traceback(tmp_path, cluster):
    (digits, _) = _configs(tmp_path)
    env = {
        "MSCOMPILE_HOME": str(tmp_path / "state"),
        "MSCOMPILE_FARM_KILL_AT": "step:ran",
        "MSCOMPILE_FARM_KILL_ALWAYS": "1",
        **cluster.env,
    }
    cfg = yaml.safe_load(digits.read_text())
    cfg["targets"] = [cfg["targets"][0]]
    r = run_cli("build", str(write_config(cfg, tmp_path / "one.yaml")), "--ray", cluster.address, env=env)
    assert r.returncode == 1, r.stderr
    assert "digits/fp32: the farm task died 4 times" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "repo" / "digits").exists()


def test_ray_address_that_does_not_answer_is_a_usage_error(tmp_path):
    if ray_missing():
        pytest.skip(ray_missing())
    (digits, _) = _configs(tmp_path)
    r = run_cli("build", str(digits), "--ray", "127.0.0.1:9", env={"MSCOMPILE_HOME": str(tmp_path / "s")})
    assert r.returncode == 2 and "--ray 127.0.0.1:9: cannot join the Ray cluster" in r.stderr, r.stderr
    assert not (tmp_path / "s" / "cache").exists()  # refused before the shared steps ran


def test_a_ray_address_that_accepts_and_never_answers_is_refused_before_any_work(tmp_path):
    """ray.init hung without limit on such a port (after a 5 s TCP probe passed)."""
    import socket

    if ray_missing():
        pytest.skip(ray_missing())
    (digits, _) = _configs(tmp_path)
    with socket.socket() as mute:  # the kernel completes the handshake; nobody ever answers
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        port = mute.getsockname()[1]
        r = run_cli("build", str(digits), "--ray", f"127.0.0.1:{port}", env={"MSCOMPILE_HOME": str(tmp_path / "s")})
    assert r.returncode == 2, r.stderr
    assert "does not answer as a Ray GCS (gRPC) within 10 s" in r.stderr
    assert not (tmp_path / "s" / "cache").exists()


def test_several_configs_are_all_checked_before_any_is_built(tmp_path):
    """`build good.yaml bad.yaml` published good.yaml before refusing bad.yaml."""
    good, bad = _configs(tmp_path)
    other = yaml.safe_load(bad.read_text())
    (tmp_path / "repo_file").write_text("not a folder")
    other["triton"]["repository"] = str(tmp_path / "repo_file")
    write_config(other, bad)
    r = run_cli("build", str(good), str(bad), env={"MSCOMPILE_HOME": str(tmp_path / "s")})
    assert r.returncode == 2, r.stderr
    assert "is a file, not a folder" in r.stderr
    assert not (tmp_path / "repo").exists() and not (tmp_path / "s" / "cache").exists()


def test_engines_for_several_gpu_kinds_are_one_model_with_cc_model_filenames(tmp_path):
    """The publishing side of a farm build that made engines on several GPU kinds (which
    needs TensorRT on those nodes: here the engine files are stand-ins, only the config and
    the version folder's layout are checked)."""
    from mscompile.artifacts import TrtEngine
    from mscompile.backends import get
    from mscompile.farm import merge
    from mscompile.tasks import load_config
    from mscompile.tritonrepo.config import parse, to_text

    (_, trt_yaml) = _configs(tmp_path)
    cfg = load_config(trt_yaml)
    t = next(x for x in cfg.targets if x.name == "trt_fp16")
    engines = {}
    for cc in ("8.0", "9.0"):
        d = tmp_path / f"engine{cc}"
        d.mkdir()
        (d / "model.plan").write_bytes(b"stand-in")
        engines[cc] = TrtEngine(d, cc * 32, {})
    io = {"inputs": [{"name": "images", "dtype": "float32", "dims": ["batch", 1, 8, 8]}],
          "outputs": [{"name": "logits", "dtype": "float32", "dims": ["batch", 10]}]}  # fmt: skip
    (served,) = get("tensorrt").serving(cfg, t, "digits_trt", io, engines["8.0"], engines=engines)
    mc = parse(to_text(served.config))  # Triton's schema
    assert dict(mc.cc_model_filenames) == {"8.0": "model.sm80.plan", "9.0": "model.sm90.plan"}
    assert sorted(served.files) == ["model.sm80.plan", "model.sm90.plan"]
    assert served.files["model.sm90.plan"] == engines["9.0"].path / "model.plan"
    # the farm's merge: every kind that passed goes on; a missing kind alone is SKIPPED with its reason
    a = {"model": "m", "target": "t", "kind": "A100", "status": "OK", "fingerprint": {"compute_capability": "8.0"}}
    b = dict(a, kind="H100", fingerprint={"compute_capability": "9.0"})
    c = {"model": "m", "target": "t", "kind": "L4", "status": "SKIPPED", "reason": "no node of kind L4"}
    assert [k["kind"] for k in merge([a, b, c])["kinds"]] == ["A100", "H100"]
    assert merge([c, dict(c, kind="T4", reason="no node of kind T4")])["reason"] == (
        "L4: no node of kind L4; T4: no node of kind T4"
    )
