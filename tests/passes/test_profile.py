"""Profiling, selection (fastest / smallest / all), derived batching, CPU serving
options and the HTML report."""

import json
from html.parser import HTMLParser

import pytest
import yaml
from helpers import REPO, run_cli, write_config
from mscompile.publish import model_config
from mscompile.tasks import parse_config
from mscompile.tritonrepo.config import parse, throughput_knee, to_text


def test_throughput_knee_is_where_throughput_stops_growing():
    rows = [
        {"batch": 1, "throughput": 100},
        {"batch": 4, "throughput": 350},
        {"batch": 8, "throughput": 370},
        {"batch": 16, "throughput": 900},
    ]
    assert throughput_knee(rows) == 4  # 8 adds under 10%: stop there
    assert throughput_knee([{"batch": 1, "throughput": 10}, {"batch": 8, "throughput": 60}]) == 8


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
    digits["triton"]["dynamic_batching"] = {"max_queue_delay_microseconds": 100}
    out, r = _build(digits, tmp_path)
    variants = {v["name"]: v for v in out["variants"]}
    for v in variants.values():
        rows = v["profile"]["batches"]
        assert [row["batch"] for row in rows] == [1, 4, 16]
        for row in rows:
            assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] and row["windows"] >= 2
    # selection batch: the range's opt (8) -> the largest profiled batch below it (4)
    rows4 = {n: next(row for row in v["profile"]["batches"] if row["batch"] == 4) for n, v in variants.items()}
    best = min(rows4, key=lambda n: rows4[n]["p50_ms"])
    # the first in model.yaml order within the noise of the fastest is deployed (a tie goes to the order)
    fastest = next(
        n
        for n in ("fp32", "fp16", "int8")
        if (rows4[n]["p50_ms"] - rows4[best]["p50_ms"]) / rows4[best]["p50_ms"]
        <= max(0.05, rows4[n]["noise"], rows4[best]["noise"])
    )
    manifest = json.loads((tmp_path / "repo/digits/1/build_manifest.json").read_text())
    assert manifest["deployed_variant"] == fastest
    assert out["selection"].startswith(f"fastest passing variant is {fastest} (")
    assert manifest["selection"] == out["selection"] and "noise margin" in out["selection"]
    mc = parse((tmp_path / "repo/digits/config.pbtxt").read_text())
    # no preferred sizes unless model.yaml gives them (Model Analyzer could not search below them)
    assert list(mc.dynamic_batching.preferred_batch_size) == []
    assert mc.dynamic_batching.max_queue_delay_microseconds == 100


def _timed(name: str, p50: float, noise: float, stable: bool = True):
    from types import SimpleNamespace

    row = {"batch": 4, "p50_ms": p50, "noise": noise, "stable": stable, "throughput": 4 / p50 * 1000}
    return SimpleNamespace(target=name, backend="onnxruntime", profile={"batches": [row]})


def test_fastest_only_prefers_a_variant_beyond_the_measured_noise():
    """Reproducible selection: a difference inside the noise is a tie, and ties go to the
    order in model.yaml; a variant faster by more than the noise wins."""
    from mscompile.builder import fastest

    cfg = parse_config(yaml.safe_load((REPO / "examples/digits/model.yaml").read_text()))
    # int8 3% faster, within the 5% floor: the first listed (fp32) is deployed
    picked, best, gap, margin = fastest(cfg, [_timed("fp32", 1.03, 0.01), _timed("int8", 1.00, 0.01)])
    assert picked.target == "fp32" and best.target == "int8" and gap == pytest.approx(0.03) and margin == 0.05
    # 20% faster beats the noise
    picked, *_ = fastest(cfg, [_timed("fp32", 1.20, 0.01), _timed("int8", 1.00, 0.01)])
    assert picked.target == "int8"
    # ... unless the measured noise of either row is larger than the gap
    picked, _, _, margin = fastest(cfg, [_timed("fp32", 1.20, 0.01), _timed("int8", 1.00, 0.25, stable=False)])
    assert picked.target == "fp32" and margin == 0.25
    # the same inputs choose the same variant, in any order of equal figures
    a = fastest(cfg, [_timed("fp32", 1.0, 0.0), _timed("fp16", 1.0, 0.0)])[0].target
    assert a == "fp32" == fastest(cfg, [_timed("fp32", 1.0, 0.0), _timed("fp16", 1.0, 0.0)])[0].target


def test_profile_stops_at_its_time_budget():
    """A batch size whose windows never agree stops when its share of the budget is spent,
    reported unsettled with its noise (the budget, not max_windows, ends it)."""
    import itertools

    from mscompile.passes.profile import ProfilingConfig, measure

    cfg = parse_config(yaml.safe_load((REPO / "examples/digits/model.yaml").read_text()))
    pc = ProfilingConfig(io=cfg.io, batch_sizes=(1,), window=3, max_windows=1000, agreement=0.01, warmup=0)
    # the test's clock: calls cost 1 ms and 5 ms in turn, so windows of three alternate
    # between medians of 1 and 5 ms and never agree, on any host
    now = [0.0]
    costs = itertools.cycle([0.001, 0.005])

    def run(_feeds):
        now[0] += next(costs)

    m = measure(run, {}, pc, budget_s=0.2, clock=lambda: now[0])
    assert not m["stable"] and m["over_budget"] and m["noise"] > 0.01
    assert m["windows"] == 23  # windows of 7 and 11 ms: 22 take 0.198 s of its clock, the 23rd passes 0.2 s


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
