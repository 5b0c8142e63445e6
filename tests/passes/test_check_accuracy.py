import re

import numpy as np
import pytest
from mscompile.accuracy import apply_gate, compare
from mscompile.config import Tolerance


def test_metrics_on_known_arrays():
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], np.float32)
    out = np.array([[1.0, 0.1, 0.0], [0.0, 0.0, 3.0]], np.float32)
    m = compare(out, ref)
    assert m["max_abs"] == pytest.approx(3.0)
    assert m["max_rel"] == pytest.approx(3.0 / 2.0)
    assert m["cosine_min"] == pytest.approx(0.0)
    assert m["cosine"] == pytest.approx((1 / np.sqrt(1.01) + 0.0) / 2, rel=1e-6)
    assert m["top1_agreement"] == pytest.approx(0.5)
    assert m["nonfinite"] == 0


def test_identical_outputs_are_perfect_and_zero_rows_agree():
    ref = np.zeros((3, 4), np.float32)
    m = compare(ref.copy(), ref)
    assert m["max_abs"] == 0 and m["cosine_min"] == 1.0


def test_gate_lists_each_failure_with_its_output():
    per_output = {
        "logits": {"max_abs": 0.2, "max_rel": 0.01, "cosine": 0.99, "cosine_min": 0.9, "top1_agreement": 0.97},
        "score": {"max_abs": 0.05, "max_rel": 0.01},  # one value per sample: no cosine
    }
    assert apply_gate(per_output, Tolerance(max_abs=0.5, cosine=0.98)) == []
    fails = apply_gate(
        per_output,
        Tolerance(max_abs=0.1, cosine_min=0.95, top1_agreement=0.99, accuracy_drop=1.0),
        task={"accuracy_drop": 0.4},
    )
    assert fails == ["logits: max_abs 0.2 > 0.1", "logits: cosine_min 0.9 < 0.95", "logits: top1_agreement 0.97 < 0.99"]
    assert apply_gate(per_output, Tolerance(max_abs=0.04)) == [
        "logits: max_abs 0.2 > 0.04",
        "score: max_abs 0.05 > 0.04",
    ]


@pytest.mark.parametrize(
    ("tol", "why"),
    [
        (
            Tolerance(accuracy_drop=1.0),
            "tolerance.accuracy_drop: checks nothing for this model (it needs integer labels",
        ),
        (Tolerance(cosine=0.99), "tolerance.cosine: checks nothing for this model (every output has one value"),
    ],
)
def test_a_gate_that_checks_nothing_is_a_config_error(tol, why):
    from mscompile.errors import ConfigError

    one_wide = {"score": compare(np.ones((4, 1), np.float32), np.ones((4, 1), np.float32))}
    assert "cosine" not in one_wide["score"]
    with pytest.raises(ConfigError, match=re.escape(why)):
        apply_gate(one_wide, tol)


def test_top1_is_not_measured_on_embeddings():
    emb = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    assert "top1_agreement" not in compare(emb, emb, classes=False)
    assert "top1_agreement" in compare(emb, emb, classes=True)


def test_nan_always_fails():
    out = np.array([[np.nan, 1.0]], np.float32)
    m = compare(out, np.array([[0.0, 1.0]], np.float32))
    assert apply_gate({"y": m}, Tolerance()) == ["y: 1 non-finite output values (NaN/inf)"]
