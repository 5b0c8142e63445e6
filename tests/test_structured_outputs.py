"""Models that return structures: nested tuples, dicts, ModelOutputs and a detector's
list of per-image dicts with a data-dependent number of boxes. Their tensors are
flattened in the exporters' order to the declared names; a count that does not match
lists what the model returns; an output whose size differs from the reference's is a
failed gate with its reason, never an internal error."""

import json

import numpy as np
import pytest
import torch
from helpers import run_cli, write_config
from mscompile.accuracy import evaluate
from mscompile.errors import ConfigError
from mscompile.loading import as_output_list, flatten_outputs
from mscompile.sections import IOSpec, Tolerance
from mscompile.tritonrepo.config import parse

from examples.zoo import FACTORIES

NESTED = """
import torch
from torch import nn


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        h = self.fc(x)
        return h, (torch.relu(h), {"total": h.sum(dim=1, keepdim=True), "skipped": None})
"""
MODELS = FACTORIES + NESTED  # the coverage set's torchvision-style TinyDetector, and a nested return


def _project(tmp_path, factory, inputs, outputs, val):
    (tmp_path / "structured.py").write_text(MODELS)
    ns: dict = {}
    exec(compile(MODELS, "structured", "exec"), ns)  # noqa: S102 - the test's own source
    torch.manual_seed(0)
    torch.save(ns[factory]().state_dict(), tmp_path / "weights.pt")
    np.savez(tmp_path / "val.npz", **val)
    return {
        "name": factory.lower(),
        "source": {"checkpoint": "weights.pt", "factory": f"structured:{factory}"},
        "inputs": inputs,
        "outputs": [{"name": n} for n in outputs],
        "export": {"exporter": "torchscript"},
        "validation": {"data": "val.npz"},
        "targets": [{"name": "fp32", "tolerance": {"max_abs": 1e-4}}],
        "triton": {"repository": "repo"},
    }


def test_flatten_follows_the_exporters_order_and_leaves_out_none():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    t = torch.zeros
    value = [{"boxes": t(2, 4), "scores": t(2)}, (t(1), None), BaseModelOutputWithPooling(last_hidden_state=t(3))]
    assert [p for p, _ in flatten_outputs(value)] == ["0.boxes", "0.scores", "1.0", "2.last_hidden_state"]
    with pytest.raises(ConfigError, match=r"returns 4 tensor\(s\): 0.boxes \[2, 4\], 0.scores \[2\], 1.0 \[1\]"):
        as_output_list(value, 3, "outputs")
    with pytest.raises(ConfigError, match="returns float at '1'"):
        as_output_list((t(1), 0.5), 2, "outputs")


def test_nested_tuple_with_a_dict_builds_with_one_name_per_tensor(tmp_path):
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    d = _project(
        tmp_path,
        "Nested",
        [{"name": "x", "shape": [-1, 4], "range": {"min": [1, 4], "opt": [4, 4], "max": [16, 4]}}],
        ["hidden", "activated", "total"],
        {"x": x},
    )
    r = run_cli("build", str(write_config(d, tmp_path / "model.yaml")), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (v,) = json.loads(r.stdout)["variants"]
    assert v["status"] == "OK" and v["metrics"]["max_abs"] < 1e-5
    mc = parse((tmp_path / "repo/nested/config.pbtxt").read_text())
    assert [(o.name, list(o.dims)) for o in mc.output] == [("hidden", [6]), ("activated", [6]), ("total", [1])]


def test_a_detector_builds_at_batch_1_with_a_variable_number_of_boxes(tmp_path):
    img = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    d = _project(
        tmp_path,
        "TinyDetector",
        [{"name": "images", "shape": [1, 3, 16, 16]}],
        ["boxes", "scores", "labels"],
        {"images": img},
    )
    r = run_cli("build", str(write_config(d, tmp_path / "model.yaml")), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (v,) = json.loads(r.stdout)["variants"]
    assert v["status"] == "OK" and v["metrics"]["max_abs"] < 1e-5
    mc = parse((tmp_path / "repo/tinydetector/config.pbtxt").read_text())
    assert mc.max_batch_size == 0
    dims = {o.name: list(o.dims) for o in mc.output}
    assert dims == {"boxes": [-1, 4], "scores": [-1], "labels": [-1]}  # as many as it finds
    # the count really varies: another image, other number of boxes, same answer as PyTorch
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "repo/tinydetector/1/model.onnx"), providers=["CPUExecutionProvider"])
    counts = {sess.run(None, {"images": img * k})[0].shape[0] for k in (1.0, 3.0, 10.0)}
    assert len(counts) > 1


def test_a_detector_declared_with_a_dynamic_batch_is_told_what_it_returns(tmp_path):
    img = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    d = _project(
        tmp_path,
        "TinyDetector",
        [
            {
                "name": "images",
                "shape": [-1, 3, 16, 16],
                "range": {"min": [1, 3, 16, 16], "opt": [2, 3, 16, 16], "max": [4, 3, 16, 16]},
            }
        ],
        ["boxes", "scores", "labels"],
        {"images": img},
    )
    r = run_cli("build", str(write_config(d, tmp_path / "model.yaml")), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "returns 12 tensor(s): 0.boxes [" in r.stderr and "1.boxes" in r.stderr
    assert "declare a fixed batch of 1 (shape [1, ...])" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_output_with_another_count_than_the_reference_fails_its_gate_with_the_reason():
    io = IOSpec.model_validate({"inputs": [{"name": "images", "shape": [1, 3, 8, 8]}], "outputs": [{"name": "boxes"}]})
    ref = {"boxes": np.zeros((5, 4), np.float32)}
    agg, per_output, fails = evaluate({"boxes": np.zeros((4, 4), np.float32)}, ref, None, io, Tolerance(cosine=0.99))
    assert fails == [
        "boxes: shape [4, 4] differs from the reference's [5, 4] (an output whose size follows the data: "
        "the variant found another number of items)"
    ]
    assert agg == {"shape_mismatch": 1} and per_output["boxes"]["reference_shape"] == [5, 4]
