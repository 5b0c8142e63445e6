"""What a pass reads is what its key digested: a checkpoint replaced during a
build, a cache shared by two checkouts after one is deleted, an edited module
the factory imports, --force over a poisoned entry, data read once."""

import json
import shutil
import textwrap

from helpers import TINY_MODEL_SRC, make_tiny_project, run_cli, write_config

SWAPPER = textwrap.dedent(
    """
    import shutil

    import numpy as np

    def batches():
        # a training job writing current.pt while the build runs: replace the
        # checkpoint after mscompile took its digest, before the model is loaded
        shutil.copyfile("tiny_1.pt", "current.pt")
        yield {"x": np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)}
    """
)


def _reference(repo, name="tiny"):
    man = json.loads(sorted((repo / name).glob("*/build_manifest.json"))[-1].read_text())
    return man["sources"]["checkpoint"]["checkpoint_sha256"], man["files"]


def test_checkpoint_swapped_mid_build_is_refused_and_never_poisons_the_cache(tmp_path):
    cfg = make_tiny_project(tmp_path, seeds=(0, 1))
    (tmp_path / "swapper.py").write_text(SWAPPER)
    shutil.copyfile(tmp_path / "tiny_0.pt", tmp_path / "current.pt")
    cfg["source"]["checkpoint"] = "current.pt"
    cfg["calibration"] = {"generator": "swapper:batches"}
    home = {"MSCOMPILE_HOME": str(tmp_path / "home")}
    r = run_cli("build", str(write_config(cfg, tmp_path / "model.yaml")), cwd=tmp_path, env=home)
    assert r.returncode == 2, r.stderr
    assert "source.checkpoint:" in r.stderr and "changed while the build was running" in r.stderr
    assert not (tmp_path / "repo").exists()

    # B (now in current.pt) builds and publishes B's digest
    cfg.pop("calibration")
    path = write_config(cfg, tmp_path / "model.yaml")
    assert run_cli("build", str(path), cwd=tmp_path, env=home).returncode == 0
    from mscompile.artifacts import sha256_file

    digest_b, files_b = _reference(tmp_path / "repo")
    assert digest_b == sha256_file(tmp_path / "tiny_1.pt")
    # A again: rebuilt as A (the cache holds no B under A's key)
    shutil.copyfile(tmp_path / "tiny_0.pt", tmp_path / "current.pt")
    r = run_cli("build", str(path), "--json", cwd=tmp_path, env=home)
    assert r.returncode == 0, r.stderr
    digest_a, files_a = _reference(tmp_path / "repo")
    assert digest_a == sha256_file(tmp_path / "tiny_0.pt") and files_a != files_b


def test_cache_shared_by_two_checkouts_survives_deleting_the_first(tmp_path):
    first = tmp_path / "checkout1"
    cfg = make_tiny_project(first)
    cache = tmp_path / "shared" / "cache"
    r = run_cli("build", str(write_config(cfg, first / "model.yaml")), "--cache-dir", str(cache), cwd=first)
    assert r.returncode == 0, r.stderr
    second = tmp_path / "checkout2"
    shutil.copytree(first, second, ignore=shutil.ignore_patterns("repo"))
    shutil.rmtree(first)
    cfg["export"]["opset"] = 17  # the export must run again, from what the cached load step holds
    r = run_cli("build", str(write_config(cfg, second / "model.yaml")), "--cache-dir", str(cache), "--json", cwd=second)
    assert r.returncode == 0, r.stderr
    steps = {p["step"]: p for p in json.loads((second / "repo/tiny/1/build_manifest.json").read_text())["passes"]}
    assert steps["load_checkpoint"]["cached"] and not steps["export_onnx"]["cached"]


def test_editing_a_module_the_factory_imports_rebuilds(tmp_path):
    cfg = make_tiny_project(tmp_path)
    (tmp_path / "tinyact.py").write_text("import torch\n\ndef act(x):\n    return torch.relu(x)\n")
    src = TINY_MODEL_SRC.replace("import torch\n", "import torch\nfrom tinyact import act\n", 1)
    (tmp_path / "tinymodels.py").write_text(src.replace("torch.relu(self.fc1(x))", "act(self.fc1(x))"))
    path = write_config(cfg, tmp_path / "model.yaml")
    home = {"MSCOMPILE_HOME": str(tmp_path / "home")}
    first = json.loads(run_cli("build", str(path), "--json", cwd=tmp_path, env=home).stdout)
    again = json.loads(run_cli("build", str(path), "--json", cwd=tmp_path, env=home).stdout)
    assert first["passes_run"] > 0 and again["passes_run"] == 0
    (tmp_path / "tinyact.py").write_text("import torch\n\ndef act(x):\n    return torch.tanh(x)\n")
    edited = json.loads(run_cli("build", str(path), "--json", cwd=tmp_path, env=home).stdout)
    assert edited["passes_run"] > 0 and edited["version"] == 2


def test_force_replaces_a_poisoned_entry(tmp_path):
    from helpers import make_driver as _driver
    from mscompile.artifacts import TorchSource, sha256_path
    from mscompile.pipeline import Step
    from test_pipeline import Cfg, Double

    src = tmp_path / "in.bin"
    src.write_bytes(b"ab")
    rec = _driver(tmp_path).run_step(Step("d", Double, Cfg()), TorchSource.of(src))
    # poison: other bytes under the same key, with a manifest that verifies
    entry = rec.output.path.parent
    (rec.output.path / "out.bin").write_bytes(b"evil")
    man = json.loads((entry / "manifest.json").read_text())
    man["artifact"]["digest"] = sha256_path(rec.output.path)
    (entry / "manifest.json").write_text(json.dumps(man))
    assert (
        _driver(tmp_path).run_step(Step("d", Double, Cfg()), TorchSource.of(src)).output.path / "out.bin"
    ).read_bytes() == b"evil"
    forced = _driver(tmp_path, force=True).run_step(Step("d", Double, Cfg()), TorchSource.of(src))
    assert (forced.output.path / "out.bin").read_bytes() == b"abab"
    after = _driver(tmp_path).run_step(Step("d", Double, Cfg()), TorchSource.of(src))
    assert after.cached and (after.output.path / "out.bin").read_bytes() == b"abab"


def test_validation_data_is_read_once_per_build(tmp_path, monkeypatch):
    from mscompile import data
    from mscompile.builder import BuildOptions
    from mscompile.tasks import build, parse_config

    cfg = make_tiny_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    reads = []
    real = data.read_source
    monkeypatch.setattr(data, "read_source", lambda *a, **k: reads.append(a[1]) or real(*a, **k))
    build(parse_config(cfg), tmp_path / "m.yaml", BuildOptions(cache_dir=tmp_path / "cache", quiet=True))
    assert reads == ["validation"]  # load, export, two gates and two profiles share one read
    assert (tmp_path / "repo/tiny/1/model.onnx").is_file()
