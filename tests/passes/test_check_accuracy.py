import numpy as np
import pytest
from mscompile.config import Tolerance
from mscompile.passes.check_accuracy import apply_gate, compare


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


def test_gate_lists_each_failure():
    m = {
        "max_abs": 0.2,
        "max_rel": 0.01,
        "cosine": 0.99,
        "cosine_min": 0.9,
        "top1_agreement": 0.97,
        "nonfinite": 0,
    }
    assert apply_gate(m, Tolerance(max_abs=0.5, cosine=0.98)) == []
    fails = apply_gate(m, Tolerance(max_abs=0.1, cosine_min=0.95, top1_agreement=0.99, accuracy_drop=1.0))
    assert fails == [
        "max_abs 0.2 > 0.1",
        "accuracy_drop cannot be measured for this model (set labels in validation, or drop the key)",
        "cosine_min 0.9 < 0.95",
        "top1_agreement 0.97 < 0.99",
    ]


def test_nan_always_fails():
    out = np.array([[np.nan, 1.0]], np.float32)
    m = compare(out, np.array([[0.0, 1.0]], np.float32))
    assert apply_gate(m, Tolerance()) == ["1 non-finite output values (NaN/inf)"]
