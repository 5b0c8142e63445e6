"""The Python API: mscompile.optimize(module, example_inputs) and mscompile.build(config)
run the CLI's build and return its result object; errors are the CLI's typed
exceptions, with its exit codes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, make_tiny_project
from mscompile.errors import AccuracyGateError, ConfigError
from torch import nn


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class SmallResNet(nn.Module):
    """A torchvision-style residual CNN (stem, basic blocks, pooled classifier)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(Block(16), Block(16))
        self.fc = nn.Linear(16, classes)

    def forward(self, images):
        return self.fc(self.layer1(self.stem(images)).mean(dim=(2, 3)))


class SmallResNetHalved(SmallResNet):
    def forward(self, images):  # other code, same weights
        return super().forward(images) * 0.5


def _net() -> SmallResNet:
    torch.manual_seed(0)
    net = SmallResNet()
    for m in net.modules():  # non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MSCOMPILE_HOME", str(tmp_path / "state"))
    return tmp_path


def test_optimize_a_module_object_returns_gated_variants_and_publishes(workdir, capfd):
    import mscompile

    net = _net()
    rng = np.random.default_rng(0)
    val = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    cal = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    r = mscompile.optimize(net, torch.from_numpy(val[:4]), name="smallres", validation=val, calibration=cal, quiet=True)
    assert [v.target for v in r.variants] == ["fp32", "fp16", "int8"]
    for v in r.variants:  # every variant gated, with its figures
        assert v.status.value == "OK", v.reason
        assert v.metrics["max_rel"] >= 0 and "cosine" in v.metrics
    assert r.variant("fp32").metrics["max_rel"] < 1e-4 and r.variant("int8").metrics["cosine"] >= 0.99
    assert r.deployed == "fp32"  # the first target that passes, as for a model.yaml
    (pub,) = r.published
    assert pub.path == workdir / "model_repository/smallres/1" and (pub.path / "model.onnx").is_file()
    manifest = json.loads((pub.path / "build_manifest.json").read_text())
    assert manifest["deployed_variant"] == "fp32"
    inp = manifest["config"]["inputs"][0]  # from one forward pass: forward()'s parameter name, dtype, shape
    assert (inp["name"], inp["dtype"], inp["shape"]) == ("images", "float32", [-1, 3, 32, 32])
    assert inp["range"] == {"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [64, 3, 32, 32]}
    assert manifest["config"]["outputs"] == [{"name": "output"}] or manifest["config"]["outputs"][0]["name"] == "output"
    assert r.to_json()["deployed"] == "fp32" and r.report_path.is_file()
    assert capfd.readouterr().out == ""  # nothing on stdout

    # the same module again: every pass from the cache; the caller's module untouched
    net.train()
    again = mscompile.optimize(
        net, torch.from_numpy(val[:4]), name="smallres", validation=val, calibration=cal, quiet=True
    )
    assert net.training and [rec.id for rec in again.records if not rec.cached] == []
    # other code with the same weights is another model: the reference is taken again
    halved = SmallResNetHalved()
    halved.load_state_dict(net.state_dict())
    other = mscompile.optimize(
        halved.eval(), torch.from_numpy(val[:4]), name="smallres", validation=val, targets=["fp32"], quiet=True
    )
    load = next(rec for rec in other.records if rec.id == "load_checkpoint")
    assert not load.cached and other.variant("fp32").status.value == "OK"


def test_optimize_errors_are_the_clis_typed_exceptions(workdir):
    import mscompile

    net = _net()
    with pytest.raises(ConfigError, match="forward\\(\\) raised RuntimeError") as e:
        mscompile.optimize(net, torch.zeros(2, 5, 32, 32), quiet=True)  # 5 channels, the stem takes 3
    assert e.value.exit_code == 2
    with pytest.raises(ConfigError, match="is not a torch.nn.Module"):
        mscompile.optimize(lambda x: x, torch.zeros(2, 3), quiet=True)
    # a gate no variant passes: the gate error, with what ran
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32))
    with pytest.raises(AccuracyGateError) as e:
        mscompile.optimize(
            net, x, targets=[{"name": "fp16", "precision": "fp16", "tolerance": {"max_abs": 0.0}}], quiet=True
        )
    assert e.value.exit_code == 3 and e.value.result.variant("fp16").status.value == "FAIL"
    assert not (workdir / "model_repository/model").exists()
    # INT8 with nothing to calibrate on but the gate's own samples: left out, said so
    said: list[str] = []
    r = mscompile.optimize(net, x, name="nocal", quiet=True, warn=said.append)
    assert [v.target for v in r.variants] == ["fp32", "fp16"]
    assert any("INT8 target(s) ['int8'] left out" in m and "calibration=" in m for m in said)
    with pytest.raises(ConfigError, match="only INT8 targets"):
        mscompile.optimize(net, x, name="nocal", targets=["int8"], quiet=True)


def test_build_takes_a_path_or_a_dict(workdir):
    import mscompile

    d = make_tiny_project(workdir)
    r = mscompile.build(d, quiet=True)  # relative paths from the working directory
    assert r.deployed == "fp32" and r.published[0].version == 1
    assert [v.target for v in r.variants] == ["fp32", "fp16"] and r.variant("fp16").metrics
    (workdir / "model.yaml").write_text(json.dumps(d))  # JSON is YAML
    again = mscompile.build(workdir / "model.yaml", quiet=True)
    assert again.published[0].reused and all(rec.cached for rec in again.records)
    d["targets"][0]["tolerance"] = {"max_abs": -1}
    with pytest.raises(ConfigError) as e:
        mscompile.build(d, quiet=True)
    assert e.value.exit_code == 2 and "targets" in str(e.value)


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    """`python -c code` in `cwd`, as a user types it (the repository on the path)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def test_python_c_one_liner_with_a_module(tmp_path):
    # what a user types: a module from their own file, no model.yaml
    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n\nclass Net(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.fc = nn.Linear(6, 4)\n\n    def forward(self, x):\n"
        "        return torch.softmax(self.fc(x), dim=-1)\n"
    )
    code = (
        "import torch, mscompile\nfrom net import Net\ntorch.manual_seed(0)\n"
        "r = mscompile.optimize(Net(), torch.randn(16, 6), name='net', targets=['fp32', 'fp16'])\n"
        "print({v.target: (v.status.value, round(v.metrics['max_rel'], 6)) for v in r.variants}, r.deployed)\n"
    )
    p = _python(code, tmp_path)
    assert p.returncode == 0, p.stderr
    assert "'fp32': ('OK'" in p.stdout and "'fp16': ('OK'" in p.stdout and p.stdout.strip().endswith("fp32")
    assert "no validation inputs given" in p.stderr  # said plainly: gated on the example inputs
    # a new process, the same module under the same name: every pass from the cache
    again = code.replace("print({v.target", "print(sum(not rec.cached for rec in r.records), {v.target")
    p = _python(again, tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("0 {")


def test_the_documented_example_runs_as_written(tmp_path):
    """docs/python-api.md's example, run as a user would paste it."""
    import re

    page = (REPO / "docs/python-api.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", page, re.S)
    p = _python(code, tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines[:3]] == [["fp32", "OK"], ["fp16", "OK"], ["int8", "OK"]]
    assert lines[3].startswith("deployed: fp32 -> ") and (tmp_path / "model_repository/net/1/model.onnx").is_file()
