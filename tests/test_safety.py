"""Repository and cache safety: builds killed at random points, parallel builds,
retention. Each test adds its measured figures to the run's closing summary."""

import random
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
from helpers import check_cache, check_repository, make_tiny_project, run_cli, write_config
from mscompile.tritonrepo.config import parse
from mscompile.tritonrepo.writer import publish, versions


def _build(cwd, cfg_path, home, *extra, timeout=300, env=None):
    env = {"MSCOMPILE_HOME": str(home), "MSCOMPILE_NO_MLFLOW": "1", **(env or {})}
    return run_cli("build", str(cfg_path), "-q", *extra, cwd=cwd, env=env, timeout=timeout)


# named points a build passes (compiler/faults.py); '#n' is the n-th time
KILL_POINTS = [
    "step:start#1",
    "step:start#3",
    "step:ran#2",
    "step:ran#4",
    "cache:put#1",
    "cache:put#3",
    "publish:config",
    "publish:staged",
    "publish:renamed",
]


def test_builds_killed_at_named_points(tmp_path, figures):
    """20 builds, each killed by SIGKILL at a fault point chosen by a seeded RNG
    (MSCOMPILE_KILL_AT): no timing involved, so every kill lands where intended."""
    rng = random.Random(1234)
    cfg = make_tiny_project(tmp_path, seeds=(0, 1, 2))
    home = tmp_path / "home"
    kills = partial = poisoned = followups_ok = 0
    runs = 20
    where = []
    for i in range(runs):
        cfg["source"]["checkpoint"] = f"tiny_{i % 3}.pt"
        path = write_config(cfg, tmp_path / "model.yaml")
        at = rng.choice(KILL_POINTS)
        r = _build(tmp_path, path, home, "--force", env={"MSCOMPILE_KILL_AT": at})
        if r.returncode == -signal.SIGKILL:
            kills += 1
            where.append(at)
        partial += len(check_repository(tmp_path / "repo"))
        poisoned += len(check_cache(home / "cache")[1])
        r = _build(tmp_path, path, home)
        followups_ok += r.returncode == 0
        assert r.returncode == 0, r.stderr
        assert check_repository(tmp_path / "repo") == []
    good, bad = check_cache(home / "cache")
    figures.append(
        f"fault injection: {runs} builds, {kills} killed by SIGKILL at named points ({len(set(where))} distinct), "
        f"{partial} partial versions, {poisoned} poisoned cache entries, {followups_ok}/{runs} following builds "
        f"succeeded, {good} verified cache entries"
    )
    assert kills == runs and partial == 0 and poisoned == 0 and not bad
    assert versions(tmp_path / "repo/tiny") == sorted(versions(tmp_path / "repo/tiny"))


def _parallel(tmp_path, home, paths):
    with ThreadPoolExecutor(len(paths)) as pool:
        return list(pool.map(lambda p: _build(tmp_path, p, home), paths))


def test_parallel_builds_get_distinct_whole_versions(tmp_path, figures):
    seeds = tuple(range(8))
    cfg = make_tiny_project(tmp_path, seeds=seeds)
    home = tmp_path / "home"
    paths = []
    for s in seeds:
        cfg["source"]["checkpoint"] = f"tiny_{s}.pt"
        paths.append(write_config(cfg, tmp_path / f"model_{s}.yaml"))
    t0 = time.time()
    results = _parallel(tmp_path, home, paths)
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results if r.returncode]
    model = tmp_path / "repo/tiny"
    assert versions(model) == list(range(1, 9))
    assert check_repository(tmp_path / "repo") == []
    assert parse((model / "config.pbtxt").read_text()).name == "tiny"
    outs = set()
    for v in range(1, 9):
        sess = ort.InferenceSession(str(model / str(v) / "model.onnx"), providers=["CPUExecutionProvider"])
        outs.add(sess.run(None, {"x": np.ones((1, 4), np.float32)})[0].tobytes())
    assert len(outs) == 8  # eight different models, one per checkpoint
    different = time.time() - t0

    cfg["source"]["checkpoint"] = "tiny_0.pt"
    cfg["triton"]["repository"] = "repo_same"
    same = write_config(cfg, tmp_path / "model_same.yaml")
    t0 = time.time()
    results = _parallel(tmp_path, home, [same] * 8)
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results if r.returncode]
    assert versions(tmp_path / "repo_same/tiny") == [1]
    good, bad = check_cache(home / "cache")
    assert not bad
    figures.append(
        f"concurrency: 8 parallel builds, 8 checkpoints -> versions {versions(model)} in {different:.1f}s; "
        f"8 parallel identical builds -> {len(versions(tmp_path / 'repo_same/tiny'))} version in "
        f"{time.time() - t0:.1f}s; shared cache: {good} entries verified, {len(bad)} corrupt"
    )


def test_retention_keeps_what_the_policy_serves(tmp_path):
    from mscompile.errors import ConfigError
    from mscompile.tritonrepo.config import parse

    repo = tmp_path / "repo"
    latest2 = 'name: "m"\nversion_policy { latest { num_versions: 2 } }\n'

    def pub(payload, config=latest2, **kw):
        src = tmp_path / f"src-{payload}"
        src.mkdir(exist_ok=True)
        (src / "model.onnx").write_bytes(payload.encode())
        return publish(repo, "m", {"model.onnx": src / "model.onnx"}, config, {}, **kw)

    for i in range(5):
        pub(f"v{i}", keep_last=2)
    # served now (latest 2: 4, 5) and what the previous config served (3, 4): a polling
    # server may not have switched yet
    assert versions(repo / "m") == [3, 4, 5]
    on_disk = parse((repo / "m/config.pbtxt").read_text()).version_policy
    assert list(on_disk.specific.versions) == [4, 5]  # the rule, pinned to what it serves
    p = pub("v5", keep_last=1)
    assert p.version == 6 and p.pruned == [3]
    assert versions(repo / "m") == [4, 5, 6]
    assert pub("v5", keep_last=1).reused  # identical files: nothing published, nothing pruned
    with pytest.raises(ConfigError, match=r"specific: \[1\] names no version of m"):
        pub("v6", config='name: "m"\nversion_policy { specific { versions: 1 } }\n')
    assert versions(repo / "m") == [4, 5, 6]  # refused before anything was written
    assert not list((repo / "m").glob(".trash-*"))


@pytest.mark.parametrize(
    ("policy", "keep", "message"),
    [
        ({"all": True}, 2, "version_policy all serves every version"),
        ({"latest": 3}, 2, "keep_last: 2 is below version_policy.latest (3)"),
    ],
)
def test_retention_conflicting_with_the_policy_is_refused(tmp_path, policy, keep, message):
    from mscompile.errors import ConfigError
    from mscompile.tasks import parse_config

    cfg = make_tiny_project(tmp_path)
    cfg["triton"].update(version_policy=policy, retention={"keep_last": keep})
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(cfg)


def test_two_builds_writing_one_report_name_do_not_collide(tmp_path, monkeypatch):
    """Concurrent builds that reuse one version write the same report file name (CI saw
    one of 8 identical parallel builds fail with FileNotFoundError on the shared
    '<stamp>-v1.tmp'). A second writer interleaved between the first one's write and its
    rename, deterministically: both must land, the file is whole, no temporary is left."""
    import os

    from mscompile import report

    out = tmp_path / "reports/tiny/20261203-090615-v1.html"
    real_replace = os.replace
    interleaved = []

    def replace(src, dst):
        if not interleaved:
            interleaved.append(src)
            report.write_report({"name": "tiny", "variants": []}, out)  # the other build
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    report.write_report({"name": "tiny", "variants": []}, out)
    assert interleaved and out.read_text(encoding="utf-8").rstrip().endswith("</html>")
    assert [p.name for p in out.parent.iterdir()] == [out.name]
