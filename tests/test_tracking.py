"""MLflow-tracked builds: the embedded SQLite store, a real `mlflow server` on
loopback, unreachable servers, registration, and the background logger."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import cli_argv, run_cli, write_config
from mlflow.tracking import MlflowClient


@pytest.fixture(autouse=True)
def _tracking_on(monkeypatch):
    monkeypatch.delenv("MSCOMPILE_NO_MLFLOW", raising=False)


def _git_repo_with(tmp_path, cfg):
    """model.yaml committed in a git repository of its own (for the commit tag)."""
    repo = tmp_path / "proj"
    repo.mkdir()
    path = write_config(cfg, repo / "model.yaml")
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for args in (["init", "-q"], ["add", "model.yaml"], ["commit", "-qm", "m"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    return path, commit


def _runs(client, experiment, kind="build"):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mscompile.kind` = '{kind}'", order_by=["attributes.start_time ASC"]
    )


def _check_two_builds(client, experiment, commit):
    builds = _runs(client, experiment)
    assert len(builds) == 2
    first, second = builds
    for run in builds:
        assert run.info.status == "FINISHED"
        assert run.data.params["name"] == "digits" and run.data.params["targets.2.precision"] == "int8"
        assert run.data.metrics["fp32/max_abs"] < 1e-4 and "int8/accuracy" in run.data.metrics
        assert run.data.tags["git.commit"] == commit and run.data.tags["git.dirty"] == "false"
        assert run.data.tags["triton.version"] == "1" and run.data.tags["mscompile.model"] == "digits"
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"build_manifest.json", "summary.json", "triton"} <= names
        assert "triton/digits/config.pbtxt" in [a.path for a in client.list_artifacts(run.info.run_id, "triton/digits")]
    assert first.data.metrics["passes_cached"] == 0 and second.data.metrics["passes_cached"] == 11
    assert (
        second.data.metrics["pass/export_onnx/cache_hit"] == 1.0
        and first.data.metrics["pass/export_onnx/cache_hit"] == 0.0
    )
    assert second.data.tags["triton.digits.new_version"] == "false"
    children = _runs(client, experiment, kind="variant")
    assert len(children) == 6
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {first.info.run_id, second.info.run_id}
    assert {c.data.tags["mscompile.variant"] for c in children} == {"fp32", "fp16", "int8"}


def test_default_store_records_each_build(tmp_path, digits_config):
    cfg, commit = _git_repo_with(tmp_path, digits_config)
    home = tmp_path / "home"
    env = {"MSCOMPILE_HOME": str(home), "CI": "true", "GITHUB_SHA": "abc123"}
    for _ in range(2):
        r = run_cli("build", str(cfg), "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["mlflow"]["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    _check_two_builds(client, "mscompile/digits", commit)
    assert _runs(client, "mscompile/digits")[0].data.tags["ci.GITHUB_SHA"] == "abc123"
    assert (home / "mlartifacts").is_dir()  # explicit artifact location, not ./mlruns
    r = run_cli("runs", str(cfg), env=env)
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 2 and "version 1" in r.stdout


def test_background_logging_is_flushed_by_runs(tmp_path, digits_config):
    home = tmp_path / "home"
    env = {"MSCOMPILE_HOME": str(home), "CI": ""}
    cfg = write_config(digits_config, tmp_path / "model.yaml")
    r = run_cli("build", str(cfg), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mlflow"]["pending"]
    deadline = time.time() + 120
    while list((home / "mlflow-spool").glob("*.json")) and time.time() < deadline:
        time.sleep(0.5)
    r = run_cli("runs", str(cfg), "--json", env=env)
    rows = json.loads(r.stdout)
    assert len(rows) == 1 and rows[0]["status"] == "FINISHED" and rows[0]["version"] == "1"
    assert not list((home / "mlflow-spool").glob("*.json"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{d / 'db.sqlite'}",
            "--artifacts-destination",
            str(d / "artifacts"),
        ],
        stdout=open(d / "server.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail(f"mlflow server did not start: {(d / 'server.log').read_text()[-2000:]}")
    yield uri
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def test_http_tracking_server(tmp_path, digits_config, mlflow_server):
    digits_config["mlflow"] = {"experiment": "ci-digits", "register": True, "registered_model_name": "digits-triton"}
    cfg, commit = _git_repo_with(tmp_path, digits_config)
    env = {"MSCOMPILE_HOME": str(tmp_path / "home")}
    for _ in range(2):
        r = run_cli("build", str(cfg), "--tracking-uri", mlflow_server, "--mlflow-sync", env=env)
        assert r.returncode == 0, r.stderr
        assert f"({mlflow_server})" in r.stdout and "View run" not in r.stdout
    client = MlflowClient(tracking_uri=mlflow_server)
    _check_two_builds(client, "ci-digits", commit)
    versions = client.search_model_versions("name = 'digits-triton'")
    assert len(versions) == 2
    v = versions[0]
    assert (
        v.source.endswith("/triton/digits") and v.tags["triton.model"] == "digits" and v.tags["triton.version"] == "1"
    )
    assert v.tags["triton.path"] == str((tmp_path / "repo/digits/1").resolve())
    files = {a.path for a in client.list_artifacts(v.run_id, "triton/digits/1")}
    assert "triton/digits/1/model.onnx" in files


def test_credentials_in_the_tracking_uri_are_used_and_never_recorded_or_printed(tmp_path, mlflow_server):
    """A tracking URI with user:password@ was copied into every build_manifest.json (0644)
    and printed; the reachability check must still work with it."""
    from helpers import make_tiny_project

    secret = "s3cret-pw"
    uri = mlflow_server.replace("http://", f"http://alice:{secret}@")
    tiny = make_tiny_project(tmp_path)
    tiny["targets"] = tiny["targets"][:1]
    tiny["mlflow"] = {"experiment": "ci-creds", "tracking_uri": uri}
    cfg = write_config(tiny, tmp_path / "model.yaml")
    home = tmp_path / "home"
    r = run_cli("build", str(cfg), "--mlflow-sync", "--json", cwd=tmp_path, env={"MSCOMPILE_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    assert secret not in r.stdout + r.stderr
    assert json.loads(r.stdout)["mlflow"]["tracking_uri"] == mlflow_server.replace("http://", "http://***@")
    manifest = (tmp_path / "repo/tiny/1/build_manifest.json").read_text()
    assert secret not in manifest and "***@" in manifest
    client = MlflowClient(tracking_uri=mlflow_server)
    assert len(_runs(client, "ci-creds")) == 1  # the server got the run
    port = _free_port()  # an unreachable one: the error names it without the password
    r = run_cli(
        "build",
        str(cfg),
        "--tracking-uri",
        f"http://alice:{secret}@127.0.0.1:{port}",
        env={"MSCOMPILE_HOME": str(home)},
    )
    assert r.returncode == 2 and secret not in r.stderr
    assert f"MLflow tracking server http://***@127.0.0.1:{port} is unreachable" in r.stderr


def test_a_spooled_record_is_readable_by_its_user_only(tmp_path):
    from mscompile.tracking import spool_record

    path = spool_record({"id": "r1", "settings": {"uri": "http://u:p@h:1"}}, tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600 and json.loads(path.read_text())["id"] == "r1"


def test_urls_are_redacted_of_credentials_and_tokens():
    from mscompile.sections import redact_url

    assert (
        redact_url("https://u:p@mlflow.example:5000/x?token=abc&a=1")
        == "https://***@mlflow.example:5000/x?token=***&a=***"
    )
    assert redact_url("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"
    assert redact_url("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_unreachable_server_exits_2_unless_optional(tmp_path, digits_config):
    port = _free_port()  # nothing listens there
    home = tmp_path / "home"
    cfg = write_config(digits_config, tmp_path / "model.yaml")
    r = run_cli("build", str(cfg), "--tracking-uri", f"http://127.0.0.1:{port}", env={"MSCOMPILE_HOME": str(home)})
    assert r.returncode == 2
    assert f"error: MLflow tracking server http://127.0.0.1:{port} is unreachable" in r.stderr
    assert not (tmp_path / "repo").exists() and not (home / "cache").exists()
    r = run_cli(
        "build",
        str(cfg),
        "--tracking-uri",
        f"http://127.0.0.1:{port}",
        "--mlflow-optional",
        env={"MSCOMPILE_HOME": str(home)},
    )
    assert r.returncode == 0, r.stderr
    assert "warning: MLflow tracking server" in r.stderr and "building without tracking" in r.stderr
    assert (tmp_path / "repo/digits/1/model.onnx").is_file()


def test_no_mlflow_writes_no_store(tmp_path, digits_config):
    home = tmp_path / "home"
    cfg = write_config(digits_config, tmp_path / "model.yaml")
    r = run_cli("build", str(cfg), "--no-mlflow", env={"MSCOMPILE_HOME": str(home)})
    assert r.returncode == 0 and "mlflow:" not in r.stdout
    assert not (home / "mlflow.db").exists() and not (home / "mlflow-spool").exists()


def _tiny_builds(tmp_path, names):
    from helpers import make_tiny_project

    out = []
    for n in names:
        cfg = make_tiny_project(tmp_path / n)
        cfg["name"] = n
        out.append(write_config(cfg, tmp_path / n / "model.yaml"))
    return out


def _build_runs(uri, experiment):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else _runs(client, experiment)


def test_two_builds_on_a_fresh_sqlite_store_are_both_recorded(tmp_path):
    home = tmp_path / "home"
    paths = _tiny_builds(tmp_path, ["one", "two"])
    env = {**os.environ, "MSCOMPILE_HOME": str(home), "CI": "true"}
    procs = [
        subprocess.Popen(
            cli_argv("build", str(p), "-q"),
            cwd=p.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in paths
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "could not record" not in err, err
    uri = f"sqlite:///{home / 'mlflow.db'}"
    assert len(_build_runs(uri, "mscompile/one")) == 1 and len(_build_runs(uri, "mscompile/two")) == 1
    assert not list((home / "mlflow-spool").glob("*.json"))


def test_a_logger_killed_holding_its_lock_leaves_a_record_that_is_logged_later(tmp_path):
    home = tmp_path / "home"
    (path,) = _tiny_builds(tmp_path, ["tiny"])
    env = {"MSCOMPILE_HOME": str(home), "MSCOMPILE_KILL_AT": "mlflow:log"}
    r = run_cli("build", str(path), "--mlflow-sync", cwd=path.parent, env=env)
    assert r.returncode == -9
    assert len(list((home / "mlflow-spool").glob("*.json"))) == 1
    r = run_cli("runs", str(path), "--json", cwd=path.parent, env={"MSCOMPILE_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == 1 and not list((home / "mlflow-spool").glob("*.json"))


def test_a_later_background_logger_sends_what_an_earlier_build_left(tmp_path):
    home = tmp_path / "home"
    (path,) = _tiny_builds(tmp_path, ["tiny"])
    killed = run_cli(
        "build",
        str(path),
        "--mlflow-sync",
        cwd=path.parent,
        env={"MSCOMPILE_HOME": str(home), "MSCOMPILE_KILL_AT": "mlflow:log"},
    )
    assert killed.returncode == -9
    r = run_cli("build", str(path), "--json", cwd=path.parent, env={"MSCOMPILE_HOME": str(home), "CI": ""})
    assert r.returncode == 0 and json.loads(r.stdout)["mlflow"]["pending"]
    deadline = time.time() + 120  # the detached logger's work: bounded wait for it to finish
    while list((home / "mlflow-spool").glob("*.json")) and time.time() < deadline:
        time.sleep(0.5)
    assert len(_build_runs(f"sqlite:///{home / 'mlflow.db'}", "mscompile/tiny")) == 2


def test_an_explicit_sqlite_uri_keeps_artifacts_in_the_state_folder(tmp_path):
    home = tmp_path / "home"
    (path,) = _tiny_builds(tmp_path, ["tiny"])
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    r = run_cli(
        "build", str(path), "--tracking-uri", uri, "--mlflow-sync", cwd=path.parent, env={"MSCOMPILE_HOME": str(home)}
    )
    assert r.returncode == 0, r.stderr
    assert not (path.parent / "mlruns").exists() and (home / "mlartifacts").is_dir()
    assert len(_build_runs(uri, "mscompile/tiny")) == 1


def test_a_serving_record_is_logged_with_steps_and_an_unreachable_store_is_a_warning(tmp_path, digits_config):
    """tune's record as an MLflow run (each trial at its step, the record file as an
    artifact); a version without a published build and a store that cannot be reached
    are warnings in `recorded`, never a failed check (docs/serving-triton.md)."""
    from mscompile.state import State
    from mscompile.tasks import parse_config
    from mscompile.tasks.tensor import record_serving

    cfg = parse_config(digits_config)
    state = State(root=tmp_path / "home", cache=tmp_path / "home" / "cache")
    tune = {
        "model": "digits",
        "version": 1,
        "variant": "fp32",
        "objective": {"maximize": "throughput", "slo": {"p99_ms": 5.0}},
        "published": {"throughput_under_slo": 900.0},
        "trials": [
            {"trial": 1, "throughput_under_slo": 1500.0},
            {"trial": 2, "throughput_under_slo": 700.0},
        ],
        "best": {"throughput_under_slo": 1500.0},
        "written": None,
    }
    said: list[str] = []
    record_serving(cfg, state, "tune", tune, said.append, mlflow=True)
    rec = tune["recorded"]
    assert any(w.startswith("report not written: ") and "no published version" in w for w in rec["warnings"])
    client = MlflowClient(tracking_uri=rec["mlflow"]["tracking_uri"])
    hist = client.get_metric_history(rec["mlflow"]["run_id"], "trial.throughput_under_slo")
    assert sorted((m.step, m.value) for m in hist) == [(1, 1500.0), (2, 700.0)]
    run = client.get_run(rec["mlflow"]["run_id"])
    assert run.data.tags["mscompile.kind"] == "tune" and run.data.metrics["written"] == 0.0
    arts = [a.path for a in client.list_artifacts(rec["mlflow"]["run_id"], "serving")]
    assert arts == [f"serving/{os.path.basename(rec['file'])}"]

    unreachable = parse_config(dict(digits_config, mlflow={"tracking_uri": "http://127.0.0.1:9"}))
    out = dict(tune)
    record_serving(unreachable, state, "tune", out, said.append, mlflow=True)
    assert "mlflow" not in out["recorded"] and os.path.isfile(out["recorded"]["file"])
    assert any(w.startswith("not recorded in MLflow (http://127.0.0.1:9)") for w in out["recorded"]["warnings"])
    assert any(s.startswith("warning: not recorded in MLflow") for s in said)
