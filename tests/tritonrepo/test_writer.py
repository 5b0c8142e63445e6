import json
import os
import threading

import pytest
from mscompile.errors import RepositoryError
from mscompile.tritonrepo.writer import model_lock, publish, versions


def _files(tmp_path, payload: bytes):
    src = tmp_path / f"src-{payload.hex()}"
    src.mkdir(exist_ok=True)
    (src / "model.onnx").write_bytes(payload)
    return {"model.onnx": src / "model.onnx"}


def test_versions_count_up_and_identical_files_reuse(tmp_path):
    repo = tmp_path / "repo"
    p1 = publish(repo, "m", _files(tmp_path, b"a"), 'name: "m"\n', {"x": 1})
    p2 = publish(repo, "m", _files(tmp_path, b"a"), 'name: "m"\n', {"x": 2})
    p3 = publish(repo, "m", _files(tmp_path, b"b"), 'name: "m"\n', {"x": 3})
    assert (p1.version, p1.reused) == (1, False)
    assert (p2.version, p2.reused) == (1, True)
    assert (p3.version, p3.reused) == (2, False)
    assert versions(repo / "m") == [1, 2]
    assert (repo / "m/2/model.onnx").read_bytes() == b"b"
    man = json.loads((repo / "m/2/build_manifest.json").read_text())
    assert man["version"] == 2 and man["x"] == 3 and len(man["files"]["model.onnx"]) == 64
    # only version folders, the config, the lock and the written config's digest: no staging left behind
    assert sorted(p.name for p in (repo / "m").iterdir()) == [
        ".mscompile-config.sha256",
        ".mscompile.lock",
        "1",
        "2",
        "config.pbtxt",
    ]


def test_config_is_replaced_when_it_changes(tmp_path):
    repo = tmp_path / "repo"
    publish(repo, "m", _files(tmp_path, b"a"), 'name: "m"\n', {})
    publish(repo, "m", _files(tmp_path, b"a"), 'name: "m"\nmax_batch_size: 4\n', {})
    assert "max_batch_size: 4" in (repo / "m/config.pbtxt").read_text()


def test_stale_staging_from_a_killed_build_is_removed(tmp_path):
    repo = tmp_path / "repo"
    (repo / "m/.staging-dead").mkdir(parents=True)
    (repo / "m/.staging-dead/model.onnx").write_bytes(b"half")
    publish(repo, "m", _files(tmp_path, b"a"), 'name: "m"\n', {})
    assert not (repo / "m/.staging-dead").exists()


def test_names_cannot_escape_the_repository(tmp_path):
    with pytest.raises(RepositoryError, match="outside the repository"):
        publish(tmp_path / "repo", "../evil", _files(tmp_path, b"a"), "", {})
    assert not (tmp_path / "evil").exists()


def test_lock_timeout_names_the_holder(tmp_path):
    held = threading.Event()
    release = threading.Event()

    def holder():
        with model_lock(tmp_path / "m"):
            held.set()
            release.wait(5)

    # flock locks are per open file description, so a second open in this process contends
    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    try:
        with pytest.raises(RepositoryError, match=rf"another build holds the lock \(pid {os.getpid()} on"):
            with model_lock(tmp_path / "m", timeout=0.2):
                pass
    finally:
        release.set()
        t.join()


PUBLISHER = """
import sys
from pathlib import Path

from mscompile.tritonrepo.writer import publish

repo, src = Path(sys.argv[1]), Path(sys.argv[2])
for i in range(20):
    f = src / f"m{i}.onnx"
    f.write_bytes(str(i).encode())
    # every publish changes the config too (as a change of inputs would)
    publish(repo, "m", {"model.onnx": f}, f'name: "m"\\nmax_batch_size: {i + 1}\\n', {"i": i}, keep_last=3)
"""


def test_a_polling_watcher_never_sees_a_config_beside_the_wrong_version(tmp_path, figures):
    """While another process publishes 20 versions, each with a changed config, a
    watcher reads (config.pbtxt, the newest version it serves) as fast as it can:
    the version must exist and must have been published with exactly that config."""
    import hashlib
    import subprocess
    import sys

    from mscompile.tritonrepo.config import parse

    repo, src = tmp_path / "repo", tmp_path / "src"
    src.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(repo), str(src)])
    model = repo / "m"
    seen = bad = 0
    while proc.poll() is None:
        try:
            text = (model / "config.pbtxt").read_text()
        except FileNotFoundError:
            continue
        newest = max(parse(text).version_policy.specific.versions)
        try:
            wrote = json.loads((model / str(newest) / "build_manifest.json").read_text())["config_sha256"]
        except (FileNotFoundError, ValueError):
            wrote = None
        try:
            unchanged = (model / "config.pbtxt").read_text() == text
        except FileNotFoundError:
            unchanged = False
        if unchanged:  # a stale read (the config moved on meanwhile) is not a finding
            seen += 1
            bad += wrote != hashlib.sha256(text.encode()).hexdigest()
    assert proc.returncode == 0
    figures.append(
        f"polling watcher: {seen} observations during 20 publishes with changing configs, {bad} inconsistent"
    )
    assert seen > 100 and bad == 0
    assert versions(model) == [18, 19, 20]


def test_deploys_rollback_undoes_only_what_deploy_wrote(tmp_path):
    """deploy pins a version, the check fails, it rolls back: the config before deploy
    returns. But when a build published meanwhile (max_batch_size 64 -> 32 here), its
    config stands: a rollback used to revert it to the text deploy read at its start."""
    from mscompile.tritonrepo.config import parse
    from mscompile.tritonrepo.writer import roll_back, serve_only

    repo = tmp_path / "repo"
    publish(repo, "m", _files(tmp_path, b"a"), 'name: "m"\nmax_batch_size: 64\n', {})
    publish(repo, "m", _files(tmp_path, b"b"), 'name: "m"\nmax_batch_size: 64\n', {})
    config = repo / "m/config.pbtxt"
    original = config.read_text()
    previous, wrote = serve_only(repo, "m", {1})
    assert previous == original and list(parse(config.read_text()).version_policy.specific.versions) == [1]
    assert roll_back(repo, "m", wrote, previous, None) and config.read_text() == original

    previous, wrote = serve_only(repo, "m", {1})
    publish(repo, "m", _files(tmp_path, b"c"), 'name: "m"\nmax_batch_size: 32\n', {})  # a build, meanwhile
    theirs = config.read_text()
    assert not roll_back(repo, "m", wrote, previous, None)
    assert config.read_text() == theirs and parse(theirs).max_batch_size == 32


def _config(output: str, policy: str = "latest { num_versions: 2 }") -> str:
    return (
        f'name: "m"\nmax_batch_size: 8\ninput {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }}\n'
        f'output {{ name: "{output}" data_type: TYPE_FP32 dims: [ 3 ] }}\nversion_policy {{ {policy} }}\n'
    )


def _served(repo):
    from mscompile.tritonrepo.config import parse

    return list(parse((repo / "m/config.pbtxt").read_text()).version_policy.specific.versions)


def test_a_config_serves_only_versions_published_with_its_io(tmp_path):
    """Output logits renamed scores: the config declared scores while serving v1, whose
    model outputs logits (Triton would fail its requests)."""
    repo = tmp_path / "repo"
    publish(repo, "m", _files(tmp_path, b"a"), _config("logits"), {})
    p2 = publish(repo, "m", _files(tmp_path, b"b"), _config("scores"), {})
    assert _served(repo) == [2]
    assert p2.warnings == [
        "m: version(s) 1 were published with other inputs/outputs (or by an older mscompile): "
        "the new config.pbtxt does not serve them"
    ]
    p3 = publish(repo, "m", _files(tmp_path, b"c"), _config("scores"), {})
    assert _served(repo) == [2, 3] and p3.warnings == []
    with pytest.raises(Exception, match=r"version\(s\) 1 of m were published with other inputs/outputs"):
        publish(repo, "m", _files(tmp_path, b"d"), _config("scores", "specific { versions: [ 1 ] }"), {})
    assert _served(repo) == [2, 3] and versions(repo / "m") == [1, 2, 3]  # the refusal changed nothing


def test_a_version_without_a_signature_is_not_served_under_a_new_config(tmp_path):
    """Versions published by an older mscompile record no io_sha256: their I/O is unknown."""
    repo = tmp_path / "repo"
    publish(repo, "m", _files(tmp_path, b"a"), _config("scores"), {})
    man = repo / "m/1/build_manifest.json"
    man.write_text(json.dumps({k: v for k, v in json.loads(man.read_text()).items() if k != "io_sha256"}))
    p2 = publish(repo, "m", _files(tmp_path, b"b"), _config("scores"), {})
    assert _served(repo) == [2] and "version(s) 1 were published with other inputs/outputs" in p2.warnings[0]
