"""serve-check --perf: capacity measured with NVIDIA's perf_analyzer itself (provisioned
from the registries by perf_harness.py) against a real Triton serving the published
digits model, on requests made from the validation samples: a concurrency sweep and a
request-rate point per protocol, with Triton's statistics around each point."""

import json
from pathlib import Path

import pytest
from helpers import run_cli, write_config
from triton_harness import server_args


@pytest.fixture
def digits_fp32(tmp_path, digits_config):
    cfg = digits_config
    cfg["targets"] = [cfg["targets"][0]]
    path = write_config(cfg, tmp_path / "model.yaml")
    r = run_cli("build", str(path), "-q")
    assert r.returncode == 0, r.stderr
    return path, Path(cfg["triton"]["repository"])


def test_perf_sweeps_concurrency_and_request_rate_with_perf_analyzer(tri, pa, digits_fp32):
    path, _ = digits_fp32
    r = run_cli(
        "serve-check", str(path), *server_args(tri), "--json", "--perf", "--perf-analyzer", pa,
        "--perf-concurrency", "1,4", "--perf-request-rate", "200", "--perf-window", "1000",
        "--perf-stability", "100",  # what is checked is the sweep's record, not how steady a shared CI host is
        env={"MSCOMPILE_NO_MLFLOW": ""},  # recorded in MLflow (the suite turns it off elsewhere)
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["passed"]  # the answers were right before any capacity was measured
    cap = out["capacity"]
    assert cap["tool"] == "perf_analyzer" and "16 validation samples" in cap["settings"]["requests"]
    for proto in ("grpc", "http"):
        rows = {(p["mode"], p["value"]): p for p in cap[proto]}
        assert set(rows) == {("concurrency", 1.0), ("concurrency", 4.0), ("request_rate", 200.0)}
        c1, c4, rate = rows[("concurrency", 1.0)], rows[("concurrency", 4.0)], rows[("request_rate", 200.0)]
        for p in (c1, c4, rate):
            assert p["stable"], p
            assert 0 < p["latency_ms"]["p50"] <= p["latency_ms"]["p90"] <= p["latency_ms"]["p99"]
            assert p["triton"]["inference_count"] > 0
        # one request in flight: Triton never batches; four: it does
        assert c1["triton"]["mean_batch"] == 1.0 and c4["triton"]["mean_batch"] > 1.0
        assert rate["throughput"] == pytest.approx(200, rel=0.1)
        assert c4["throughput"] > c1["throughput"]
    # kept for the version's report and as an MLflow run whose steps are the concurrency
    rec = out["recorded"]
    page = Path(rec["report"]).read_text()
    assert "Capacity (perf_analyzer" in page and "p99 latency (ms) vs throughput (infer/s)" in page
    assert json.loads(Path(rec["file"]).read_text())["capacity"] == cap
    assert rec["mlflow"]["run_id"] and not rec["warnings"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=rec["mlflow"]["tracking_uri"])
    hist = client.get_metric_history(rec["mlflow"]["run_id"], "grpc.concurrency.throughput")
    assert sorted(m.step for m in hist) == [1, 4]
    run = client.get_run(rec["mlflow"]["run_id"])
    assert run.data.tags["mscompile.kind"] == "serve-check-capacity" and run.data.tags["triton.version"] == "1"
    # `mscompile report` renders it too
    r = run_cli("report", str(path))
    assert r.returncode == 0 and "Capacity (perf_analyzer" in Path(r.stdout.split(": ")[-1].strip()).read_text()


def test_perf_without_a_working_perf_analyzer_exits_2_before_loading(tmp_path, digits_fp32):
    path, _ = digits_fp32
    r = run_cli("serve-check", str(path), "--url", "127.0.0.1:9", "--perf", "--perf-analyzer", str(tmp_path / "nope"))
    assert r.returncode == 2, r.stderr
    assert "is not an executable file" in r.stderr and "pip install perf-analyzer" in r.stderr
    r = run_cli("serve-check", str(path), "--url", "127.0.0.1:9", "--perf", "--perf-concurrency", "1,x")
    assert r.returncode == 2 and "--perf-concurrency: '1,x' is not a comma-separated list" in r.stderr, r.stderr
