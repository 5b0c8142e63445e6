"""Profiling, selection (fastest / smallest / all), derived batching, CPU serving
options and the HTML report."""

import json
from html.parser import HTMLParser

import pytest
import yaml
from helpers import REPO, run_cli, write_config
from mscompile.publish import model_config
from mscompile.tasks import parse_config
from mscompile.tritonrepo.config import parse, preferred_batch, to_text


def test_preferred_batch_is_where_throughput_stops_growing():
    rows = [
        {"batch": 1, "throughput": 100},
        {"batch": 4, "throughput": 350},
        {"batch": 8, "throughput": 370},
        {"batch": 16, "throughput": 900},
    ]
    assert preferred_batch(rows) == 4  # 8 adds under 10%: stop there
    assert preferred_batch([{"batch": 1, "throughput": 10}, {"batch": 8, "throughput": 60}]) == 8


@pytest.fixture
def digits(tmp_path):
    cfg = yaml.safe_load((REPO / "examples/digits/model.yaml").read_text())
    cfg["triton"]["repository"] = str(tmp_path / "repo")
    cfg["profile"] = {"batch_sizes": [1, 4, 16], "window": 5, "max_windows": 3}
    return cfg


def _build(cfg, tmp_path, *extra):
    r = run_cli("build", str(write_config(cfg, tmp_path / "model.yaml")), "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r


def test_fastest_deploys_the_variant_the_profile_measured_fastest(tmp_path, digits):
    digits["triton"]["deploy"] = "fastest"
    digits["triton"]["dynamic_batching"] = {"max_queue_delay_microseconds": 100}  # preferred sizes derived
    out, r = _build(digits, tmp_path)
    variants = {v["name"]: v for v in out["variants"]}
    for v in variants.values():
        rows = v["profile"]["batches"]
        assert [row["batch"] for row in rows] == [1, 4, 16]
        for row in rows:
            assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] and row["windows"] >= 2
    # selection batch: the range's opt (8) -> the largest profiled batch below it (4)
    p50 = {n: next(row["p50_ms"] for row in v["profile"]["batches"] if row["batch"] == 4) for n, v in variants.items()}
    fastest = min(p50, key=p50.get)
    manifest = json.loads((tmp_path / "repo/digits/1/build_manifest.json").read_text())
    assert manifest["deployed_variant"] == fastest
    assert out["selection"].startswith(f"fastest passing variant is {fastest} (")
    mc = parse((tmp_path / "repo/digits/config.pbtxt").read_text())
    expected = preferred_batch(variants[fastest]["profile"]["batches"])
    assert list(mc.dynamic_batching.preferred_batch_size) == [expected]


def test_smallest_and_all(tmp_path, digits):
    digits["triton"]["deploy"] = "smallest"
    out, _ = _build(digits, tmp_path)
    sizes = {v["name"]: v["size_bytes"] for v in out["variants"]}
    manifest = json.loads((tmp_path / "repo/digits/1/build_manifest.json").read_text())
    assert manifest["deployed_variant"] == min(sizes, key=sizes.get) == "int8"
    digits["triton"]["deploy"] = "all"
    _build(digits, tmp_path)
    for name in ("fp32", "fp16", "int8"):
        mc = parse((tmp_path / f"repo/digits_{name}/config.pbtxt").read_text())
        assert mc.name == f"digits_{name}" and (tmp_path / f"repo/digits_{name}/1/model.onnx").is_file()


def test_openvino_accelerator_and_threads_in_config(digits):
    digits["targets"][0]["cpu"] = {"accelerator": "openvino", "intra_op_threads": 2}
    cfg = parse_config(digits)
    io = {
        "inputs": [{"name": "images", "dtype": "float32", "dims": ["batch", 1, 8, 8]}],
        "outputs": [{"name": "logits", "dtype": "float32", "dims": ["batch", 10]}],
    }
    mc = parse(to_text(model_config(cfg, "digits", io, target=cfg.targets[0])))
    assert [a.name for a in mc.optimization.execution_accelerators.cpu_execution_accelerator] == ["openvino"]
    assert mc.parameters["intra_op_thread_count"].string_value == "2"
    assert mc.instance_group[0].kind == mc.instance_group[0].KIND_CPU


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_has_the_plots_and_tables(tmp_path, digits):
    out, r = _build(digits, tmp_path)
    page = out["report"]
    assert page and page.endswith(".html")
    p = _Collect()
    p.feed(open(page, encoding="utf-8").read())
    text = " ".join(p.text)
    assert p.tags.count("svg") >= 2 + 2 * 3  # two line charts, two histograms per variant
    assert p.tags.count("path") >= 6  # one latency and one throughput line per variant
    for needle in (
        "Variants",
        "Latency and throughput vs batch size",
        "Parity error distributions",
        "Pass timings",
        "export_onnx",
        "int8",
    ):
        assert needle in text
    assert "http" not in open(page, encoding="utf-8").read().replace("http://www.w3.org/2000/svg", "")  # self-contained
    r2 = run_cli("report", str(tmp_path / "model.yaml"), "--out", str(tmp_path / "r.html"))
    assert r2.returncode == 0 and (tmp_path / "r.html").stat().st_size > 1000


def test_openvino_target_is_profiled_with_openvino(tmp_path, digits):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'mscompile[openvino]')")
    digits["targets"] = [digits["targets"][0], {"name": "fp32_ov", "cpu": {"accelerator": "openvino"}}]
    digits["profile"]["batch_sizes"] = [1, 8]
    out, _ = _build(digits, tmp_path)
    runtimes = {v["name"]: v["profile"]["runtime"] for v in out["variants"]}
    assert runtimes == {"fp32": "onnxruntime", "fp32_ov": "openvino"}
    assert all(row["p50_ms"] > 0 for v in out["variants"] for row in v["profile"]["batches"])


def test_report_names_the_models_of_deploy_all(tmp_path, digits):
    digits["triton"]["deploy"] = "all"
    _build(digits, tmp_path)
    r = run_cli("report", str(tmp_path / "model.yaml"))
    assert r.returncode == 2
    assert "pass --model with one of ['digits_fp16', 'digits_fp32', 'digits_int8']" in r.stderr
    r = run_cli("report", str(tmp_path / "model.yaml"), "--model", "digits_int8", "--out", str(tmp_path / "r.html"))
    assert r.returncode == 0 and "int8" in (tmp_path / "r.html").read_text()
