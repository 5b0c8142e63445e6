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
    # the terminal labels them the same way
    from mscompile.handoff import summary_lines

    (line,) = [x for x in summary_lines({"model": "m", "version": 1, "protocols": {"grpc": row}}) if "p50" in x]
    assert "client-side p50" in line and "not a capacity measurement" in line


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


class _Client:
    """A client of the skeleton, as Triton's, vLLM's and Ray Serve's are."""

    def __init__(self, protocol, prefix, wrong=()):
        self.protocol, self.prefix_failures, self.wrong, self.calls = protocol, prefix, set(wrong), []

    def send(self, i):
        return -1.0 if i in self.wrong else float(i)

    def failed(self, exc):
        return ServeLoadError(str(exc))

    def begin(self):
        self.calls.append("begin")

    def end(self, done):
        self.calls.append("end")
        return {"server_stats": {"requests": len(done.answers)}}

    def answers(self, answers):
        import numpy as np

        return {"y": np.asarray(answers, dtype=np.float32)[:, None]}


def test_every_client_is_replayed_and_judged_in_one_row_shape():
    import numpy as np
    from mscompile.sections import IOSpec, Tolerance
    from mscompile.serving.check import check_clients, tensor_judge

    io = IOSpec.model_validate(
        {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 1]}], "outputs": [{"name": "y"}]}
    )
    ref = {"y": np.arange(6, dtype=np.float32)[:, None]}
    judge = tensor_judge(ref, None, io, Tolerance(max_abs=0.5))
    good, bad = _Client("grpc", True), _Client("http", True, wrong={4})
    said = []
    rows, failures = check_clients([good, bad], 6, 3, judge, said.append, "m")
    assert good.calls == ["begin", "end"] and said == [
        "m grpc: 6 requests, concurrency 3",
        "m http: 6 requests, concurrency 3",
    ]
    assert rows["grpc"]["passed"] and rows["grpc"]["server_stats"] == {"requests": 6}
    assert not rows["http"]["passed"] and rows["http"]["metrics"]["max_abs"] == 5.0
    assert failures == ["http: y: max_abs 5 > 0.5"]
    _, unprefixed = check_clients([_Client("http", False, wrong={4})], 6, 2, judge, said.append, "m")
    assert unprefixed == ["y: max_abs 5 > 0.5"]


def test_the_triton_check_waits_120_s_for_a_load_unless_told(tmp_path):
    from mscompile.tasks.tensor import check_options

    assert check_options({"url": "h:1"}, None, print).load_timeout == 120.0
    assert check_options({"url": "h:1", "load_timeout": None}, None, print).load_timeout == 120.0
    assert check_options({"url": "h:1", "load_timeout": 7.0}, None, print).load_timeout == 7.0
