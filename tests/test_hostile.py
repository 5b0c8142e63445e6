"""Hostile input, round two (issue 12): user code that exits, links planted in the
repository, YAML bombs, names with newlines, data sources that hang or inflate,
stdout under --json, and the small ones. Each case: the documented exit code,
one clear line, nothing written to the repository on exit 2, nothing hangs."""

import json
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import make_tiny_project, run_cli, tree, write_config


def _cli(tmp, cfg, command, *extra, timeout=120):
    """`mscompile <command> model.yaml <extra>` in a child process, in the project folder."""
    path = write_config(cfg, tmp / "model.yaml")
    return run_cli(command, str(path), *extra, cwd=tmp, env={"MSCOMPILE_HOME": str(tmp / "home")}, timeout=timeout)


def _errors(r):
    return [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]


@pytest.fixture
def tiny(tmp_path):
    return tmp_path, make_tiny_project(tmp_path)


# -- user code that ends the process ------------------------------------------------------

EXITERS = {
    "sys.exit(0) at import": "import sys\nsys.exit(0)\n",
    "sys.exit(0) in the factory": "import sys\n\ndef Tiny():\n    sys.exit(0)\n",
    "raise SystemExit in the factory": "def Tiny():\n    raise SystemExit('done')\n",
}


@pytest.mark.parametrize("case", sorted(EXITERS))
@pytest.mark.parametrize("command", ["build", "validate"])
def test_user_code_that_exits_never_gives_exit_0(tiny, case, command):
    tmp, cfg = tiny
    (tmp / "exiter.py").write_text(EXITERS[case])
    cfg["source"]["factory"] = "exiter:Tiny"
    r = _cli(tmp, cfg, command)
    assert r.returncode == 2, (r.returncode, r.stderr)
    (line,) = _errors(r)
    assert "the model's code called sys.exit(" in line and "exiter.py:" in line
    assert not (tmp / "repo").exists()


def test_keyboard_interrupt_from_model_code_exits_130(tiny):
    tmp, cfg = tiny
    (tmp / "interrupt.py").write_text("def Tiny():\n    raise KeyboardInterrupt\n")
    cfg["source"]["factory"] = "interrupt:Tiny"
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 130 and "interrupted" in r.stderr and not (tmp / "repo").exists()


# -- links and modes in the repository ------------------------------------------------------


def test_a_planted_lock_symlink_is_refused_and_its_target_untouched(tiny):
    tmp, cfg = tiny
    victim = tmp / "victim.txt"
    victim.write_text("precious")
    (tmp / "repo/tiny").mkdir(parents=True)
    (tmp / "repo/tiny/.mscompile.lock").symlink_to(victim)
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 2, r.stderr
    assert ".mscompile.lock is a symbolic link" in _errors(r)[0]
    assert victim.read_text() == "precious"
    assert tree(tmp / "repo/tiny") == [".mscompile.lock"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to read the repository as another user (nobody)")
def test_an_unprivileged_user_can_read_every_published_file(tmp_path):
    base = tempfile.mkdtemp(prefix="mscompile-perm-")  # /tmp/pytest-of-root is 0700: publish where others can enter
    try:
        os.chmod(base, 0o755)
        tmp = Path(base) / "proj"
        proj = make_tiny_project(tmp)
        proj["triton"]["repository"] = f"{base}/repo"
        old = os.umask(0o022)
        try:
            r = _cli(tmp, proj, "build")
        finally:
            os.umask(old)
        assert r.returncode == 0, r.stderr
        files = [os.path.join(d, f) for d, _, fs in os.walk(f"{base}/repo") for f in fs if not f.startswith(".")]
        assert any(f.endswith("config.pbtxt") for f in files)
        for f in files:
            got = subprocess.run(["cat", f], user="nobody", capture_output=True)
            assert got.returncode == 0, (f, oct(os.stat(f).st_mode), got.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_version_folder_that_is_a_link_is_pruned_as_a_link(tiny):
    tmp, cfg = tiny
    cfg["triton"].update(version_policy={"latest": 1}, retention={"keep_last": 1})
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    (tmp / "repo/tiny").mkdir(parents=True)
    (tmp / "repo/tiny/7").symlink_to(outside)  # not ours: a link named like a version
    for seed in (1, 2):  # two new versions after the link: it falls out of keep_last
        cfg["source"]["checkpoint"] = _seed(tmp, seed)
        r = _cli(tmp, cfg, "build")
        assert r.returncode == 0, r.stderr
    assert (outside / "keep.txt").read_text() == "x"
    assert not [p for p in (tmp / "repo/tiny").iterdir() if p.name.startswith(".trash-")]


def _seed(tmp, seed):
    import torch

    ns: dict = {}
    exec((tmp / "tinymodels.py").read_text(), ns)  # noqa: S102 - the test's own model
    torch.manual_seed(seed)
    torch.save(ns["Tiny"]().state_dict(), tmp / f"tiny_{seed}.pt")
    return f"tiny_{seed}.pt"


# -- YAML ----------------------------------------------------------------------------------


def test_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 10) + "]")
    bomb = tmp_path / "model.yaml"
    bomb.write_text(
        "name: tiny\nsource:\n  checkpoint: x.pt\n  factory_args:\n" + "".join(f"    {ln}\n" for ln in lines)
    )
    assert bomb.stat().st_size < 2048
    r = run_cli("validate", str(bomb), cwd=tmp_path)
    assert r.returncode == 2 and "expands to more than 100000 values" in r.stderr


def test_yaml_nested_100000_deep_is_refused(tmp_path):
    deep = tmp_path / "model.yaml"
    deep.write_text("name: " + "[" * 100_000 + "]" * 100_000 + "\n")
    r = run_cli("validate", str(deep), cwd=tmp_path)
    assert r.returncode == 2 and "nests too deep" in r.stderr


@pytest.mark.parametrize("where", ["name", "target"])
def test_a_name_with_a_trailing_newline_is_refused(tiny, where):
    tmp, cfg = tiny
    if where == "name":
        cfg["name"] = "tiny\n"
    else:
        cfg["targets"][0]["name"] = "fp32\n"
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 2 and "must be 1-128 characters" in r.stderr and not (tmp / "repo").exists()


# -- versions ------------------------------------------------------------------------------


def test_retention_keeps_the_version_the_previous_config_served(tiny):
    tmp, cfg = tiny
    cfg["triton"].pop("version_policy")  # Triton's default: latest 1
    cfg["triton"]["retention"] = {"keep_last": 1}
    got = []
    for seed in (0, 1, 2):
        cfg["source"]["checkpoint"] = "tiny_0.pt" if seed == 0 else _seed(tmp, seed)
        assert _cli(tmp, cfg, "build").returncode == 0
        got.append(sorted(int(p.name) for p in (tmp / "repo/tiny").iterdir() if p.name.isdigit()))
    # v1 survives the publish of v2 (a polling server may still serve it), goes with v3
    assert got == [[1], [1, 2], [2, 3]]


def test_specific_version_that_will_not_exist_is_refused(tiny):
    tmp, cfg = tiny
    cfg["triton"]["version_policy"] = {"specific": [5]}
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 2 and "triton.version_policy.specific: [5] names no version" in r.stderr
    assert not (tmp / "repo").exists()


def test_a_hand_edited_config_is_kept_and_reported(tiny):
    tmp, cfg = tiny
    assert _cli(tmp, cfg, "build").returncode == 0
    pb = tmp / "repo/tiny/config.pbtxt"
    pb.write_text(pb.read_text().replace("max_batch_size: 16", "max_batch_size: 4"))
    cfg["source"]["checkpoint"] = _seed(tmp, 1)
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 0 and "was edited by hand" in r.stderr
    (kept,) = [p for p in (tmp / "repo/tiny").iterdir() if p.name.startswith(".config.pbtxt.edited-")]
    assert "max_batch_size: 4" in kept.read_text() and "max_batch_size: 16" in pb.read_text()


# -- data sources ----------------------------------------------------------------------------


def test_a_fifo_in_a_data_folder_is_refused_without_hanging(tiny):
    tmp, cfg = tiny
    (tmp / "val").mkdir()
    np.save(tmp / "val/x.npy", np.zeros((4, 4), np.float32))
    os.mkfifo(tmp / "val/images.npy")
    cfg["validation"]["data"] = "val"
    r = _cli(tmp, cfg, "build", timeout=60)
    assert r.returncode == 2 and "is not a regular file" in r.stderr


def test_a_link_to_dev_zero_is_refused(tiny):
    tmp, cfg = tiny
    (tmp / "zero.npz").symlink_to("/dev/zero")
    cfg["validation"]["data"] = "zero.npz"
    r = _cli(tmp, cfg, "build", timeout=60)
    assert r.returncode == 2 and "is not a regular file" in r.stderr


def test_an_npz_that_would_inflate_past_the_limit_is_refused_before_inflating(tiny):
    tmp, cfg = tiny
    np.savez_compressed(tmp / "bomb.npz", x=np.zeros((16, 4), np.float32))
    raw = bytearray((tmp / "bomb.npz").read_bytes())
    at = raw.find(b"PK\x01\x02")  # central directory: declare 3 GiB uncompressed
    raw[at + 24 : at + 28] = struct.pack("<I", 3 << 30)
    (tmp / "bomb.npz").write_bytes(bytes(raw))
    cfg["validation"]["data"] = "bomb.npz"
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 2 and "inflates to 3.0 GiB" in r.stderr


def test_an_npy_whose_header_lies_is_refused_before_allocating(tiny):
    tmp, cfg = tiny
    (tmp / "val").mkdir()
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**9, 4)}
    with open(tmp / "val/x.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    cfg["validation"]["data"] = "val"
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 2 and "more than the file's" in r.stderr


ENDLESS = "import numpy as np\n\ndef batches():\n    while True:\n        yield {'x': np.ones((1, 4), np.float32)}\n"


def test_an_endless_generator_stops_at_samples(tiny):
    tmp, cfg = tiny
    (tmp / "endless.py").write_text(ENDLESS)
    cfg["calibration"] = {"generator": "endless:batches", "samples": 8}
    cfg["targets"].append({"name": "int8", "precision": "int8", "tolerance": {"cosine": 0.9}, "on_fail": "skip"})
    r = _cli(tmp, cfg, "build", timeout=300)
    assert r.returncode == 0, r.stderr


def test_nan_in_validation_data_is_a_data_error(tiny):
    tmp, cfg = tiny
    x = np.load(tmp / "val.npz")["x"]
    x[3, 1] = np.nan
    np.savez(tmp / "val.npz", x=x)
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 2 and "array 'x' holds NaN or inf (sample 3)" in r.stderr


def test_a_reference_that_returns_nan_is_a_model_error(tiny):
    tmp, cfg = tiny
    (tmp / "nanmodel.py").write_text(
        "import torch\nfrom tinymodels import Tiny as _T\n\nclass Tiny(_T):\n"
        "    def forward(self, x):\n        return super().forward(x) * float('nan')\n"
    )
    cfg["source"]["factory"] = "nanmodel:Tiny"
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 2 and "the PyTorch model returns NaN or inf" in r.stderr
    assert "tolerance" not in r.stderr


# -- stdout under --json ------------------------------------------------------------------


def test_json_stdout_holds_only_json_when_model_code_prints(tiny):
    tmp, cfg = tiny
    (tmp / "chatty.py").write_text(
        "import os\nprint('hello from import')\nfrom tinymodels import Tiny as _T\n\nclass Tiny(_T):\n"
        "    def forward(self, x):\n        print('forward!')\n        os.write(1, b'native write\\n')\n"
        "        return super().forward(x)\n"
    )
    cfg["source"]["factory"] = "chatty:Tiny"
    r = _cli(tmp, cfg, "build", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == "tiny"
    assert "forward!" in r.stderr and "native write" in r.stderr


# -- small ones: each a clear exit 2 before any work ------------------------------------------


def _repo_is_file(tmp, cfg):
    (tmp / "repo").write_text("not a folder")


def _model_is_file(tmp, cfg):
    (tmp / "repo").mkdir()
    (tmp / "repo/tiny").write_text("a file")


SMALL = [
    (_repo_is_file, "triton.repository:", "is a file"),
    (_model_is_file, "name:", "is not a model folder"),
    (lambda t, c: c["triton"].update(instance_group=[{"count": 2**40}]), "triton.instance_group[0].count", "1024"),
    (lambda t, c: c["triton"].update(repository=""), "triton.repository", "at least 1 character"),
    (
        lambda t, c: c.update(profile={"batch_sizes": [1, 64]}),
        "profile.batch_sizes[1]: 64 is outside the batch range",
        "",
    ),
    (
        lambda t, c: (
            c.update(name="m" * 128),
            c["targets"][0].update(name="t" * 128),
            c["triton"].update(deploy="all"),
        ),
        "over 255 bytes",
        "",
    ),
]


@pytest.mark.parametrize(("change", "key", "detail"), SMALL)
def test_small_hostile_inputs_exit_2_before_any_work(tiny, change, key, detail):
    tmp, cfg = tiny
    change(tmp, cfg)
    before = tree(tmp / "repo") if (tmp / "repo").is_dir() else None
    r = _cli(tmp, cfg, "build")
    assert r.returncode == 2, r.stderr
    assert any(key in e and detail in e for e in _errors(r)), r.stderr
    assert not (tmp / "home/cache").exists()
    if before is not None:
        assert tree(tmp / "repo") == before


def test_cache_dir_that_is_a_file(tiny):
    tmp, cfg = tiny
    (tmp / "cachefile").write_text("x")
    r = _cli(tmp, cfg, "build", "--cache-dir", str(tmp / "cachefile"))
    assert r.returncode == 2 and "--cache-dir:" in r.stderr and "is a file" in r.stderr


def test_validate_does_not_allocate_a_huge_range_max(tiny):
    tmp, cfg = tiny
    cfg["inputs"][0]["range"] = {"min": [1, 4], "opt": [4, 4], "max": [10**9, 4]}
    cfg["triton"]["max_batch_size"] = 16
    r = _cli(tmp, cfg, "validate", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "forward pass at range max: not run" in r.stdout
