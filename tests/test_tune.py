"""mscompile tune: the serving-config search. The hill climb itself on a known
throughput surface (deterministic), and end to end on a real Triton with
perf_analyzer: every trial recorded, the best config written atomically beside a
kept copy, reloaded from the repository and its answers checked."""

import json
from pathlib import Path

from helpers import run_cli, write_config
from mscompile.handoff import tune_variants_lines
from mscompile.serving.tune import Candidate, neighbours, pareto, score, search, start_point
from triton_harness import server_args


def _points(throughput: float, p99: float) -> list[dict]:
    return [{"mode": "concurrency", "value": 4.0, "stable": True, "throughput": throughput, "latency_ms": {"p99": p99}}]


def test_hill_climb_finds_the_peak_under_the_slo_in_few_trials():
    """Throughput peaks at max_batch 16, delay 500 us, 2 instances; max_batch 32 is faster
    still but breaks the 10 ms p99: the search must stop at the peak under the SLO."""

    def measure(c: Candidate) -> list[dict]:
        t = 1000 - 40 * abs(c.max_batch_size - 16) - abs(c.delay_us - 500) / 5 - 300 * abs(c.instances - 2)
        p99 = 25.0 if c.max_batch_size >= 32 else 4.0
        return _points(t + (5000 if c.max_batch_size >= 32 else 0), p99)

    first = start_point({"batches": [{"batch": 1, "throughput": 10}, {"batch": 4, "throughput": 30}]}, 64, True)
    assert first == Candidate(4, 100, 1)
    best, trials = search(measure, first, 64, 4, p99_ms=10, max_trials=40)
    assert best == Candidate(16, 500, 2)
    assert len(trials) < 4 * 7 * 4  # far fewer than the whole grid (Model Analyzer's brute search)
    assert all(t["max_batch_size"] < 32 or t["throughput_under_slo"] == 0 for t in trials)
    front = pareto(trials)
    assert front and all(p["p99_ms"] <= 25.0 for p in front)


def test_preferred_batch_size_is_an_axis_of_the_search():
    """A preferred size is a neighbour only where the batcher waits (a queue delay), stays
    below max_batch_size when that shrinks, and is dropped with the delay; a surface that
    peaks at preferred 4 is climbed to it and the trial records it."""
    n = neighbours(Candidate(16, 500, 1), 64, 1)
    assert Candidate(16, 500, 1, 8) in n and all(c.preferred in (0, 8) for c in n)
    assert all(c.preferred == 0 for c in neighbours(Candidate(16, 0, 1), 64, 1))
    n = neighbours(Candidate(8, 100, 1, 4), 64, 1)
    assert Candidate(8, 0, 1, 0) in n and Candidate(4, 100, 1, 0) in n and Candidate(8, 100, 1, 2) in n
    assert Candidate(8, 100, 1, 0) in n  # back to none

    def measure(c: Candidate) -> list[dict]:
        bonus = {4: 300, 2: 150, 8: 150}.get(c.preferred, 0) if c.delay_us else 0
        return _points(1000 + 20 * c.max_batch_size.bit_length() + bonus, 4.0)

    best, trials = search(measure, Candidate(16, 100, 1), 16, 1, p99_ms=10, max_trials=20)
    assert best == Candidate(16, 100, 1, 4)
    assert any(t["preferred_batch_size"] == [4] for t in trials)
    assert "preferred 4" in best.label()


def test_the_model_yaml_lines_rebuild_the_tuned_config(tmp_path, digits_config):
    """What tune prints to keep its config (preferred size included) gives a later build the
    same batching and instances as the candidate it measured."""
    import yaml
    from mscompile.handoff import _candidate_config, model_yaml_lines
    from mscompile.tasks import load_config
    from mscompile.tritonrepo.config import base_model_config

    sig = {"inputs": [{"name": "images", "dtype": "float32", "dims": [-1, 1, 8, 8]}],
           "outputs": [{"name": "logits", "dtype": "float32", "dims": [-1, 10]}]}  # fmt: skip
    cfg = load_config(write_config(digits_config, tmp_path / "model.yaml"))
    published = base_model_config(cfg, "digits", sig, backend="onnxruntime", filename="model.onnx")
    for c in (Candidate(8, 500, 2, 4), Candidate(16, 0, 1)):
        digits_config["triton"].update(yaml.safe_load(model_yaml_lines(c))["triton"])
        kept = load_config(write_config(digits_config, tmp_path / "model.yaml"))
        rebuilt = base_model_config(kept, "digits", sig, backend="onnxruntime", filename="model.onnx")
        tuned = _candidate_config(published, c)
        for field in ("max_batch_size", "dynamic_batching", "instance_group"):
            assert getattr(rebuilt, field) == getattr(tuned, field), (c, field)


def test_a_config_without_batching_searches_instances_only():
    assert neighbours(Candidate(0, 0, 1), 0, 4) == [Candidate(0, 0, 2)]
    assert start_point(None, 0, False) == Candidate(0, 0, 1)
    assert score(_points(500, 11), p99_ms=10) == (0.0, None)


def test_tune_on_triton_records_every_trial_and_writes_a_config_that_serves(tri, pa, tmp_path, digits_config):
    cfg = digits_config
    cfg["targets"] = [cfg["targets"][0]]
    path = write_config(cfg, tmp_path / "model.yaml")
    assert run_cli("build", str(path), "-q").returncode == 0
    repo = Path(cfg["triton"]["repository"])
    before = (repo / "digits/config.pbtxt").read_text()
    args = [
        "tune", str(path), *server_args(tri), "--json", "--perf-analyzer", pa, "--slo-p99-ms", "200",
        "--perf-window", "500", "--perf-stability", "100",  # a shared CI host's noise is not under test
    ]  # fmt: skip
    r = run_cli(*args, "--dry-run", "--max-trials", "1", "--perf-concurrency", "4", "--confirm-rounds", "0")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["trials"]) == 1 and out["written"] is None and "confirmation" not in out
    assert (repo / "digits/config.pbtxt").read_text() == before  # a dry run writes nothing

    # an SLO nothing meets: past it at concurrency 1, concurrency 4 is not measured; the
    # trials still come out as JSON with the error
    # (click takes an option's last value)
    r = run_cli(*args, "--slo-p99-ms", "0.001", "--dry-run", "--max-trials", "1", "--perf-concurrency", "1,4")
    assert r.returncode == 2 and "no configuration met p99 <= 0.001 ms" in r.stderr
    out = json.loads(r.stdout)
    assert "no configuration met" in out["error"] and out["written"] is None
    for pts in (out["published"]["points"], out["trials"][0]["points"]):
        assert pts[0]["stable"] and pts[0]["value"] == 1.0
        assert pts[1]["skipped"] and pts[1]["error"] == "not measured: p99 was past 0.001 ms at concurrency 1"

    # six trials: the start and its first five neighbours, the last of which gives a preferred
    # batch size (half the start's max_batch_size) where the start batches more than 1
    r = run_cli(*args, "--max-trials", "6", "--perf-concurrency", "1,4", "--confirm-rounds", "1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["trials"]) == 6
    for t in out["trials"]:  # every candidate loaded on the real server and served
        assert {p["value"] for p in t["points"]} == {1.0, 4.0} and t["throughput_under_slo"] > 0
    start = out["trials"][0]
    if start["max_batch_size"] > 1:
        assert out["trials"][5]["preferred_batch_size"] == [start["max_batch_size"] // 2]
    assert out["best"]["throughput_under_slo"] == max(t["throughput_under_slo"] for t in out["trials"])
    assert out["published"]["throughput_under_slo"] > 0 and out["pareto"]
    assert "max_batch_size: " in out["model_yaml"]
    conf = out["confirmation"]  # the winner and the published config measured once more each
    assert len(conf["published"]) == len(conf["best"]) == 1 and conf["published"][0] > 0
    assert conf["holds"] == (conf["best_median"] > conf["published_median"] * 1.05)
    if conf["holds"]:  # written only when the lead held when measured again
        written = (repo / "digits/config.pbtxt").read_text()
        assert written == out["config_pbtxt"] != before
        assert Path(out["written"]["replaced_kept_in"]).read_text() == before
        assert out["check"]["passed"]  # reloaded from the repository, answers within the gate
    else:  # the published config was as good, measured again: left as it was, and said why
        assert out["written"] is None and (repo / "digits/config.pbtxt").read_text() == before
        assert "did not beat the published config" in out["not_written"]
    # every trial is kept for the version's report, the Pareto front marked; no MLflow run here
    # (the suite turns tracking off; tests/test_perf.py checks the run of a capacity record)
    page = Path(out["recorded"]["report"]).read_text()
    assert "Serving-config search (tune" in page and page.count("<tr><td>") >= len(out["trials"])
    assert "yes</td></tr>" in page  # at least one trial on the Pareto front
    assert "Measured again, 1 interleaved round(s)" in page
    assert "mlflow" not in out["recorded"]


def test_tune_variants_ranks_every_published_variant_on_the_server(tri, pa, tmp_path, digits_config):
    """deploy: all publishes each variant as <name>_<target>; tune --variants searches each on
    the one server and ranks them by throughput under the SLO, with the model.yaml lines
    that serve the best one with its config."""
    cfg = digits_config
    cfg["targets"] = cfg["targets"][:2]  # fp32, fp16
    path = write_config(cfg, tmp_path / "model.yaml")
    args = [
        "tune", str(path), *server_args(tri), "--json", "--perf-analyzer", pa, "--slo-p99-ms", "200",
        "--perf-window", "500", "--perf-stability", "100", "--variants", "--dry-run",
    ]  # fmt: skip
    assert run_cli("build", str(path), "-q").returncode == 0
    r = run_cli(*args)  # one model per variant is needed
    assert r.returncode == 2 and "set triton.deploy: all" in r.stderr and r.stdout == ""

    cfg["triton"]["deploy"] = "all"
    write_config(cfg, path)
    assert run_cli("build", str(path), "-q").returncode == 0
    r = run_cli(*args, "--max-trials", "1", "--perf-concurrency", "4", "--confirm-rounds", "1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {n: v["model"] for n, v in out["variants"].items()} == {"fp32": "digits_fp32", "fp16": "digits_fp16"}
    ranking = out["ranking"]
    assert sorted(r["variant"] for r in ranking) == ["fp16", "fp32"]
    assert ranking[0]["throughput_under_slo"] >= ranking[1]["throughput_under_slo"]
    for row in ranking:
        # ranked by the confirmation round's figure, not by the search's highest (noisy) one
        assert row["throughput_under_slo"] == out["variants"][row["variant"]]["confirmation"]["best_median"]
        assert out["variants"][row["variant"]]["written"] is None  # a dry run writes nothing
    assert out["best_variant"] == ranking[0]["variant"]
    assert out["model_yaml"].startswith(f"triton:\n  deploy: {out['best_variant']}\n")
    text = "\n".join(tune_variants_lines(out))  # what the terminal shows
    assert "variants by throughput with p99 <= 200.0 ms" in text and f"best: {out['best_variant']}" in text
    assert text.count("keep it in later builds") == 0  # one model.yaml block: the best variant's
    r = run_cli(*args, "--version", "1")
    assert r.returncode == 2 and "leave out --version" in r.stderr and r.stdout == ""
