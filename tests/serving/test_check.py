"""The skeleton every serve-check shares (Triton, vLLM, Ray Serve): answers in
request order whatever the threads do, a failed request named by its server, one
row shape, and a verdict that carries the summary."""

import threading

import pytest
from mscompile.errors import ConfigError, ServedWrongError, ServeLoadError
from mscompile.serving.check import deployed_target, replay, verdict


def test_answers_come_back_in_request_order_from_many_threads():
    first_done = threading.Event()

    def send(i: int) -> int:
        if i == 0:
            first_done.wait(5)  # request 0 answers after the others have begun
        else:
            first_done.set()
        return i * i

    done = replay(send, 40, 8, lambda exc: ServeLoadError(str(exc)))
    assert done.answers == [i * i for i in range(40)] and len(done.latencies) == 40
    row = done.row(8, metrics={"cosine": 1.0}, failures=[])
    assert row["requests"] == 40 and row["passed"] and set(row["latency_ms"]) == {"p50", "p90", "p99"}
    assert "not a load test" in row["latency_measured_by"]


def test_a_failed_request_is_the_servers_error():
    def send(i: int) -> int:
        if i == 3:
            raise ConnectionResetError("peer closed")
        return i

    with pytest.raises(ServeLoadError, match="the fake server dropped a request: peer closed"):
        replay(send, 10, 4, lambda exc: ServeLoadError(f"the fake server dropped a request: {exc}"))


def test_the_verdict_carries_the_summary():
    summary = {"model": "m", "version": 3}
    assert verdict(dict(summary), [], "m v3")["passed"]
    with pytest.raises(ServedWrongError, match="m v3: http: cosine 0.5 < 0.99") as e:
        verdict(dict(summary), ["http: cosine 0.5 < 0.99"], "m v3")
    assert e.value.summary["passed"] is False and e.value.summary["model"] == "m" and e.value.exit_code == 3


def test_a_version_built_from_a_target_model_yaml_no_longer_has_is_a_usage_error():
    class Cfg:
        targets = [type("T", (), {"name": "fp32"})()]

    assert deployed_target(Cfg, "m", 2, "fp32").name == "fp32"
    with pytest.raises(ConfigError, match="m version 2 was built from target 'int8', which model.yaml no longer has"):
        deployed_target(Cfg, "m", 2, "int8")
