"""Broken inputs: one clear line naming the key or file, exit code 2, nothing written."""

import copy
import os
import zipfile

import numpy as np
import pytest
import torch
import yaml
from helpers import REPO, run_cli, tree, write_config


def _mutate(cfg, tmp_path, change):
    """The changed config; a change may return raw text to write instead."""
    c = copy.deepcopy(cfg)
    raw = change(c, tmp_path)
    return raw if isinstance(raw, str) else c


def _unknown_key(c, t):
    c["optimize"]["levle"] = "basic"


def _wrong_type(c, t):
    c["inputs"][0]["shape"] = "1x8x8"


def _missing_checkpoint(c, t):
    c["source"]["checkpoint"] = "examples/digits/nope.pt"


def _factory_does_not_import(c, t):
    (t / "broken_factory.py").write_text("import not_a_real_module_xyz\n")
    c["source"]["factory"] = "broken_factory:Net"
    c["source"]["checkpoint"] = str(REPO / "examples/digits/digits.pt")
    c["validation"]["data"] = str(REPO / "calibration_data/digits_val.npz")
    c["calibration"]["data"] = str(REPO / "calibration_data/digits_calib.npz")


def _shape_rejected(c, t):
    c.pop("calibration")
    c["targets"] = [x for x in c["targets"] if x["precision"] != "int8"]
    np.savez(t / "v.npz", images=np.zeros((4, 1, 12, 12), np.float32), labels=np.zeros(4, np.int64))
    c["inputs"][0] = {"name": "images", "dtype": "float32", "shape": [-1, 1, 12, 12]}
    c["validation"]["data"] = str(t / "v.npz")


def _name_with_separator(c, t):
    c["name"] = "../digits"


def _wrong_array_name(c, t):
    np.savez(t / "v.npz", pixels=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(4, np.int64))
    c["validation"]["data"] = str(t / "v.npz")


def _wrong_dtype(c, t):
    np.savez(t / "v.npz", images=np.zeros((4, 1, 8, 8), np.float64), labels=np.zeros(4, np.int64))
    c["validation"]["data"] = str(t / "v.npz")


def _wrong_shape(c, t):
    np.savez(t / "v.npz", images=np.zeros((4, 1, 28, 28), np.float32), labels=np.zeros(4, np.int64))
    c["validation"]["data"] = str(t / "v.npz")


def _full_pickle(c, t):
    from examples.digits.model import DigitsNet

    torch.save(DigitsNet(), t / "whole.pt")
    c["source"]["checkpoint"] = str(t / "whole.pt")


def _calib_wrong_name(c, t):
    np.savez(t / "cal.npz", pixels=np.zeros((4, 1, 8, 8), np.float32))
    c["calibration"]["data"] = str(t / "cal.npz")


def _calib_wrong_dtype(c, t):
    np.savez(t / "cal.npz", images=np.zeros((4, 1, 8, 8), np.float16))
    c["calibration"]["data"] = str(t / "cal.npz")


def _calib_wrong_shape(c, t):
    np.savez(t / "cal.npz", images=np.zeros((4, 8, 8), np.float32))
    c["calibration"]["data"] = str(t / "cal.npz")


def _int8_without_calibration(c, t):
    c.pop("calibration")


def _garbage_checkpoint(c, t):
    (t / "garbage.pt").write_bytes(os.urandom(4096))
    c["source"]["checkpoint"] = str(t / "garbage.pt")


def _corrupt_npz(c, t):
    (t / "v.npz").write_bytes(b"PK\x03\x04 not really a zip")
    c["validation"]["data"] = str(t / "v.npz")


def _pt2_traversal(c, t):
    with zipfile.ZipFile(t / "evil.pt2", "w") as z:
        z.writestr("model/../../../../tmp/pwned.txt", "x")
    c["source"].update(checkpoint=str(t / "evil.pt2"), trust_pickle=True)


def _python_tag(c, t):
    return "name: !!python/object/apply:os.system ['touch /tmp/mscompile-pwned']\n"


def _duplicate_key(c, t):
    return yaml.safe_dump(c, sort_keys=False) + "name: other\n"


def _huge_config(c, t):
    return yaml.safe_dump(c, sort_keys=False) + "#" + "x" * (2 << 20) + "\n"


def _factory_code_string(c, t):
    c["source"]["factory"] = "__import__('os').system('true')"


def _weights_do_not_fit(c, t):
    c["source"]["factory_args"] = {"num_classes": 10, "width": 8}


def _opt_outside_range(c, t):
    c["inputs"][0]["range"]["opt"] = [0, 1, 8, 8]


CASES = {
    "unknown key": (_unknown_key, "optimize.levle: unknown key; did you mean 'level'?"),
    "wrong type": (_wrong_type, "inputs[0].shape: Input should be a valid list"),
    "missing checkpoint": (_missing_checkpoint, "source.checkpoint: checkpoint file"),
    "factory does not import": (
        _factory_does_not_import,
        "source.factory: importing 'broken_factory' failed: ModuleNotFoundError",
    ),
    "shape the model rejects": (
        _shape_rejected,
        "inputs: the model rejected inputs of the declared shapes [images(4, 1, 12, 12)]",
    ),
    "name with a path separator": (_name_with_separator, "name: model name '../digits' must be"),
    "wrong array name": (_wrong_array_name, "v.npz: no array named 'images' (key validation.data)"),
    "wrong dtype": (
        _wrong_dtype,
        "v.npz: array 'images' has dtype float64; model input 'images' expects float32",
    ),
    "wrong shape": (
        _wrong_shape,
        "v.npz: array 'images' has shape (4, 1, 28, 28); model input 'images' expects (N, 1, 8, 8)",
    ),
    "full pickle": (_full_pickle, "set source.trust_pickle: true if you trust its origin"),
    "calibration wrong array name": (_calib_wrong_name, "cal.npz: no array named 'images' (key calibration.data)"),
    "calibration wrong dtype": (
        _calib_wrong_dtype,
        "cal.npz: array 'images' has dtype float16; model input 'images' expects float32",
    ),
    "calibration wrong shape": (
        _calib_wrong_shape,
        "cal.npz: array 'images' has shape (4, 8, 8); model input 'images' expects (N, 1, 8, 8)",
    ),
    "int8 without calibration": (_int8_without_calibration, "targets[2].precision: int8 needs a calibration: section"),
    "checkpoint of random bytes": (_garbage_checkpoint, "source.checkpoint: cannot load"),
    "corrupt validation npz": (_corrupt_npz, "v.npz as .npz"),
    "pt2 member escaping its folder": (_pt2_traversal, "which escapes its folder; refusing to load it"),
    "yaml python tag": (_python_tag, "invalid YAML"),
    "yaml duplicate key": (_duplicate_key, "duplicate key 'name'"),
    "config over 1 MiB": (_huge_config, "is too large for a model config (max 1 MiB)"),
    "factory as a code string": (_factory_code_string, "source.factory: String should match pattern"),
    "weights that do not fit": (
        _weights_do_not_fit,
        "do not fit examples.digits.model:DigitsNet(num_classes=10, width=8)",
    ),
    "opt outside range": (
        _opt_outside_range,
        "inputs[0].range: dimension 0 needs 1 <= min <= opt <= max",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_input(case, tmp_path, digits_config, monkeypatch, figures):
    monkeypatch.syspath_prepend(str(REPO))
    change, expected = CASES[case]
    home = tmp_path / "home"
    mutated = _mutate(digits_config, tmp_path, change)
    cfg = tmp_path / "model.yaml"
    if isinstance(mutated, str):
        cfg.write_text(mutated)
    else:
        write_config(mutated, cfg)
    for command in ("validate", "build"):
        r = run_cli(
            command,
            str(cfg),
            cwd=tmp_path if case == "factory does not import" else REPO,
            env={"MSCOMPILE_HOME": str(home)},
        )
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, r.stderr
        assert expected in errors[0], errors[0]
        assert "Traceback" not in r.stderr
    assert tree(tmp_path / "repo") == []
    assert [p for p in tree(home / "cache") if not p.startswith("tmp")] == []  # no cache entry
    assert tree(home / "cache/tmp") == []  # and no leftover work folder
    figures.append(f"broken input {case!r}: validate and build exit 2, one error line, nothing written")


def test_debug_shows_the_traceback(tmp_path, digits_config):
    digits_config["source"]["checkpoint"] = "nope.pt"
    cfg = write_config(digits_config, tmp_path / "model.yaml")
    r = run_cli("--debug", "build", str(cfg))
    assert r.returncode == 2 and "Traceback" in r.stderr
