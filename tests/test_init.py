"""mscompile init: a commented model.yaml from one forward pass, that builds unchanged."""

import json
import os

import numpy as np
import torch
import yaml
from helpers import REPO, run_cli

SEQ_SRC = '''
import torch
from torch import nn


class Encoder(nn.Module):
    """Token ids and a mask in, one vector per sequence out: takes any length."""

    def __init__(self, vocab: int = 100, dim: int = 16):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, input_ids, attention_mask):
        h = self.proj(self.emb(input_ids)) * attention_mask.unsqueeze(-1)
        return {"pooled": h.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1), "tokens": h}
'''


def test_init_writes_a_model_yaml_that_builds_unchanged(tmp_path):
    env = {"PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
    r = run_cli(
        "init",
        "--checkpoint", str(REPO / "examples/digits/digits.pt"),
        "--factory", "examples.digits.model:DigitsNet",
        "--factory-args", '{"num_classes": 10}',
        "--input", "images:8x1x8x8",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "model.yaml").read_text()
    assert text.startswith("# model.yaml written by `mscompile init`")
    d = yaml.safe_load(text)
    assert d["inputs"] == [
        {
            "name": "images",  # forward()'s parameter name
            "dtype": "float32",
            "shape": [-1, 1, 8, 8],  # the classifier's Linear fixes 8x8: not made dynamic
            "range": {"min": [1, 1, 8, 8], "opt": [8, 1, 8, 8], "max": [64, 1, 8, 8]},
        }
    ]
    assert d["outputs"] == [{"name": "output"}]
    names = [t["name"] for t in d["targets"]]
    assert names[:3] == ["fp32", "fp16", "int8"] and "tensorrt_fp16" not in names  # no TensorRT here
    assert "# not here: tensorrt_fp16: " in text
    assert "seeded random inputs" in r.stderr
    b = run_cli("build", "model.yaml", "--json", cwd=tmp_path, env=env)
    assert b.returncode == 0, b.stderr
    out = json.loads(b.stdout)
    assert out["deployed"] and all(v["status"] == "OK" for v in out["variants"])

    again = run_cli("init", "--checkpoint", "x.pt", "--input", "x:1x2", cwd=tmp_path, env=env)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr


def test_init_finds_the_sequence_dimension_and_names_dict_outputs(tmp_path):
    (tmp_path / "seqmodel.py").write_text(SEQ_SRC)
    ns: dict = {}
    exec(compile(SEQ_SRC, "seqmodel", "exec"), ns)  # noqa: S102 - the test's own source
    torch.manual_seed(0)
    torch.save(ns["Encoder"]().state_dict(), tmp_path / "enc.pt")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, (16, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[:, 9:] = 0
    np.savez(tmp_path / "val.npz", input_ids=ids, attention_mask=mask)
    r = run_cli(
        "init", "--checkpoint", "enc.pt", "--factory", "seqmodel:Encoder", "--data", "val.npz", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)  # only JSON on stdout
    assert reply["path"] == "model.yaml" and any("INT8 needs calibration samples" in n for n in reply["notes"])
    d = yaml.safe_load((tmp_path / "model.yaml").read_text())
    ids_spec, mask_spec = d["inputs"]
    # both inputs share the length that varies: one named dim, 1 to twice the example's
    assert ids_spec["shape"] == [-1, "input_ids_dim1"] == mask_spec["shape"]
    assert ids_spec["dtype"] == "int64"
    assert ids_spec["range"] == {"min": [1, 1], "opt": [16, 12], "max": [64, 24]}
    assert d["outputs"] == [{"name": "pooled"}, {"name": "tokens"}]
    assert "calibration" not in d and all(t["precision"] != "int8" for t in d["targets"])
    b = run_cli("build", "model.yaml", "--json", cwd=tmp_path)
    assert b.returncode == 0, b.stderr
    (fp32, fp16) = json.loads(b.stdout)["variants"]
    # validation.shapes: generate gates lengths 1 and 24 as well as the data's 12
    assert sorted(fp32["buckets"]) == ["input_ids_dim1=1", "input_ids_dim1=24"]
    assert fp32["status"] == "OK" and fp16["status"] == "OK"


def test_init_bad_input_names_the_option(tmp_path):
    r = run_cli(
        "init", "--checkpoint", str(REPO / "examples/digits/digits.pt"), "--factory", "examples.digits.model:DigitsNet",
        "--input", "images:8by1", cwd=tmp_path, env={"PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"},
    )  # fmt: skip
    assert r.returncode == 2 and "--input 'images:8by1': the shape is sizes joined by x" in r.stderr
    r = run_cli(
        "init", "--checkpoint", str(REPO / "examples/digits/digits.pt"), "--factory", "examples.digits.model:DigitsNet",
        "--input", "images:8x3x8x8", cwd=tmp_path, env={"PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"},
    )  # fmt: skip
    assert r.returncode == 2 and "forward() raised" in r.stderr and "images[8, 3, 8, 8]" in r.stderr
    assert not (tmp_path / "model.yaml").exists() and not list(tmp_path.glob("*.npz"))
