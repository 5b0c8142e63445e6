"""Serving-config search side by side: `mscompile tune` against Triton Model Analyzer's own
searches (brute and quick), on the same Triton server, model repository and perf_analyzer;
then every winner (and the published config) measured again, interleaved, by one
perf_analyzer command line, and ranked by throughput under the p99 objective.

  python bench/bench_tune.py [--slo-p99-ms 10] [--concurrency 1,4,16] [--rounds 3]
                             [--write docs/benchmarks-tune.md]

The server is the test suite's Triton 2.51 (from the nvidia-pytriton wheel) with its
Python-backend stand-in for the onnxruntime backend (tests/triton_harness.py); perf_analyzer
is the PyPI wheel under the suite's loader wrapper (tests/perf_harness.py). Model Analyzer
(PyPI triton-model-analyzer 1.58) runs from its own venv (bench/peers/envs.py, peer
`model_analyzer`, installed on first use), CPU only, local launch mode. The model: examples/digits (fp32).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
WORK = ROOT / "bench" / ".work" / "tune"


def build_digits() -> Path:
    """examples/digits/model.yaml, fp32 only, published into WORK/repo; the config path."""
    import mscompile
    import yaml

    cfg = yaml.safe_load((ROOT / "examples/digits/model.yaml").read_text())
    cfg["targets"] = [cfg["targets"][0]]
    cfg["triton"]["repository"] = str(WORK / "repo")
    for sec in ("validation", "calibration"):
        if cfg.get(sec) and cfg[sec].get("data"):
            cfg[sec]["data"] = str(ROOT / cfg[sec]["data"])
    path = WORK / "model.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    mscompile.build(path, cache_dir=WORK / "cache", quiet=True)
    return path


def run_tune(path: Path, tri: Any, pa: str, a: argparse.Namespace) -> dict[str, Any]:
    """mscompile tune --dry-run on its own server: the summary, its wall time."""
    cmd = [
        sys.executable, "-m", "mscompile.cli", "tune", str(path), "--json", "--dry-run", "--no-mlflow",
        "--tritonserver", str(tri.binary), f"--tritonserver-arg=--backend-directory={tri.backends}",
        "--perf-analyzer", pa, "--slo-p99-ms", str(a.slo_p99_ms), "--perf-concurrency", a.concurrency,
        "--perf-window", str(a.window_ms), "--max-trials", str(a.max_trials), "--max-instances", str(a.max_instances),
        "--cache-dir", str(WORK / "cache"),
    ]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=3600)  # model.yaml paths
    wall = time.perf_counter() - t0
    (WORK / "tune.log").write_text(r.stderr)
    if r.returncode != 0:
        return {"error": f"exit {r.returncode}: {r.stderr.strip()[-400:]}", "wall_s": wall}
    s = json.loads(r.stdout)
    return {
        "wall_s": wall,
        "configs": len(s["trials"]) + 1,  # trial 0 is the published config
        # every point perf_analyzer measured (search and confirmation; not the skipped ones)
        "runs": sum(not p.get("skipped") for pts in sweeps(s) for p in pts),
        "best": s["best"]["candidate"],
        "config": s["config_pbtxt"],
        # the confirmation rounds' median where it measured the winner again
        "found": s["confirmation"]["best_median"] if s.get("confirmation") else s["best"]["throughput_under_slo"],
        "confirmation": s.get("confirmation"),
        "trials": [{k: t[k] for k in t if k != "points"} for t in s["trials"]],
    }


def host() -> str:
    """The CPU model, its CPU count and its vector ISA extensions (mscompile's own view)."""
    import os

    from mscompile.device import cpu_flags, cpu_model

    return f"{cpu_model()}, {os.cpu_count()} CPUs, {' '.join(cpu_flags()) or 'no AVX2'}"


def spread(measured: dict[str, Any]) -> float:
    """The largest ratio of one config's highest to its lowest round (rounds that met the SLO)."""
    ratios = [max(v) / min(v) for m in measured.values() if (v := [x for x in m["rounds"] if x > 0])]
    return max(ratios, default=1.0)


def sweeps(s: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Every sweep a tune summary holds: the published config's, each trial's, the confirmation's."""
    conf = (s.get("confirmation") or {}).get("points", {})
    return [
        s["published"]["points"],
        *(t["points"] for t in s["trials"]),
        *conf.get("published", []),
        *conf.get("best", []),
    ]


def run_model_analyzer(mode: str, tri: Any, pa: str, a: argparse.Namespace) -> dict[str, Any]:
    """Model Analyzer's `profile` with `mode` (brute | quick) over the same space: max batch
    1..64, 1..max-instances CPU instances, the same concurrencies, the same SLO as a
    constraint. The best config it reports, its wall time and how many it measured."""
    import yaml

    from bench.peers.envs import env_dir, make

    st = make("model_analyzer")  # its own venv, installed on first use
    if not st["ok"]:
        return {"error": f"Model Analyzer could not be installed: {st['error']}"}
    exe = env_dir("model_analyzer") / "bin" / "model-analyzer"
    out = WORK / f"ma_{mode}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    repo = out / "models"
    shutil.copytree(WORK / "repo", repo, symlinks=True)
    conc = [int(c) for c in a.concurrency.split(",")]
    doc = {
        "model_repository": str(repo),
        "output_model_repository_path": str(out / "output_models"),
        "override_output_model_repository": True,
        "export_path": str(out / "results"),
        "checkpoint_directory": str(out / "checkpoints"),
        "triton_launch_mode": "local",
        "triton_server_path": str(tri.binary),
        "triton_server_flags": {"backend_directory": str(tri.backends)},
        "triton_output_path": str(out / "triton.log"),
        "perf_analyzer_path": pa,
        "perf_analyzer_flags": {"measurement-interval": a.window_ms},
        "client_protocol": "grpc",
        "run_config_search_mode": mode,
        "run_config_search_max_model_batch_size": 64,
        "run_config_search_max_instance_count": a.max_instances,
        "run_config_search_max_concurrency": max(conc),
        "run_config_search_min_concurrency": min(conc),
        "profile_models": {
            "digits": {
                "cpu_only": True,
                "constraints": {"perf_latency_p99": {"max": a.slo_p99_ms}},
                "objectives": {"perf_throughput": 10},
            }
        },
        "skip_summary_reports": True,
        "gpus": [],
    }
    if mode == "brute":  # the same points as tune's; quick search picks its own (it refuses a list)
        doc["profile_models"]["digits"]["parameters"] = {"concurrency": conc}
    (out / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    t0 = time.perf_counter()
    log = out / "log.txt"
    with log.open("w") as f:  # its own session: a search that hangs is stopped with the servers it started
        proc = subprocess.Popen(
            [str(exe), "profile", "-f", str(out / "config.yaml")], stdout=f, stderr=subprocess.STDOUT, text=True,
            cwd=out, start_new_session=True,
        )  # fmt: skip
        try:
            proc.wait(timeout=a.ma_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"error": f"did not finish within {a.ma_timeout_s} s (stopped; its checkpoint is not taken as a "
                    "result)", "wall_s": time.perf_counter() - t0}  # fmt: skip
    wall = time.perf_counter() - t0
    text = log.read_text()
    ckpt = out / "checkpoints" / "0.ckpt"
    if proc.returncode != 0:  # a checkpoint may be there, but the search did not finish: not a result
        tail = text.strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode} after {wall:.0f} s: {' | '.join(tail)[-300:]}", "wall_s": wall}
    if not ckpt.exists():
        tail = text.strip().splitlines()[-6:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)[-500:]}", "wall_s": wall}
    # its measurements, from the checkpoint it writes (the CSV reports come from `report`)
    results = json.loads(ckpt.read_text())["ResultManager.results"]["_results"].get("digits", {})
    measured = []
    for config, entry in results.items():
        for run in entry[1].values():
            for m in run["_model_config_measurements"]:
                tags = m["_non_gpu_data_from_tag"]
                measured.append(
                    {
                        "config": config,
                        "concurrency": m["_model_specific_pa_params"]["concurrency-range"],
                        "throughput": tags["perf_throughput"][1]["_value"],
                        "p99_ms": tags["perf_latency_p99"][1]["_value"],
                    }
                )
    tried = len(re.findall(r"Creating model config: ", text))
    failed = re.findall(r"Model (\S+) load failed: (.*)", text)
    ok = [m for m in measured if m["p99_ms"] <= a.slo_p99_ms]
    if not ok:
        return {"error": "no measured config met the SLO", "wall_s": wall, "configs": tried}
    best = max(ok, key=lambda m: m["throughput"])
    cfg_file = out / "output_models" / best["config"] / "config.pbtxt"
    return {
        "wall_s": wall,
        "configs": tried,
        "failed_to_load": [f"{n}: {why[:200]}" for n, why in failed],
        "runs": len(measured),
        "best": best["config"],
        "config": cfg_file.read_text() if cfg_file.exists() else "",
        "found": best["throughput"],
    }


def describe(text: str) -> str:
    """A config's batching and instances in a few words."""
    from mscompile.tritonrepo.config import parse

    mc = parse(text)
    inst = sum(g.count for g in mc.instance_group) or 1
    if mc.max_batch_size <= 0:
        return f"no batching, {inst} instance(s)"
    delay = mc.dynamic_batching.max_queue_delay_microseconds if mc.HasField("dynamic_batching") else None
    pref = list(mc.dynamic_batching.preferred_batch_size)
    return (
        f"max_batch {mc.max_batch_size}, "
        + ("no batcher" if delay is None else f"{delay} us delay")
        + (f", preferred {pref}" if pref else "")
        + f", {inst} instance(s)"
    )


def perf_point(pa: str, url: str, c: int, window_ms: int, tmp: Path) -> dict[str, float] | None:
    """One perf_analyzer point (batch-1 requests, gRPC): throughput and p99 (ms)."""
    report = tmp / f"c{c}.csv"
    cmd = [
        pa, "-m", "digits", "-u", url, "-i", "grpc", "-b", "1", "--concurrency-range", f"{c}:{c}",
        "-p", str(window_ms), "-s", "100", "--percentile", "99", "-f", str(report),
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not report.exists():
        return None
    row = next(csv.DictReader(report.open()))
    return {"throughput": float(row["Inferences/Second"]), "p99_ms": float(row["p99 latency"]) / 1000.0}


def side_by_side(configs: dict[str, str], tri: Any, pa: str, a: argparse.Namespace) -> dict[str, Any]:
    """Every config loaded in turn (config override) on one server and measured at every
    concurrency, `rounds` times interleaved; per config the median throughput under the SLO."""
    import tritonclient.grpc as grpc
    from google.protobuf import json_format
    from mscompile.handoff import LocalServer
    from mscompile.tritonrepo.config import parse

    parsed = {}
    for name, text in configs.items():
        mc = parse(text)
        mc.name = "digits"
        parsed[name] = json_format.MessageToJson(mc, preserving_proto_field_name=True)
    conc = [int(c) for c in a.concurrency.split(",")]
    scores: dict[str, list[float]] = {n: [] for n in configs}
    points: dict[str, list[dict[str, Any]]] = {n: [] for n in configs}
    with (
        tempfile.TemporaryDirectory() as td,
        LocalServer(tri.binary, WORK / "repo", WORK / "triton.log", tri.args) as s,
    ):
        client = grpc.InferenceServerClient(s.grpc_url)
        for rnd in range(a.rounds):
            for name, js in parsed.items():
                client.load_model("digits", config=js)
                while not client.is_model_ready("digits"):
                    time.sleep(0.2)
                best = 0.0
                for c in conc:
                    p = perf_point(pa, s.grpc_url, c, a.window_ms, Path(td))
                    if p is None:
                        continue
                    points[name].append({"round": rnd, "concurrency": c, **p})
                    if p["p99_ms"] <= a.slo_p99_ms:
                        best = max(best, p["throughput"])
                scores[name].append(best)
                print(f"round {rnd + 1}: {name}: {best:.0f} infer/s under p99 {a.slo_p99_ms} ms", flush=True)
        client.unload_model("digits")
    return {n: {"median": statistics.median(v), "rounds": v, "points": points[n]} for n, v in scores.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slo-p99-ms", type=float, default=10.0)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--window-ms", type=int, default=1000)
    ap.add_argument("--max-trials", type=int, default=12)
    ap.add_argument("--max-instances", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--searches", default="tune,brute,quick")
    ap.add_argument("--ma-timeout-s", type=int, default=1200, help="stop a Model Analyzer search after this long")
    ap.add_argument("--write", type=Path, default=None)
    a = ap.parse_args()
    from perf_harness import perf_analyzer, why
    from triton_harness import triton

    WORK.mkdir(parents=True, exist_ok=True)
    tri = triton()
    if isinstance(tri, str):
        sys.exit(f"no Triton server: {tri}")
    pa = perf_analyzer()
    if pa is None:
        sys.exit(f"no perf_analyzer: {why()}")
    path = build_digits()
    published = (WORK / "repo" / "digits" / "config.pbtxt").read_text()
    searches: dict[str, dict[str, Any]] = {}
    for s in a.searches.split(","):
        print(f"search: {s}", flush=True)
        searches[s] = run_tune(path, tri, pa, a) if s == "tune" else run_model_analyzer(s, tri, pa, a)
        print(f"  {json.dumps({k: v for k, v in searches[s].items() if k != 'config'})}", flush=True)
    configs = {"published (model.yaml)": published}
    names = {"tune": "mscompile tune", "brute": "Model Analyzer brute", "quick": "Model Analyzer quick"}
    for s, res in searches.items():
        if res.get("config"):
            configs[names[s]] = res["config"]
    measured = side_by_side(configs, tri, pa, a)
    (WORK / "results.json").write_text(json.dumps({"searches": searches, "measured": measured}, indent=2))

    base = measured["published (model.yaml)"]["median"] or 1.0
    lines = [
        f"<!-- generated by `python bench/bench_tune.py --write {a.write}` (the command below); do not edit by hand -->",
        "",
        "# Serving-config search: mscompile tune against Model Analyzer",
        "",
        f"Measured {datetime.date.today().isoformat()}: examples/digits (fp32) on the test suite's Triton 2.51 "
        "(its onnxruntime backend is the suite's Python-backend stand-in, so absolute figures are not those of "
        "Triton's C++ backend), perf_analyzer 2.60, gRPC, batch-1 requests, "
        f"concurrency {a.concurrency}, {a.window_ms} ms windows; objective: the highest throughput whose p99 "
        f"is at most {a.slo_p99_ms:g} ms. Space: max_batch_size up to 64, 1..{a.max_instances} CPU instances "
        "(tune also searches a preferred batch size; Model Analyzer's automatic search does not). "
        f"Each winner then measured again by one perf_analyzer command line, {a.rounds} interleaved rounds "
        f"(median). Command: `python bench/bench_tune.py --slo-p99-ms {a.slo_p99_ms:g} --concurrency "
        f"{a.concurrency} --rounds {a.rounds} --window-ms {a.window_ms} --searches {a.searches}`. Host: {host()}.",
        "",
        '"Its own figure" is what each search reported for its winner (tune: the median of its confirmation '
        "rounds, where it measures the winner and the published config again before writing; Model Analyzer: "
        "its one measurement). The re-measured rounds are listed beside their median: where the server, its "
        "stand-in backend and perf_analyzer share the host's cores, one config's figure changes from one round "
        f"to the next (in this run by up to {spread(measured):.2f}x, highest over lowest round of one config), "
        "and a difference within that spread is not a result.",
        "",
        "| search | configs measured | perf_analyzer runs | wall time | chose | its own figure | infer/s under SLO (re-measured, median) | vs published |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    m = measured["published (model.yaml)"]
    pub_rounds = ", ".join(f"{v:.0f}" for v in m["rounds"])
    lines.append(
        f"| published (model.yaml) | - | - | - | {describe(published)} | - | {m['median']:.0f} ({pub_rounds}) | 1.00x |"
    )
    for s, res in searches.items():
        name = names[s]
        if "error" in res:
            lines.append(
                f"| {name} | {res.get('configs', '-')} | - | {res.get('wall_s', 0):.0f} s | failed: "
                + res["error"].replace("|", "/").replace("\n", " ")
                + " | - | - | - |"
            )
            continue
        med = measured[name]["median"]
        lines.append(
            f"| {name} | {res['configs']} | {res['runs']} | {res['wall_s']:.0f} s | {describe(res['config'])}"
            + (" (the published config)" if describe(res["config"]) == describe(published) else "")
            + " | "
            f"{res['found']:.0f} | {med:.0f} ({', '.join(f'{v:.0f}' for v in measured[name]['rounds'])}) | "
            f"{med / base:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write:
        a.write.write_text(text)
        print(f"wrote {a.write}")


if __name__ == "__main__":
    main()
