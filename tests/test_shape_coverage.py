"""Gates that say which declared shapes they never covered: the validation data's
sizes on each dynamic dimension against the range's min/opt/max, in --json, the
manifest and the report, and a build that fails under validation.shapes: strict."""

import json

import numpy as np
import yaml
from helpers import REPO, make_tiny_project, run_cli, write_config
from mscompile.accuracy import coverage_lines, shape_coverage
from mscompile.tasks import parse_config


def test_minilm_example_gates_at_17_tokens_and_says_128_and_256_were_never_gated():
    cfg = parse_config(yaml.safe_load((REPO / "examples/minilm/model.yaml").read_text()))
    feeds = dict(np.load(REPO / "calibration_data/minilm_val.npz"))
    rows = shape_coverage(cfg.io, feeds, cfg.validation.batch_size)
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
