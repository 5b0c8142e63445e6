"""Gating some outputs, or each its own way: tolerance.outputs and tolerance.per_output."""

import json

import numpy as np
import pytest
from helpers import make_tiny_project, run_cli, write_config
from mscompile.accuracy import apply_gate, compare
from mscompile.errors import ConfigError
from mscompile.sections import Tolerance


def _metrics():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((16, 8))
    return {
        "main": compare(ref + 1e-4, ref),
        "aux": compare(ref + rng.standard_normal((16, 8)), ref),  # far off
        "count": compare(ref[:, :1] + 1e-4, ref[:, :1]),  # one value per sample: no cosine
    }


def test_outputs_limits_the_shared_keys_to_the_named_outputs():
    m = _metrics()
    assert apply_gate(m, Tolerance(cosine=0.999)) == [f"aux: cosine {m['aux']['cosine']:.6g} < 0.999"]
    assert apply_gate(m, Tolerance(cosine=0.999, outputs=["main"])) == []  # aux measured, not judged
    m["aux"]["nonfinite"] = 3
    assert apply_gate(m, Tolerance(cosine=0.999, outputs=["main"])) == []
    with pytest.raises(ConfigError, match="tolerance.cosine: checks nothing"):
        apply_gate(m, Tolerance(cosine=0.999, outputs=["count"]))


def test_per_output_gives_an_output_its_own_keys():
    m = _metrics()
    tol = Tolerance(cosine=0.999, per_output={"aux": {"cosine": 0.5}, "count": {"max_abs": 1e-6}})
    fails = apply_gate(m, tol)
    assert fails == [f"count: max_abs {m['count']['max_abs']:.6g} > 1e-06"]  # aux passes at 0.5
    with pytest.raises(ConfigError, match="tolerance.per_output.count.cosine: checks nothing for this output"):
        apply_gate(m, Tolerance(per_output={"count": {"cosine": 0.9}}))


def test_names_that_are_not_outputs_are_refused_and_a_build_gates_per_output(tmp_path):
    d = make_tiny_project(tmp_path)
    d["targets"] = [{"name": "fp32", "tolerance": {"max_abs": 1e-4, "per_output": {"logits": {"cosine": 0.9}}}}]
    r = run_cli("validate", str(write_config(d, tmp_path / "model.yaml")), cwd=tmp_path)
    assert r.returncode == 2
    assert "targets[0].tolerance.per_output: 'logits' is not an output; the outputs are ['y_hat']" in r.stderr
    d["targets"] = [
        {"name": "fp16", "precision": "fp16", "tolerance": {"max_abs": 0.0, "per_output": {"y_hat": {"max_rel": 0.05}}}}
    ]
    r = run_cli("validate", str(write_config(d, tmp_path / "model.yaml")), cwd=tmp_path)
    assert r.returncode == 2 and "tolerance.max_abs: gates no output" in r.stderr  # before any work
    d["targets"] = [
        {"name": "fp16", "precision": "fp16", "tolerance": {"per_output": {"y_hat": {"max_rel": 0.05}}}},
        {
            "name": "strict",
            "precision": "fp16",
            "on_fail": "skip",
            "tolerance": {"per_output": {"y_hat": {"max_abs": 0.0}}},
        },
    ]
    r = run_cli("build", str(write_config(d, tmp_path / "model.yaml")), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    v = {x["name"]: x for x in json.loads(r.stdout)["variants"]}
    assert v["fp16"]["status"] == "OK"
    assert v["strict"]["status"] == "FAIL" and v["strict"]["failures"][0].startswith("y_hat: max_abs ")
