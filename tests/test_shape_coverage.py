"""Gates that say which declared shapes they never covered: the validation data's
sizes on each dynamic dimension against the range's min/opt/max, in --json, the
manifest and the report, and a build that fails under validation.shapes: strict.
Under validation.shapes: generate, each missing size is gated in its own bucket
(the samples cropped or tiled there), with its own figures, and every bucket must pass."""

import json

import numpy as np
import yaml
from helpers import REPO, make_tiny_project, run_cli, write_config
from mscompile.accuracy import GENERATED_SAMPLES, coverage_lines, shape_buckets, shape_coverage
from mscompile.sections import IOSpec
from mscompile.tasks import parse_config


def test_minilm_data_alone_covers_17_tokens_and_generate_covers_1_128_and_256():
    cfg = parse_config(yaml.safe_load((REPO / "examples/minilm/model.yaml").read_text()))
    assert cfg.validation.shapes == "generate"  # the example gates what it declares
    feeds = dict(np.load(REPO / "calibration_data/minilm_val.npz"))
    generated = shape_coverage(cfg.io, feeds, cfg.validation.batch_size, generated=True)
    seq = next(r for r in generated if r["input"] == "input_ids" and r["axis"] == 1)
    assert seq["gated"] == [1, 17, 128, 256] and seq["not_gated"] == {} and not coverage_lines(generated)
    names = [name for name, _ in shape_buckets(cfg.io, feeds)]
    assert names == ["sequence=1", "sequence=128", "sequence=256"]  # the three inputs vary together

    rows = shape_coverage(cfg.io, feeds, cfg.validation.batch_size)  # the data as given
    seq = next(r for r in rows if r["input"] == "input_ids" and r["axis"] == 1)
    assert seq["gated"] == [17] and seq["not_gated"] == {"min": 1, "opt": 128, "max": 256}
    batch = next(r for r in rows if r["input"] == "input_ids" and r["axis"] == 0)
    assert batch["batch"] and batch["gated"] == [8, 32] and batch["not_gated"] == {}
    (line,) = coverage_lines(rows)  # the three inputs share the `sequence` dimension: one line
    assert "input_ids[1] (sequence)" in line and "128 (opt)" in line and "256 (max)" in line


def _seq_project(tmp_path, shapes: str | None = None) -> dict:
    d = make_tiny_project(tmp_path)
    np.savez(tmp_path / "val.npz", x=np.random.default_rng(0).standard_normal((16, 8, 4)).astype(np.float32))
    d["inputs"] = [
        {"name": "x", "shape": [-1, "seq", 4], "range": {"min": [1, 8, 4], "opt": [4, 16, 4], "max": [16, 32, 4]}}
    ]
    d["targets"] = [{"name": "fp32", "tolerance": {"max_abs": 1e-4}}]
    if shapes:
        d["validation"]["shapes"] = shapes
    return d


def test_build_reports_the_sizes_no_gate_covered(tmp_path):
    path = write_config(_seq_project(tmp_path), tmp_path / "model.yaml")
    r = run_cli("build", str(path), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cov = json.loads(r.stdout)["shape_coverage"]
    seq = next(c for c in cov if c["axis"] == 1)
    assert seq["gated"] == [8] and seq["not_gated"] == {"opt": 16, "max": 32}
    assert "not gated: x[1] (seq): the validation data has size 8 there" in r.stderr
    manifest = json.loads((tmp_path / "repo/tiny/1/build_manifest.json").read_text())
    assert manifest["shape_coverage"] == cov
    report = json.loads(r.stdout)["report"]
    assert "Shapes the gates covered" in open(report).read() and "16 (opt), 32 (max)" in open(report).read()


def test_strict_fails_the_build_and_publishes_nothing(tmp_path):
    path = write_config(_seq_project(tmp_path, "strict"), tmp_path / "model.yaml")
    r = run_cli("build", str(path), "--json", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "validation.shapes: strict" in r.stderr and "16 (opt), 32 (max)" in r.stderr
    assert not (tmp_path / "repo").exists()


def test_buckets_crop_and_tile_each_sample_continued_by_the_next_ones():
    io = IOSpec.model_validate(
        {
            "inputs": [
                # unnamed dims on the same axis with the same size and range keep one length
                {
                    "name": "ids",
                    "dtype": "int64",
                    "shape": [-1, -1],
                    "range": {"min": [1, 2], "opt": [2, 7], "max": [4, 7]},
                },
                {
                    "name": "mask",
                    "dtype": "int64",
                    "shape": [-1, -1],
                    "range": {"min": [1, 2], "opt": [2, 7], "max": [4, 7]},
                },
                {"name": "img", "shape": [-1, 3, "h"], "range": {"min": [1, 3, 2], "opt": [2, 3, 3], "max": [4, 3, 3]}},
            ],
            "outputs": [{"name": "y"}],
        }
    )
    ids = np.arange(40 * 3).reshape(40, 3)
    feeds = {"ids": ids, "mask": ids + 1000, "img": np.zeros((40, 3, 3), np.float32)}
    buckets = dict(shape_buckets(io, feeds))
    assert list(buckets) == ["ids_dim1=2", "ids_dim1=7", "h=2"]  # img's h has size 3 = opt = max
    crop, tile = buckets["ids_dim1=2"], buckets["ids_dim1=7"]
    assert crop["ids"].shape == (GENERATED_SAMPLES, 2) and (crop["ids"] == ids[:GENERATED_SAMPLES, :2]).all()
    assert (crop["mask"] == crop["ids"] + 1000).all() and crop["img"].shape == (GENERATED_SAMPLES, 3, 3)
    # sample 0 at length 7: sample 0's three values, sample 1's, then the first of sample 2's
    assert tile["ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6] and (tile["mask"] == tile["ids"] + 1000).all()
    # the last of the 32 wraps to the first
    assert tile["ids"][GENERATED_SAMPLES - 1].tolist() == [93, 94, 95, 0, 1, 2, 3]
    assert buckets["h=2"]["img"].shape == (GENERATED_SAMPLES, 3, 2)
    again = dict(shape_buckets(io, feeds))  # the reference pass and every gate make the same ones
    assert all((again[k][i] == v[i]).all() for k, v in buckets.items() for i in v)


TRACED_SRC = """
from tinymodels import Tiny

class TracedMean(Tiny):
    # int() of a size is a constant to the tracing exporter: the graph divides by the
    # example's length at every length
    def forward(self, x):
        return super().forward(x).sum(dim=1) / int(x.shape[1])
"""


def test_generate_gates_each_declared_size_and_catches_a_graph_right_only_at_the_data_length(tmp_path):
    d = _seq_project(tmp_path, "generate")
    r = run_cli("build", str(write_config(d, tmp_path / "model.yaml")), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    (fp32,) = out["variants"]
    assert list(fp32["buckets"]) == ["seq=16", "seq=32"] and all(b["passed"] for b in fp32["buckets"].values())
    assert fp32["buckets"]["seq=32"]["samples"] == 16  # the set has 16 samples (under GENERATED_SAMPLES)
    seq = next(c for c in out["shape_coverage"] if c["axis"] == 1)
    assert seq["gated"] == [8, 16, 32] and seq["not_gated"] == {} and "not gated" not in r.stderr
    manifest = json.loads((tmp_path / "repo/tiny/1/build_manifest.json").read_text())
    assert manifest["variants"][0]["buckets"] == fp32["buckets"]
    assert "Gates per generated shape" in open(out["report"]).read() and "seq=32" in open(out["report"]).read()
    r = run_cli("build", str(tmp_path / "model.yaml"), cwd=tmp_path)  # the summary: figures per bucket
    assert r.returncode == 0 and "fp32 by shape: seq=16 max_abs=" in r.stdout and "; seq=32 max_abs=" in r.stdout

    (tmp_path / "traced.py").write_text(TRACED_SRC)
    d["source"] = {"checkpoint": "tiny_0.pt", "factory": "traced:TracedMean"}
    d["outputs"] = [{"name": "mean"}]
    d["targets"] = [{"name": "fp32", "tolerance": {"max_rel": 1e-4}}]
    r = run_cli("build", str(write_config(d, tmp_path / "model.yaml")), "--json", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    (fp32,) = json.loads(r.stdout)["variants"]
    # right on the data (8 steps), wrong at 16 and 32: the report format named both
    assert fp32["status"] == "FAIL" and fp32["metrics"]["max_rel"] < 1e-6
    assert not fp32["buckets"]["seq=16"]["passed"] and not fp32["buckets"]["seq=32"]["passed"]
    assert fp32["buckets"]["seq=32"]["metrics"]["max_rel"] > 1.0  # divided by 8 instead of 32: 4x
    assert any(f.startswith("at seq=16: mean: max_rel ") for f in fp32["failures"])
    assert "at seq=32" in fp32["reason"]
    assert not (tmp_path / "repo/tiny/2").exists()


def test_a_generated_size_the_model_rejects_names_the_bucket_and_the_fix(tmp_path):
    d = _seq_project(tmp_path, "generate")
    d["source"]["factory"] = "fixedlen:Fixed"
    (tmp_path / "fixedlen.py").write_text(
        "from tinymodels import Tiny\n\nclass Fixed(Tiny):\n    def forward(self, x):\n"
        "        assert x.shape[1] <= 16, 'sequence too long'\n        return super().forward(x)\n"
    )
    r = run_cli("build", str(write_config(d, tmp_path / "model.yaml")), cwd=tmp_path)
    assert r.returncode != 0
    assert "validation.shapes: generate made inputs at seq=32" in r.stderr and "inputs[].range" in r.stderr
