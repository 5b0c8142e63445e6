import json

from mscompile.artifacts import OnnxModel, sha256_path
from mscompile.cache import Cache, cache_key


def _entry(cache: Cache, key: str, payload: bytes = b"weights"):
    work = cache.new_workdir("t")
    out = work / "output"
    out.mkdir()
    (out / "model.onnx").write_bytes(payload)
    art = OnnxModel.of(out, {"node_count": 3})
    return cache.put(key, work, art, {"status": "OK", "metrics": {"n": 1}})


def test_key_is_full_sha256_and_sensitive_to_every_field():
    base = {"pass": "p", "pass_version": 1, "config": {"a": 1}, "input": {"digest": "x"}}
    k = cache_key(base)
    assert len(k) == 64
    assert cache_key(dict(base)) == k
    for change in (
        {"pass_version": 2},
        {"config": {"a": 2}},
        {"input": {"digest": "y"}},
        {"libraries": {"onnx": "1"}},
    ):
        assert cache_key({**base, **change}) != k


def test_put_then_get_round_trips(tmp_path):
    cache = Cache(tmp_path)
    stored = _entry(cache, "k1")
    assert stored.artifact.path == tmp_path / "k1" / "output"
    got = cache.get("k1")
    assert got is not None
    assert got.artifact.digest == sha256_path(tmp_path / "k1" / "output")
    assert got.artifact.meta == {"node_count": 3}
    assert got.manifest["metrics"] == {"n": 1}
    assert list((tmp_path / "tmp").iterdir()) == []  # the work folder was moved, not copied


def test_corrupt_entry_is_discarded_with_a_warning(tmp_path):
    cache = Cache(tmp_path)
    _entry(cache, "k1")
    (tmp_path / "k1" / "output" / "model.onnx").write_bytes(b"tampered")
    warnings = []
    assert cache.get("k1", warn=warnings.append) is None
    assert not (tmp_path / "k1").exists()
    assert "does not match its recorded digest" in warnings[0]


def test_entry_without_manifest_is_a_miss(tmp_path):
    cache = Cache(tmp_path)
    (tmp_path / "k2" / "output").mkdir(parents=True)
    assert cache.get("k2") is None


def test_unreadable_manifest_is_discarded(tmp_path):
    cache = Cache(tmp_path)
    _entry(cache, "k3")
    (tmp_path / "k3" / "manifest.json").write_text("{not json")
    assert cache.get("k3", warn=lambda m: None) is None
    assert not (tmp_path / "k3").exists()


def test_second_writer_of_same_key_keeps_the_first(tmp_path):
    """Two builds finish the same key: the second gets the stored entry (the first's
    bytes, not its own), and its work folder is gone."""
    cache = Cache(tmp_path)
    first = _entry(cache, "k4", b"one")
    second = _entry(cache, "k4", b"two, from another build")
    assert second.artifact.digest == first.artifact.digest
    assert second.artifact.path == tmp_path / "k4" / "output"
    assert (tmp_path / "k4" / "output" / "model.onnx").read_bytes() == b"one"
    assert json.loads((tmp_path / "k4" / "manifest.json").read_text())["key"] == "k4"
    assert list((tmp_path / "tmp").iterdir()) == []
