"""The commands in process (click's runner): exit codes, what goes to stdout and
stderr, and options that mean the same for every task and server."""

import json

import pytest
from click.testing import CliRunner
from helpers import REPO
from mscompile.cli import main
from mscompile.errors import AccuracyGateError, ConfigError, RepositoryError
from mscompile.jobs import ManyOutcome, Outcome


def _run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_serve_check_rayserve_of_a_language_model_is_a_usage_error():
    """It was `internal error: AttributeError: 'LlmModelConfig' object has no attribute
    'rayserve'` (exit 1): the CLI called the Ray Serve check without asking the task."""
    r = _run("serve-check", "--rayserve", str(REPO / "examples/tinyllm/model.yaml"))
    assert r.exit_code == 2, r.output
    assert "Ray Serve apps are written for tensor models" in r.output


def test_serve_check_of_several_configs_at_once_is_refused_before_any_work(tmp_path):
    cfg = str(REPO / "examples/digits/model.yaml")
    r = _run("build", cfg, cfg, "--serve-check", "--cache-dir", str(tmp_path / "cache"))
    assert r.exit_code == 2
    assert "--serve-check: check one model at a time" in r.output
    assert not (tmp_path / "cache").exists()


def test_deploy_needs_the_address_of_a_running_server():
    r = _run("deploy", str(REPO / "examples/digits/model.yaml"))
    assert r.exit_code == 2 and "give --url and/or --grpc-url" in r.output


def test_a_missing_config_is_exit_2_naming_it(tmp_path):
    for cmd in ("validate", "plan", "build", "serve-check", "runs", "report"):
        r = _run(cmd, str(tmp_path / "nope.yaml"))
        assert r.exit_code == 2, (cmd, r.output)
        assert "nope.yaml: model config not found" in r.output


def test_schema_json_covers_every_task():
    r = _run("schema")
    assert r.exit_code == 0
    assert len(json.loads(r.output)["oneOf"]) == 2


@pytest.mark.parametrize(
    ("codes", "expected"),
    [((0, 0), 0), ((3, 0), 3), ((3, 1), 1), ((1, 2, 3), 2), ((0, 3, 0), 3)],
)
def test_several_models_exit_with_the_worst_code_in_the_order_2_1_3(codes, expected):
    errors = {1: RepositoryError, 2: ConfigError, 3: AccuracyGateError}
    many = ManyOutcome()
    for i, c in enumerate(codes):
        many.outcomes.append(Outcome(type("Cfg", (), {"name": f"m{i}"})(), REPO, error=errors[c]("x") if c else None))
    assert [o.exit_code for o in many.outcomes] == list(codes)
    assert many.exit_code == expected and many.to_json()["exit_code"] == expected


def test_json_says_why_a_build_failed_on_stdout(tmp_path):
    """`--json` printed nothing on exit 1 or 2: the error was only on stderr."""
    from helpers import make_tiny_project, run_cli, write_config

    cfg = make_tiny_project(tmp_path)
    cfg["targets"][0]["tolerance"] = {"max_abs": 1e-4, "cosine_min": 2.0}  # a value no metric can meet: exit 2
    r = run_cli("build", str(write_config(cfg, tmp_path / "m.yaml")), "--json", "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 2
    out = json.loads(r.stdout)
    assert out["exit_code"] == 2 and "cosine_min" in out["error"]
    r = run_cli("build", str(tmp_path / "nope.yaml"), "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["error"].endswith(
        "model config not found; pass the path of your model.yaml"
    )
