"""Cross-layer equalization and tensor-level recovery on nets built to defeat
per-tensor INT8: a digits MLP whose hidden units are rescaled after training so
that three of them carry ~1000x the activations of the rest (ReLU is positively
homogeneous, so the float function is unchanged)."""

import json
import sys
import textwrap

import numpy as np
import pytest
from helpers import requires

MLP_SRC = textwrap.dedent(
    """
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(64, 48), nn.Linear(48, 32), nn.Linear(32, 10)

        def forward(self, x):
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
    """
)


def outlier_mlp(root, scale=1000.0, kind="rescaled"):
    """Train the MLP on sklearn's digits (first 1000), then make it hostile to
    per-tensor INT8 without changing its function. rescaled: 3 units of fc1 times
    `scale`, fc2's matching columns divided by it. dead: one unit of fc1 always
    outputs `scale` and fc2 ignores it (a zero column): only the activation range
    blows up, which equalization cannot fix."""
    import torch
    from sklearn.datasets import load_digits

    root.mkdir(parents=True, exist_ok=True)
    (root / "mlp.py").write_text(MLP_SRC)
    ns: dict = {}
    exec(compile(MLP_SRC, "mlp", "exec"), ns)  # noqa: S102 - the test's own model
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    torch.manual_seed(0)
    net = ns["MLP"]()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[:1000]), torch.from_numpy(y[:1000])
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    with torch.no_grad():
        if kind == "rescaled":
            for u in (3, 11, 29):
                net.fc1.weight[u] *= scale
                net.fc1.bias[u] *= scale
                net.fc2.weight[:, u] /= scale
        else:
            net.fc1.weight[5] = 0.0
            net.fc1.bias[5] = scale
            net.fc2.weight[:, 5] = 0.0
    torch.save(net.state_dict(), root / "mlp.pt")
    np.savez(root / "val.npz", x=x[1000:1400], labels=y[1000:1400])
    np.savez(root / "calib.npz", x=x[1400:])
    with torch.no_grad():
        acc = float((net(torch.from_numpy(x[1000:1400])).argmax(1).numpy() == y[1000:1400]).mean() * 100)
    return {
        "name": "mlp",
        "source": {"checkpoint": "mlp.pt", "factory": "mlp:MLP"},
        "inputs": [{"name": "x", "shape": [-1, 64], "range": {"min": [1, 64], "opt": [8, 64], "max": [64, 64]}}],
        "outputs": [{"name": "logits"}],
        "export": {"exporter": "torchscript"},
        "validation": {"data": "val.npz", "labels": "labels"},
        "calibration": {"data": "calib.npz"},
        "targets": [
            {
                "name": "int8",
                "precision": "int8",
                "mode": "static",
                "per_channel": False,
                "tolerance": {"accuracy_drop": acc * 0.01},  # keep 99% of the float accuracy
            }
        ],
        "triton": {"repository": "repo"},
        "profile": {"enabled": False},
    }, acc


@pytest.fixture
def mlp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mlp", None)
    yield outlier_mlp(tmp_path)
    sys.modules.pop("mlp", None)


@requires("sklearn")
def test_equalization_is_float_exact_and_balances_the_rescaled_units(tmp_path, mlp):
    import onnx
    from mscompile.builder import BuildOptions
    from mscompile.passes.equalize_graph import _channel_range, equalize
    from mscompile.tasks import build, parse_config
    from onnx import numpy_helper

    cfg, _ = mlp
    cfg["targets"][0].update(precision="fp32", tolerance={"max_abs": 1e-4})
    cfg["targets"][0].pop("mode"), cfg["targets"][0].pop("per_channel")
    res = build(parse_config(cfg), tmp_path / "m.yaml", BuildOptions(cache_dir=tmp_path / "cache", quiet=True))
    model = onnx.load(str(res.variants[0].model.onnx_file))
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    pairs, biggest = equalize(model, sweeps=4)
    assert pairs == 2 and biggest > 100  # fc1-fc2 and fc2-fc3; the 1000x units pulled back
    w2 = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    changed = [n for n in w if not np.array_equal(w[n], w2[n])]
    first = next(n for n in changed if w[n].shape in ((48, 64), (64, 48)))
    axis = 0 if w[first].shape == (48, 64) else 1
    r_before, r_after = _channel_range(w[first], axis), _channel_range(w2[first], axis)
    assert r_before.max() / np.median(r_before) > 100 and r_after.max() / np.median(r_after) < 20


@requires("sklearn")
def test_outlier_net_passes_static_int8_after_equalization_with_no_tensor_in_float(tmp_path, mlp):
    from mscompile.builder import BuildOptions
    from mscompile.tasks import build, parse_config

    cfg, acc = mlp
    result = build(parse_config(cfg), tmp_path / "m.yaml", BuildOptions(cache_dir=tmp_path / "cache", quiet=True))
    (v,) = result.variants
    assert v.status == "OK", v.reason
    first, last = v.tries[0], v.tries[-1]
    assert not first["passed"] and first["metrics"]["accuracy"] < 50  # per-tensor INT8 wrecks it
    assert last["passed"] and last["equalized"] and last["float_tensors"] == [] and last["excluded_nodes"] == []
    assert last["metrics"]["accuracy"] >= 0.99 * acc
    steps = [r.id for r in result.records]
    assert "int8/static#1/equalize_graph" in steps


@requires("sklearn")
def test_tensor_level_recovery_keeps_the_damaged_tensor_in_float(tmp_path, monkeypatch):
    """A unit that always outputs 1000 (and is ignored): equalization has nothing to
    balance, so recovery keeps the damaged activation itself in float (its
    consumers read float), and every try changes the graph."""
    from mscompile.builder import BuildOptions
    from mscompile.tasks import build, parse_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mlp", None)
    cfg, acc = outlier_mlp(tmp_path, kind="dead")
    cfg["targets"][0]["per_channel"] = True
    # without equalization and smoothing (which would fix this net: see below)
    cfg["targets"][0]["recovery"] = {"max_tries": 4, "max_excluded_fraction": 0.5, "equalize": False}
    result = build(parse_config(cfg), tmp_path / "m.yaml", BuildOptions(cache_dir=tmp_path / "cache", quiet=True))
    (v,) = result.variants
    assert v.status == "OK", v.reason
    assert v.tries[0]["float_tensors"] == [] and v.tries[0]["metrics"]["accuracy"] < acc - 5
    assert "/Relu_output_0" in v.tries[-1]["float_tensors"]  # fc1's output after ReLU: the damaged one
    digests = [t["model_digest"] for t in v.tries]
    assert len(set(digests)) == len(digests)  # a try that changes nothing is not a try
    assert v.tries[-1]["metrics"]["accuracy"] >= 0.99 * acc
    assert json.dumps(v.tries)  # recorded as JSON
    sys.modules.pop("mlp", None)


LN_SRC = textwrap.dedent(
    """
    import torch
    from torch import nn

    class LNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.ln, self.fc2 = nn.Linear(64, 32), nn.LayerNorm(32), nn.Linear(32, 10)

        def forward(self, x):
            y = self.ln(self.fc1(x))
            # a second reader of the normalized tensor: smoothing must give it back unscaled
            return self.fc2(y) + 0.01 * y.mean(dim=1, keepdim=True)
    """
)


def ln_outlier_net(root, scale=300.0):
    """A digits net with a LayerNorm whose scale and bias are multiplied by `scale`
    on three channels after training, and the next layer's matching weight
    columns divided by it: the function is unchanged up to the tiny mean term,
    but the normalized activations have the outlier channels transformers show,
    which per-tensor INT8 cannot hold. Cross-layer equalization cannot help (no
    ReLU between); smoothing can."""
    import torch
    from sklearn.datasets import load_digits

    root.mkdir(parents=True, exist_ok=True)
    (root / "lnnet.py").write_text(LN_SRC)
    ns: dict = {}
    exec(compile(LN_SRC, "lnnet", "exec"), ns)  # noqa: S102 - the test's own model
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    torch.manual_seed(0)
    net = ns["LNNet"]()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[:1000]), torch.from_numpy(y[:1000])
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    with torch.no_grad():
        for u in (2, 17, 30):
            net.ln.weight[u] *= scale
            net.ln.bias[u] *= scale
            net.fc2.weight[:, u] /= scale
    torch.save(net.state_dict(), root / "lnnet.pt")
    np.savez(root / "val.npz", x=x[1000:1400], labels=y[1000:1400])
    np.savez(root / "calib.npz", x=x[1400:])
    with torch.no_grad():
        acc = float((net(torch.from_numpy(x[1000:1400])).argmax(1).numpy() == y[1000:1400]).mean() * 100)
    cfg = {
        "name": "lnnet",
        "source": {"checkpoint": "lnnet.pt", "factory": "lnnet:LNNet"},
        "inputs": [{"name": "x", "shape": [-1, 64], "range": {"min": [1, 64], "opt": [8, 64], "max": [64, 64]}}],
        "outputs": [{"name": "logits"}],
        "export": {"exporter": "torchscript", "opset": 17},
        "validation": {"data": "val.npz", "labels": "labels"},
        "calibration": {"data": "calib.npz"},
        "targets": [
            {
                "name": "int8",
                "precision": "int8",
                "mode": "static",
                "per_channel": False,
                "tolerance": {"accuracy_drop": acc * 0.01},
            }
        ],
        "triton": {"repository": "repo"},
        "profile": {"enabled": False},
    }
    return cfg, acc


@requires("sklearn")
def test_smoothing_folds_into_layernorm_and_int8_keeps_99_percent(tmp_path, monkeypatch):
    from mscompile.builder import BuildOptions
    from mscompile.tasks import build, parse_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("lnnet", None)
    cfg, acc = ln_outlier_net(tmp_path)
    result = build(parse_config(cfg), tmp_path / "m.yaml", BuildOptions(cache_dir=tmp_path / "cache", quiet=True))
    (v,) = result.variants
    assert v.status == "OK", v.reason
    first, last = v.tries[0], v.tries[-1]
    assert not first["passed"] and first["metrics"]["accuracy"] < 0.9 * acc
    assert last["passed"] and last["equalized"] and last["float_tensors"] == [] and last["excluded_nodes"] == []
    assert last["metrics"]["accuracy"] >= 0.99 * acc
    eq = next(r for r in result.records if r.id == "int8/static#1/equalize_graph")
    assert eq.metrics["smoothed"] >= 1 and eq.metrics["pairs"] == 0 and eq.metrics["parity_rel_err"] < 1e-5
    sys.modules.pop("lnnet", None)


@requires("sklearn")
def test_smoothing_rewrite_is_float_exact_and_balances_channels(tmp_path, monkeypatch):
    import onnx
    from mscompile.builder import BuildOptions
    from mscompile.passes.equalize_graph import SMOOTH_MARK, _channel_max, smooth
    from mscompile.runtimes import onnxruntime_session
    from mscompile.tasks import build, parse_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("lnnet", None)
    cfg, _ = ln_outlier_net(tmp_path)
    cfg["targets"][0] = {"name": "fp32", "precision": "fp32", "tolerance": {"max_abs": 1e-4}}
    res = build(parse_config(cfg), tmp_path / "m.yaml", BuildOptions(cache_dir=tmp_path / "cache", quiet=True))
    path = res.variants[0].model.onnx_file
    model = onnx.load(str(path))
    ln = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    feeds = {"x": np.load(tmp_path / "calib.npz")["x"][:64]}
    before = _channel_max(model, [ln.output[0]], feeds)[ln.output[0]]
    done, biggest = smooth(model, feeds, alpha=0.5, min_ratio=4.0)
    assert done == 1 and biggest > 10
    restore = [n for n in model.graph.node if SMOOTH_MARK in n.name]
    assert len(restore) == 1 and restore[0].input[0] == ln.output[0]  # folded into LN; the mean term gets it back
    after = _channel_max(model, [ln.output[0]], feeds)[ln.output[0]]
    assert before.max() / np.median(before) > 50 and after.max() / np.median(after) < 10
    out = tmp_path / "smoothed.onnx"
    onnx.save(model, str(out))
    a = onnxruntime_session(str(path), ["logits"])(feeds)[0]
    b = onnxruntime_session(str(out), ["logits"])(feeds)[0]
    assert np.abs(a - b).max() / np.abs(a).max() < 1e-5
    sys.modules.pop("lnnet", None)


@requires("sklearn")
def test_dead_unit_passes_with_default_recovery_by_smoothing(tmp_path, monkeypatch):
    """The unit every later weight ignores: smoothing scales it down freely (its weight
    row is zero), so static INT8 passes with the default budget and nothing in float."""
    from mscompile.builder import BuildOptions
    from mscompile.tasks import build, parse_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mlp", None)
    cfg, acc = outlier_mlp(tmp_path, kind="dead")
    cfg["targets"][0]["per_channel"] = True
    result = build(parse_config(cfg), tmp_path / "m.yaml", BuildOptions(cache_dir=tmp_path / "cache", quiet=True))
    (v,) = result.variants
    assert v.status == "OK", v.reason
    last = v.tries[-1]
    assert last["equalized"] and last["float_tensors"] == [] and last["metrics"]["accuracy"] >= 0.99 * acc
    sys.modules.pop("mlp", None)
