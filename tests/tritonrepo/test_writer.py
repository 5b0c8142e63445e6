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
    # only version folders, the config and the lock: no staging left behind
    assert sorted(p.name for p in (repo / "m").iterdir()) == [
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
