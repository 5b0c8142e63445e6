"""The build report's page for what was measured on the server: serve-check --perf's
capacity (throughput-latency curve, per-point table, unstable points said) and tune's
trials with the Pareto front, from the records those commands keep per version.
Against a real server: tests/test_perf.py and tests/test_tune.py."""

import json
from html.parser import HTMLParser

from mscompile.report import load_serving, render, save_serving


def point(mode, value, thr, p99, batch=1.0):
    return {
        "mode": mode,
        "value": value,
        "stable": True,
        "throughput": thr,
        "latency_ms": {"p50": p99 / 2, "p90": p99 * 0.8, "p99": p99},
        "triton": {"mean_batch": batch},
    }


CAPACITY = {
    "model": "m",
    "version": 3,
    "capacity": {
        "tool": "perf_analyzer",
        "settings": {"measurement_ms": 1000, "stability_percent": 10, "requests": "batch 1, cycling through 16"},
        "grpc": [point("concurrency", 1.0, 900.0, 1.5), point("concurrency", 4.0, 2100.0, 3.0, 2.6)],
        "http": [{"mode": "concurrency", "value": 1.0, "stable": False, "error": "no stable measurement within 10"}],
    },
}
TUNE = {
    "model": "m",
    "version": 3,
    "objective": {"maximize": "throughput", "slo": {"p99_ms": 5.0}},
    "published": {"throughput_under_slo": 900.0},
    "trials": [
        {
            "trial": 1,
            "max_batch_size": 8,
            "max_queue_delay_microseconds": 100,
            "instances": 1,
            "throughput_under_slo": 1500.0,
            "at": {"concurrency": 4.0, "p99_ms": 4.0},
        },
        {
            "trial": 2,
            "max_batch_size": 16,
            "max_queue_delay_microseconds": 100,
            "instances": 2,
            "throughput_under_slo": 0.0,
            "at": None,
        },
    ],  # fmt: skip
    "best": {"candidate": "max_batch_size 8, delay 100 us, 1 instance(s)", "throughput_under_slo": 1500.0},
    "pareto": [{"trial": 1, "concurrency": 4.0, "throughput": 1500.0, "p99_ms": 4.0}],
    "written": None,
}


class Balanced(HTMLParser):
    VOID = {"meta", "br", "line", "circle", "rect", "polyline", "path", "text"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()


def test_records_keep_the_latest_of_each_kind_and_skip_a_cut_one(tmp_path):
    save_serving(tmp_path, "m", 3, "capacity", dict(CAPACITY, note="first"))
    save_serving(tmp_path, "m", 3, "capacity", dict(CAPACITY, note="second"))
    save_serving(tmp_path, "m", 3, "tune", TUNE)
    folder = next((tmp_path / "m" / "v3" / "serving").glob("*-tune.json")).parent
    (folder / "99999999-999999-1-capacity.json").write_text('{"kind": "capa')  # cut short
    got = load_serving(tmp_path, "m", 3)
    assert set(got) == {"capacity", "tune"} and got["capacity"]["note"] == "second"
    assert json.loads(open(got["tune"]["file"]).read())["trials"] == TUNE["trials"]
    assert load_serving(tmp_path, "m", 4) == {}


def test_the_page_shows_the_capacity_curve_and_the_trials():
    page = render({"config": {"name": "m"}, "variants": [], "passes": []}, {"capacity": CAPACITY, "tune": TUNE})
    check = Balanced()
    check.feed(page)
    assert not check.errors and check.stack == [], (check.errors, check.stack)
    assert "p99 latency (ms) vs throughput (infer/s)" in page  # the curve's SVG
    assert "<td>grpc</td><td>concurrency 4</td><td>2100.0</td>" in page
    assert "not measured: no stable measurement within 10" in page  # said, not dropped
    assert "Serving-config search" in page and "p99 &le; 5.0 ms" in page
    assert "<td>1500.0</td><td>4.0</td><td>yes</td>" in page and "<td>0.0</td><td>-</td><td></td>" in page
    bare = render({"config": {"name": "m"}, "variants": [], "passes": []})
    assert "Nothing measured on a server for this version yet" in bare
