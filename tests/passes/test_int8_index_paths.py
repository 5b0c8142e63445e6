"""Integer arithmetic done in float (T5's relative-position buckets) is never quantized,
and a quantization try whose graph ONNX Runtime cannot run is a failed try, not a failed
build: the search goes on to its next mode and the variants that passed are published."""

import textwrap

import numpy as np
import pytest
import yaml
from helpers import requires

T5LIKE = textwrap.dedent(
    '''
    import math

    import torch
    from torch import nn


    class RelBias(nn.Module):
        """T5's relative-position buckets (log of distances in float, cast to int64) feed
        an embedding lookup; the sequence length is dynamic, so the arithmetic runs."""

        def __init__(self, buckets=32, max_distance=128, dim=16):
            super().__init__()
            self.buckets, self.max_distance = buckets, max_distance
            self.bias = nn.Embedding(buckets, 1)
            self.proj = nn.Linear(dim, dim)

        def bucket(self, rel):
            n = torch.max(-rel, torch.zeros_like(rel))
            exact = self.buckets // 2
            large = exact + (
                torch.log(n.float() / exact) / math.log(self.max_distance / exact) * (self.buckets - exact)
            ).to(torch.long)
            large = torch.min(large, torch.full_like(large, self.buckets - 1))
            return torch.where(n < exact, n, large)

        def forward(self, x):
            pos = torch.arange(x.shape[1], dtype=torch.long)
            b = self.bias(self.bucket(pos[None, :] - pos[:, None])).squeeze(-1)
            h = self.proj(x)
            return torch.softmax(torch.matmul(h, h.transpose(1, 2)) + b, dim=-1)
    '''
)


@pytest.fixture
def t5like(tmp_path, monkeypatch):
    import torch

    (tmp_path / "t5like.py").write_text(T5LIKE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import t5like

    torch.manual_seed(0)
    torch.save(t5like.RelBias().state_dict(), tmp_path / "t5like.pt")
    rng = np.random.default_rng(0)
    for name in ("val", "cal"):
        np.savez(tmp_path / f"{name}.npz", x=rng.standard_normal((32, 24, 16)).astype(np.float32))
    cfg = {
        "name": "t5like",
        "source": {"checkpoint": "t5like.pt", "factory": "t5like:RelBias"},
        "inputs": [
            {
                "name": "x",
                "shape": [-1, "seq", 16],
                "range": {"min": [1, 8, 16], "opt": [4, 24, 16], "max": [8, 32, 16]},
            }
        ],
        "outputs": [{"name": "probs"}],
        "validation": {"data": "val.npz"},
        "calibration": {"data": "cal.npz"},
        "targets": [
            {"name": "fp32", "tolerance": {"max_abs": 1e-4}},
            {"name": "int8", "precision": "int8", "mode": "auto", "tolerance": {"cosine": 0.9}},
        ],
        "triton": {"repository": "repo"},
    }
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def _build(root):
    from mscompile.builder import BuildOptions
    from mscompile.tasks import build, load_config

    return build(
        load_config(root / "model.yaml"), root / "model.yaml", BuildOptions(cache_dir=root / "cache", quiet=True)
    )


@requires("onnxruntime")
def test_the_bucket_arithmetic_stays_float_and_static_int8_passes(t5like):
    res = _build(t5like)
    int8 = next(v for v in res.variants if v.target == "int8")
    static = next(r for r in res.records if r.id == "int8/static#1/quantize_int8")
    kept = static.metrics["index_nodes_in_float"]
    assert kept and any("log" in n for n in kept) and any("div" in n for n in kept), kept
    assert int8.tries[0]["mode"] == "static" and int8.tries[0]["passed"], int8.tries


@requires("onnxruntime")
def test_a_try_onnx_runtime_cannot_run_is_a_failed_try(t5like, monkeypatch):
    """With the bucket arithmetic quantized (the exclusion turned off here), ONNX Runtime
    fails in the gate (`Gather ... idx=-9223372036854775792`): the build exited 1 and
    published nothing; now the static try is recorded as failed and dynamic INT8 deploys."""
    import mscompile.passes.quantize_int8 as q

    monkeypatch.setattr(q, "index_path_nodes", lambda model: set())
    res = _build(t5like)
    int8 = next(v for v in res.variants if v.target == "int8")
    first = int8.tries[0]
    assert first["mode"] == "static" and not first["passed"]
    assert "ONNX Runtime cannot run the quantized graph" in first["failures"][0] and "Gather" in first["failures"][0]
    assert int8.tries[-1]["mode"] == "dynamic" and int8.tries[-1]["passed"]
    assert int8.status.value == "OK" and [p.model for p in res.published] == ["t5like"]
