import json
import zipfile

import numpy as np
import pytest
import torch
from helpers import make_driver, tiny_steps
from mscompile.errors import CheckpointError, ConfigError, ShapeError


def _load(tmp, cfg):
    _, plan = tiny_steps(cfg)
    d = make_driver(tmp / "state", plan=plan)
    return d.run_step(plan.common.steps[0], plan.source)


def test_reference_outputs_are_the_modules(tiny_project):
    tmp, cfg = tiny_project
    import tinymodels

    rec = _load(tmp, cfg)
    m = tinymodels.Tiny()
    m.load_state_dict(torch.load(tmp / "tiny.pt"))
    x = np.load(tmp / "val.npz")["x"]
    expect = m(torch.from_numpy(x)).detach().numpy()
    ref = np.load(rec.output.path / "reference.npz")["y_hat"]
    np.testing.assert_allclose(ref, expect, rtol=0, atol=0)
    info = json.loads((rec.output.path / "module.json").read_text())
    assert info["module_class"] == "tinymodels.Tiny"
    assert rec.metrics["parameters"] == 4 * 8 + 8 + 8 * 3 + 3


def test_full_pickle_refused_without_trust(tiny_project):
    tmp, cfg = tiny_project
    import tinymodels

    torch.save(tinymodels.Tiny(), tmp / "full.pt")
    cfg["source"]["checkpoint"] = "full.pt"
    with pytest.raises(CheckpointError, match="set source.trust_pickle: true if you trust its origin"):
        _load(tmp, cfg)
    cfg["source"]["trust_pickle"] = True
    assert _load(tmp, cfg).output is not None


def test_safetensors_and_torchscript_and_nested_state_dict(tiny_project):
    tmp, cfg = tiny_project
    import tinymodels
    from safetensors.torch import save_file

    m = tinymodels.Tiny()
    m.load_state_dict(torch.load(tmp / "tiny.pt"))
    save_file(m.state_dict(), tmp / "tiny.safetensors")
    torch.jit.save(torch.jit.script(m), tmp / "tiny_ts.pt")
    torch.save({"model": m.state_dict(), "epoch": 3}, tmp / "nested.pt")
    ref = np.load(_load(tmp, cfg).output.path / "reference.npz")["y_hat"]
    for ckpt, extra in (
        ("tiny.safetensors", {}),
        ("tiny_ts.pt", {}),
        ("nested.pt", {"state_dict_key": "model"}),
    ):
        c = json.loads(json.dumps(cfg))
        c["source"].update(checkpoint=ckpt, **extra)
        got = np.load(_load(tmp, c).output.path / "reference.npz")["y_hat"]
        np.testing.assert_allclose(got, ref, atol=1e-6, err_msg=ckpt)


def test_weights_that_do_not_fit_the_factory(tiny_project):
    tmp, cfg = tiny_project
    cfg["source"]["factory_args"] = {"hidden": 16}
    with pytest.raises(CheckpointError, match=r"do not fit tinymodels:Tiny\(hidden=16\): .*size mismatch"):
        _load(tmp, cfg)


def test_factory_that_does_not_import(tiny_project):
    tmp, cfg = tiny_project
    cfg["source"]["factory"] = "tinymodels_missing:Tiny"
    with pytest.raises(ConfigError, match=r"source.factory: cannot find module 'tinymodels_missing'"):
        tiny_steps(cfg)
    cfg["source"]["factory"] = "tinymodels:Nope"
    with pytest.raises(ConfigError, match=r"source.factory: module 'tinymodels' has no attribute 'Nope'"):
        _load(tmp, cfg)


def test_declared_shape_the_model_rejects(tiny_project):
    tmp, cfg = tiny_project
    np.savez(tmp / "val5.npz", x=np.zeros((6, 5), np.float32))
    cfg["inputs"][0] = {"name": "x", "dtype": "float32", "shape": [-1, 5]}
    cfg["validation"]["data"] = "val5.npz"
    with pytest.raises(ShapeError, match=r"the model rejected inputs of the declared shapes \[x\(6, 5\)\]"):
        _load(tmp, cfg)


def test_archive_with_path_traversal_is_refused(tiny_project):
    tmp, cfg = tiny_project
    with zipfile.ZipFile(tmp / "evil.pt2", "w") as z:
        z.writestr("archive/../../escape.txt", "x")
    cfg["source"]["checkpoint"] = "evil.pt2"
    cfg["source"]["trust_pickle"] = True
    with pytest.raises(CheckpointError, match=r"archive member 'archive/../../escape.txt', which escapes"):
        _load(tmp, cfg)
    assert not (tmp.parent / "escape.txt").exists()


def test_changing_the_factory_source_changes_the_key(tiny_project):
    tmp, cfg = tiny_project
    _, plan1 = tiny_steps(cfg)
    (tmp / "tinymodels.py").write_text((tmp / "tinymodels.py").read_text() + "\n# edited\n")
    _, plan2 = tiny_steps(cfg)
    assert plan1.source.digest != plan2.source.digest
