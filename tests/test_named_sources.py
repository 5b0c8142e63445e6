"""torchvision and timm models by name with a local weights file:
`source: {torchvision: resnet18, checkpoint: w.pth}` and targets. The libraries' own
model code (see helpers.vision_libraries for how they import here); the published
graphs are checked against the library's model on fresh inputs."""

import json
import os

import numpy as np
import pytest
import torch
from helpers import run_cli, vision_libraries, write_config


@pytest.fixture(scope="module")
def vision_env():
    path = vision_libraries()
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(path) if path else "", os.environ.get("PYTHONPATH", "")]))}
    return path, env


def _library(path, name):
    import importlib
    import sys

    if path and str(path) not in sys.path:
        sys.path.insert(0, str(path))
    return importlib.import_module(name)


def _build(tmp_path, env, doc):
    path = write_config(doc, tmp_path / f"{doc['name']}.yaml")
    return run_cli("build", str(path), "--json", cwd=tmp_path, env=env)


def _published(tmp_path, name):
    import onnxruntime as ort

    manifest = json.loads((tmp_path / f"model_repository/{name}/1/build_manifest.json").read_text())
    sess = ort.InferenceSession(
        str(tmp_path / f"model_repository/{name}/1/model.onnx"), providers=["CPUExecutionProvider"]
    )
    return manifest["config"], sess


def test_a_torchvision_resnet_by_name_builds_and_equals_torchvision(tmp_path, vision_env):
    path, env = vision_env
    tv = _library(path, "torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(num_classes=10).eval()
    torch.save(model.state_dict(), tmp_path / "resnet18.pth")
    doc = {
        "name": "resnet",
        "source": {"torchvision": "resnet18", "checkpoint": "resnet18.pth", "model_args": {"num_classes": 10},
                   "image_size": 64},
        "targets": [{"name": "fp32", "tolerance": {"max_rel": 1e-4}},
                    {"name": "int8", "precision": "int8", "tolerance": {"cosine": 0.98}}],
    }  # fmt: skip
    r = _build(tmp_path, env, doc)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [v["status"] for v in out["variants"]] == ["OK", "OK"], out["variants"]
    assert "synthetic" in r.stderr  # no data given: said
    cfg, sess = _published(tmp_path, "resnet")
    assert cfg["inputs"][0]["name"] == "images" and cfg["inputs"][0]["shape"] == [-1, 3, 64, 64]
    assert [o["name"] for o in cfg["outputs"]] == ["logits"]
    assert cfg["source"]["factory"] == "mscompile.named:torchvision_model"
    assert cfg["source"]["factory_args"]["version"] == tv.__version__
    x = np.random.default_rng(5).standard_normal((3, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = sess.run(None, {"images": x})[0]
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


def test_a_timm_model_with_an_image_folder_and_a_dict_output_segmenter(tmp_path, vision_env):
    """timm at its preset (the image folder's non-square images resized and center-cropped
    as timm's own preset does); a torchvision segmenter whose dict output becomes two
    named outputs found by a shape-only pass."""
    from PIL import Image

    path, env = vision_env
    timm = _library(path, "timm")
    tv = _library(path, "torchvision")
    torch.manual_seed(0)
    m = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=7).eval()
    torch.save(m.state_dict(), tmp_path / "mnv3.pth")
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(tmp_path / f"images/{i}.png")
    doc = {
        "name": "mnv3",
        "source": {"timm": "mobilenetv3_small_050", "checkpoint": "mnv3.pth", "model_args": {"num_classes": 7},
                   "image_size": 64},
        "validation": {"data": "images"},
        "targets": [{"name": "fp32", "tolerance": {"max_rel": 1e-4}}],
    }  # fmt: skip
    r = _build(tmp_path, env, doc)
    assert r.returncode == 0, r.stderr
    cfg, sess = _published(tmp_path, "mnv3")
    assert cfg["validation"]["generator"] == "mscompile.named:images"
    assert cfg["validation"]["generator_args"]["preset"]["mean"] == list(m.pretrained_cfg["mean"])
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    assert np.abs(sess.run(None, {"images": x})[0] - want).max() / np.abs(want).max() < 1e-4

    seg = tv.models.get_model("lraspp_mobilenet_v3_large", weights=None, weights_backbone=None, num_classes=3).eval()
    torch.save(seg.state_dict(), tmp_path / "seg.pth")
    doc = {
        "name": "seg",
        "source": {"torchvision": "lraspp_mobilenet_v3_large", "checkpoint": "seg.pth", "image_size": 64,
                   "model_args": {"num_classes": 3, "weights_backbone": None}},
        "targets": [{"name": "fp32", "tolerance": {"max_rel": 1e-4}}],
    }  # fmt: skip
    r = _build(tmp_path, env, doc)
    assert r.returncode == 0, r.stderr
    cfg, sess = _published(tmp_path, "seg")
    assert [o["name"] for o in cfg["outputs"]] == ["out"]
    with torch.no_grad():
        want = seg(torch.from_numpy(x))["out"].numpy()
    got = sess.run(["out"], {"images": x})[0]
    assert got.shape == (2, 3, 64, 64) and np.abs(got - want).max() / np.abs(want).max() < 1e-4


def test_the_input_size_is_the_librarys_preset(vision_env):
    """Without image_size: torchvision's registered weights' crop size, timm's
    pretrained_cfg input size (a shape-only pass, nothing downloaded)."""
    from mscompile.named import expand

    path, _ = vision_env
    _library(path, "torchvision")
    _library(path, "timm")
    for source, size in (
        ({"torchvision": "resnet18"}, [224, 224]),
        ({"torchvision": "inception_v3", "model_args": {"init_weights": False}}, [299, 299]),
        ({"timm": "vit_tiny_patch16_384"}, [384, 384]),
    ):
        doc = expand({"name": "m", "source": {**source, "checkpoint": "w.pth"}, "targets": [{"name": "fp32"}]}, "m")
        assert doc["inputs"][0]["shape"] == [-1, 3, *size], (source, doc["inputs"])
        assert doc["outputs"] == [{"name": "logits"}], doc["outputs"]


def test_named_source_errors_name_the_key_and_the_fix(tmp_path, vision_env):
    _, env = vision_env
    (tmp_path / "w.pth").write_bytes(b"")
    cases = [
        ({"torchvision": "resnet181", "checkpoint": "w.pth"}, "torchvision 0.29.1"),
        ({"torchvision": "resnet181", "checkpoint": "w.pth"}, "has no model 'resnet181'; close: ['resnet18'"),
        ({"timm": "resnet18"}, "source.checkpoint: a timm model needs its weights file"),
        ({"torchvision": "resnet18", "timm": "resnet18", "checkpoint": "w.pth"}, "not both"),
        ({"torchvision": "resnet18", "checkpoint": "w.pth", "model_args": {"colours": 3}}, "source.model_args"),
        ({"timm": "resnet18", "checkpoint": "w.pth", "image_size": [1, 2, 3]}, "source.image_size: give one size"),
    ]
    for source, want in cases:
        d = {"name": "m", "source": source, "targets": [{"name": "fp32"}]}
        r = run_cli("validate", str(write_config(d, tmp_path / "m.yaml")), cwd=tmp_path, env=env)
        assert r.returncode == 2 and want in r.stderr, (source, r.stderr)
    d = {"name": "m", "source": {"torchvision": "resnet18", "checkpoint": "w.pth"}, "targets": [{"name": "fp32"}]}
    r = run_cli("validate", str(write_config(d, tmp_path / "m.yaml")), cwd=tmp_path, env={"PYTHONPATH": ""})
    if vision_env[0] is not None:  # where torchvision only imports through the unpacked folder
        assert r.returncode == 2 and "source.torchvision: torchvision does not import here" in r.stderr, r.stderr
