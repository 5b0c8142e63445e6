"""Data sources: npz, folders, text + tokenizer, generators; checked before any work."""

import sys
import textwrap

import numpy as np
import pytest
from mscompile.config import CalibrationConfig, IOSpec
from mscompile.data import describe_dataset, load_calibration
from mscompile.errors import InputDataError

IO = IOSpec(inputs=[{"name": "ids", "dtype": "int64", "shape": [-1, "seq"]}], outputs=[{"name": "y"}])


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "tok", raising=False)  # each test's own tok.py
    (tmp_path / "tok.py").write_text(
        textwrap.dedent("""
        import numpy as np

        def tokenize(lines, width=6):
            ids = np.zeros((len(lines), width), np.int64)
            for i, line in enumerate(lines):
                codes = [len(w) for w in line.split()][:width]
                ids[i, :len(codes)] = codes
            return {"ids": ids}

        def batches(n=3):
            for i in range(n):
                yield {"ids": np.full((2, 5), i, np.int64)}
    """)
    )
    (tmp_path / "lines.txt").write_text("a bb ccc\n\ndddd e\nff\n")
    return tmp_path


def test_text_file_through_tokenizer(project):
    c = CalibrationConfig(data="lines.txt", tokenizer="tok:tokenize", tokenizer_args={"width": 4})
    feeds = load_calibration(IO, c)
    np.testing.assert_array_equal(feeds["ids"], [[1, 2, 3, 0], [4, 1, 0, 0], [2, 0, 0, 0]])


def test_generator_and_folders(project):
    feeds = load_calibration(IO, CalibrationConfig(generator="tok:batches", generator_args={"n": 3}))
    assert feeds["ids"].shape == (6, 5) and feeds["ids"][-1, 0] == 2
    (project / "npy").mkdir()
    np.save(project / "npy/ids.npy", np.ones((4, 3), np.int64))
    assert load_calibration(IO, CalibrationConfig(data="npy"))["ids"].shape == (4, 3)
    (project / "npz").mkdir()
    for i in range(2):
        np.savez(project / f"npz/part{i}.npz", ids=np.full((3, 7), i, np.int64))
    assert load_calibration(IO, CalibrationConfig(data="npz"))["ids"].shape == (6, 7)


def test_random_subset_is_seeded(project):
    np.savez(project / "c.npz", ids=np.arange(100, dtype=np.int64).reshape(50, 2))
    a = load_calibration(IO, CalibrationConfig(data="c.npz", samples=10, seed=1))["ids"]
    b = load_calibration(IO, CalibrationConfig(data="c.npz", samples=10, seed=1))["ids"]
    c = load_calibration(IO, CalibrationConfig(data="c.npz", samples=10, seed=2))["ids"]
    assert a.shape == (10, 2) and (a == b).all() and not (a == c).all()


def test_digest_follows_the_tokenizer_source_and_args(project):
    c = CalibrationConfig(data="lines.txt", tokenizer="tok:tokenize")
    d1 = describe_dataset(c, "calibration").digest
    assert (
        describe_dataset(
            CalibrationConfig(data="lines.txt", tokenizer="tok:tokenize", tokenizer_args={"width": 3}), "calibration"
        ).digest
        != d1
    )
    (project / "tok.py").write_text((project / "tok.py").read_text() + "\n# changed\n")
    assert describe_dataset(c, "calibration").digest != d1


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"tokens": np.zeros((2, 3), np.int64)},
            "no array named 'ids' (key calibration.data); the file has ['tokens']",
        ),
        ({"ids": np.zeros((2, 3), np.int32)}, "array 'ids' has dtype int32; model input 'ids' expects int64"),
        ({"ids": np.zeros((2, 3, 1), np.int64)}, "array 'ids' has shape (2, 3, 1); model input 'ids' expects (N, N)"),
    ],
)
def test_mismatches_name_the_array(project, arrays, message):
    np.savez(project / "bad.npz", **arrays)
    with pytest.raises(InputDataError) as e:
        load_calibration(IO, CalibrationConfig(data="bad.npz"))
    assert message in str(e.value)


def test_a_text_sample_beyond_the_line_limit_is_refused_before_the_tokenizer(project):
    (project / "long.txt").write_text("ok\n" + "x" * 100_001 + "\n")
    c = CalibrationConfig(data="long.txt", tokenizer="tok:tokenize", tokenizer_args={"width": 4})
    with pytest.raises(InputDataError, match=r"calibration\.data: .*long\.txt: line 2 holds 100001 characters"):
        load_calibration(IO, c)
