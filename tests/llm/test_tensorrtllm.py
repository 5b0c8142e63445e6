"""TensorRT-LLM targets: ModelOpt quantization to TensorRT-LLM checkpoints (runs here,
on CPU), the simulated gate, the engine build (SKIPPED without TensorRT-LLM, naming
it), and the inflight_batcher_llm repository: configs checked against Triton's schema
and the backend's parameter names, the ensemble's wiring, and the pre/postprocessing
models loaded and asked by a real Triton server."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO, run_cli, write_config

EXAMPLE = REPO / "examples/tinyllm/model.yaml"
TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None
MODELOPT = importlib.util.find_spec("modelopt") is not None


def _config(tmp_path: Path, targets: list[dict], **changes) -> Path:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["triton"] = {"repository": str(tmp_path / "repo"), "server_repository": "/models"}
    cfg["validation"].update(max_texts=16, max_prompts=8, new_tokens=16)
    cfg["calibration"]["samples"] = 16
    cfg["targets"] = targets
    cfg.update(changes)
    return write_config(cfg, tmp_path / "model.yaml")


def test_plan_shows_the_inflight_batcher_configs_filled_and_wired(tmp_path):
    from mscompile.llm.trtllm_repo import BACKEND_PARAMETERS, STEP_PARAMETERS
    from mscompile.tritonrepo.config import parse

    target = {
        "name": "trt",
        "backend": "tensorrtllm",
        "quantization": "int8_sq",
        "max_batch_size": 16,
        "max_input_len": 256,
        "max_seq_len": 512,
        "python_path": ["/opt/tok"],
        "serving": {"streaming": True, "kv_cache_free_gpu_mem_fraction": 0.5, "gpu_device_ids": [0, 1]},
    }
    r = run_cli("plan", str(_config(tmp_path, [target])), "--json")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)["targets"]["trt"]
    assert t["backend"] == "tensorrtllm" and t["precision"] == "int8_sq"
    assert t["wiring_problems"] == []
    models = {name: parse(text) for name, text in t["models"].items()}  # Triton's own schema
    assert set(models) == {"tinyllm", "tinyllm_preprocessing", "tinyllm_tensorrt_llm", "tinyllm_postprocessing"}
    for name, text in t["models"].items():
        assert "${" not in text, name
        assert models[name].max_batch_size == 16
    trt = models["tinyllm_tensorrt_llm"]
    params = {k: v.string_value for k, v in trt.parameters.items()}
    assert set(params) <= BACKEND_PARAMETERS, set(params) - BACKEND_PARAMETERS
    assert params["gpt_model_path"] == "/models/tinyllm_tensorrt_llm/1"  # the version this build would publish
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.5" and params["gpu_device_ids"] == "0,1"
    assert trt.backend == "tensorrtllm" and trt.model_transaction_policy.decoupled
    pre = models["tinyllm_preprocessing"]
    pre_params = {k: v.string_value for k, v in pre.parameters.items()}
    assert set(pre_params) <= STEP_PARAMETERS
    assert pre_params["tokenizer_dir"] == "/models/tinyllm_preprocessing/1"
    ens = models["tinyllm"]
    assert ens.platform == "ensemble"
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [
        "tinyllm_preprocessing",
        "tinyllm_tensorrt_llm",
        "tinyllm_postprocessing",
    ]
    cmd = " ".join(t["trtllm_build"] if "trtllm_build" in t else t["lines"][0].split(" ", 1)[1:])
    assert "--max_batch_size 16" in cmd and "--max_input_len 256" in cmd and "--max_seq_len 512" in cmd
    if not TRTLLM:
        assert "build_trtllm_engine SKIPPED" in t["stops_at"] and "TensorRT-LLM is not installed" in t["stops_at"]
        # the engine build and every step after it are planned as skipped, with the reason
        # (they used to count as "would run")
        rows = [row for row in json.loads(r.stdout)["steps"] if row["target"] == "trt"]
        actions = {row["step"].split("/", 1)[1]: row["action"] for row in rows}
        first = [row["step"] for row in rows].index("trt/build_trtllm_engine")
        assert all(row["action"] == "skip" for row in rows[first:]), actions
        assert all(row["action"] != "skip" for row in rows[:first]), actions
        assert "TensorRT-LLM is not installed" in rows[first]["reason"]
    # people see the same
    r = run_cli("plan", str(tmp_path / "model.yaml"))
    assert r.returncode == 0 and "trtllm-build --checkpoint_dir" in r.stdout and 'backend: "tensorrtllm"' in r.stdout


def test_wiring_check_finds_broken_ensembles():
    from mscompile.backends.tensorrtllm import TrtLlmTarget
    from mscompile.llm import trtllm_repo as r

    t = TrtLlmTarget(name="x", backend="tensorrtllm")
    n = r.names("m")
    models = {
        n.preprocessing: r.preprocessing_config(n, t, "/tok"),
        n.tensorrt_llm: r.tensorrt_llm_config(n, t, "/engine"),
        n.postprocessing: r.postprocessing_config(n, t, "/tok"),
        n.ensemble: r.ensemble_config(n, t),
    }
    assert r.check_wiring(models) == []
    pb = r.triton_pb()
    broken = {k: type(v).FromString(v.SerializeToString()) for k, v in models.items()}
    broken[n.ensemble].input[1].data_type = pb.DataType.Value("TYPE_UINT32")  # max_tokens
    del broken[n.ensemble].ensemble_scheduling.step[1].input_map["input_lengths"]
    problems = r.check_wiring(broken)
    assert any(
        "'max_tokens' is TYPE_UINT32 but m_preprocessing.REQUEST_OUTPUT_LEN is TYPE_INT32" in p for p in problems
    )
    assert any("required input m_tensorrt_llm.input_lengths is not fed" in p for p in problems), problems
    del broken[n.postprocessing]
    assert any("'m_postprocessing' is not in the repository" in p for p in r.check_wiring(broken))


def test_config_errors_name_the_key(tmp_path):
    bad = [
        ({"name": "a", "backend": "tensorrtllm", "quantization": "int3"}, "targets[0].quantization"),
        ({"name": "a", "backend": "tensorrtllm", "max_input_len": 600, "max_seq_len": 512}, "max_input_len: 600"),
        ({"name": "a", "backend": "tensorrtllm", "serving": {"batching": "static"}}, "serving.batching"),
    ]
    for target, needle in bad:
        r = run_cli("validate", str(_config(tmp_path, [target])))
        assert r.returncode == 2 and needle in r.stderr, (needle, r.stderr)
    cfg = _config(tmp_path, [{"name": "a", "backend": "tensorrtllm", "quantization": "fp8"}])
    data = yaml.safe_load(cfg.read_text())
    data.pop("calibration")
    r = run_cli("validate", str(write_config(data, tmp_path / "nocal.yaml")))
    assert r.returncode == 2 and "targets[0].quantization: fp8 is calibrated" in r.stderr


@pytest.mark.slow
@pytest.mark.skipif(not MODELOPT, reason="NVIDIA ModelOpt is not installed (pip install 'mscompile[tensorrt]')")
def test_build_quantizes_with_modelopt_gates_the_simulation_and_skips_the_engine(tmp_path):
    from safetensors import safe_open

    targets = [
        {"name": "awq", "backend": "tensorrtllm", "quantization": "int4_awq",
         "tolerance": {"perplexity_increase": 5.0, "first_divergence": 1}},
        {"name": "fp8", "backend": "tensorrtllm", "quantization": "fp8",
         "tolerance": {"perplexity_increase": 5.0, "first_divergence": 1}},
        # a gate no quantized model can hold: fails on the simulation, before any GPU work
        {"name": "sq_tight", "backend": "tensorrtllm", "quantization": "int8_sq",
         "tolerance": {"token_agreement": 1.0}},
    ]  # fmt: skip
    cfg = _config(tmp_path, targets)
    r = run_cli("build", str(cfg), "--json")
    # nothing can be deployed here: every engine build is SKIPPED (and one target failed its gate)
    assert r.returncode == 3, r.stderr
    out = json.loads(r.stdout)
    v = {x["name"]: x for x in out["variants"]}
    assert v["sq_tight"]["status"] == "FAIL"
    assert v["sq_tight"]["reason"].startswith("simulated quantization (PyTorch): token_agreement")
    algos = {"awq": ("W4A16_AWQ", "torch.int8"), "fp8": ("FP8", "torch.float8_e4m3fn")}
    for name, (algo, dtype) in algos.items():
        x = v[name]
        if not TRTLLM:
            assert x["status"] == "SKIPPED", x
            assert "build_trtllm_engine did not run" in x["reason"] and "TensorRT-LLM is not installed" in x["reason"]
        m = x["metrics"]  # the simulated gate's figures, measured here
        assert m["perplexity_increase"] < 5.0 and m["prompts"] == 8
        q = x["quantization"]
        assert q["quant_algo"] == algo and q["tool"] == "modelopt" and q["calibration_samples"] == 16
        ckpt = Path(x["artifact"]) / "checkpoint"
        conf = json.loads((ckpt / "config.json").read_text())
        assert conf["quantization"]["quant_algo"] == algo and conf["architecture"] == "LlamaForCausalLM"
        with safe_open(str(ckpt / "rank0.safetensors"), "pt") as f:
            assert str(f.get_tensor("transformer.layers.0.attention.qkv.weight").dtype) == dtype
        assert (Path(x["artifact"]) / "export.py").is_file()  # the script that made it, rerunnable
        assert x["size_bytes"] == sum(p.stat().st_size for p in ckpt.iterdir())
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())
    # a rebuild replays the exports and the simulated gates from the cache
    r = run_cli("build", str(cfg))
    assert r.returncode == 3
    for step in ("awq/export_trtllm_checkpoint", "awq/check_llm_simulated", "fp8/export_trtllm_checkpoint"):
        assert any(ln.split() == [step, "cached", ln.split()[-1]] for ln in r.stderr.splitlines()), r.stderr


def _engine_fixture(tmp_path: Path):
    """A folder shaped like a built TensorRT-LLM engine artifact, to drive the real
    repository writer: the tokenizer is tinyllm's; the engine files are stand-ins
    (the tensorrt_llm model is not loaded: Triton's tensorrtllm backend is not here)."""
    from mscompile.artifacts import TrtllmEngine

    root = tmp_path / "engine-artifact"
    (root / "tokenizer").mkdir(parents=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        (root / "tokenizer" / f).write_bytes((REPO / "examples/tinyllm/model" / f).read_bytes())
    (root / "engine").mkdir()
    (root / "engine" / "config.json").write_text('{"stand-in": "not an engine"}\n')
    (root / "engine" / "rank0.engine").write_bytes(b"stand-in")
    return TrtllmEngine(root, "0" * 64, {})


def test_published_repository_steps_load_and_tokenize_in_triton(tmp_path):
    from mscompile.backends import get
    from mscompile.handoff import LocalServer
    from mscompile.llm.build import publish_served
    from mscompile.tasks import load_config
    from triton_harness import triton

    tri = triton()
    if isinstance(tri, str):
        pytest.skip(tri)
    target = {"name": "trt", "backend": "tensorrtllm", "python_path": [str(tri.site)]}
    path = _config(tmp_path, [target])
    cfg = load_config(path)
    t = cfg.targets[0]
    repo = tmp_path / "repo"
    served = get("tensorrtllm").serving(cfg, t, "tinyllm", {}, _engine_fixture(tmp_path))
    published = publish_served(cfg, repo, str(repo), served, {"test": True})
    assert [(p.model, p.version) for p in published] == [
        ("tinyllm_preprocessing", 1),
        ("tinyllm_tensorrt_llm", 1),
        ("tinyllm_postprocessing", 1),
        ("tinyllm", 1),
    ]
    trt_cfg = (repo / "tinyllm_tensorrt_llm" / "config.pbtxt").read_text()
    assert (
        f'string_value: "{repo}/tinyllm_tensorrt_llm/1"' in trt_cfg
        and (repo / "tinyllm_tensorrt_llm/1/rank0.engine").is_file()
    )
    members = json.loads((repo / "tinyllm" / "1" / "members.json").read_text())
    assert members == {"tinyllm_postprocessing": 1, "tinyllm_preprocessing": 1, "tinyllm_tensorrt_llm": 1}

    import tritonclient.http as http
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(REPO / "examples/tinyllm/model"))
    prompts = [ln for ln in (REPO / "examples/tinyllm/data/prompts.txt").read_text().splitlines() if ln.strip()][:4]
    server = LocalServer(tri.binary, repo, tmp_path / "triton.log", extra_args=tri.args).start()
    try:
        client = http.InferenceServerClient(server.http_url)
        for name in ("tinyllm_preprocessing", "tinyllm_postprocessing"):
            client.load_model(name)
            assert client.is_model_ready(name), server.log_tail()
        q = http.InferInput("QUERY", [len(prompts), 1], "BYTES")
        q.set_data_from_numpy(np.array([[p.encode()] for p in prompts], dtype=object))
        n = http.InferInput("REQUEST_OUTPUT_LEN", [len(prompts), 1], "INT32")
        n.set_data_from_numpy(np.full((len(prompts), 1), 16, np.int32))
        res = client.infer("tinyllm_preprocessing", [q, n])
        ids, lengths = res.as_numpy("INPUT_ID"), res.as_numpy("REQUEST_INPUT_LEN")
        for i, p in enumerate(prompts):  # the ids the reference and the gates used
            assert ids[i, : lengths[i, 0]].tolist() == tok(p)["input_ids"]
        assert int(res.as_numpy("OUT_END_ID")[0, 0]) == tok.eos_token_id
        # postprocessing: [batch, beams, tokens] and lengths back to text
        seqs = [tok(p)["input_ids"] for p in prompts]
        width = max(map(len, seqs))
        batch = np.zeros((len(seqs), 1, width), np.int32)
        for i, s in enumerate(seqs):
            batch[i, 0, : len(s)] = s
        tb = http.InferInput("TOKENS_BATCH", list(batch.shape), "INT32")
        tb.set_data_from_numpy(batch)
        sl = http.InferInput("SEQUENCE_LENGTH", [len(seqs), 1], "INT32")
        sl.set_data_from_numpy(np.array([[len(s)] for s in seqs], np.int32))
        text = client.infer("tinyllm_postprocessing", [tb, sl]).as_numpy("OUTPUT")
        for i, s in enumerate(seqs):
            assert text[i, 0].decode() == tok.decode(s, skip_special_tokens=True)
    finally:
        server.stop()


def test_a_factory_source_is_saved_as_a_checkpoint_and_cached(tmp_path):
    (tmp_path / "mk.py").write_text(
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"P = {str(REPO / 'examples/tinyllm/model')!r}\n"
        "def tinyllm(scale=1.0):\n"
        "    return AutoModelForCausalLM.from_pretrained(P), AutoTokenizer.from_pretrained(P)\n"
        "def broken():\n"
        "    return 'not a model'\n"
    )
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["source"] = {"factory": "mk:tinyllm", "args": {"scale": 1.0}}
    for k in ("text", "prompts"):
        cfg["validation"][k] = str(REPO / cfg["validation"][k])
    cfg["validation"].update(max_texts=8, max_prompts=4, new_tokens=8)
    cfg.pop("calibration")
    cfg["targets"] = [{"name": "fp16", "backend": "tensorrtllm"}]
    cfg["triton"] = {"repository": str(tmp_path / "repo")}
    path = write_config(cfg, tmp_path / "model.yaml")
    env = {"MSCOMPILE_HOME": str(tmp_path / "state")}
    r = run_cli("validate", str(path), cwd=tmp_path, env=env)
    assert r.returncode == 0 and "model: llama (LlamaForCausalLM), vocab 2048" in r.stdout, r.stderr
    saved = list((tmp_path / "state" / "llm-sources" / "tinyllm").iterdir())
    assert len(saved) == 1 and (saved[0] / "model.safetensors").is_file()
    r = run_cli("build", str(path), "--json", cwd=tmp_path, env=env)
    assert r.returncode == (0 if TRTLLM else 3), r.stderr
    r = run_cli("plan", str(path), "--json", cwd=tmp_path, env=env)
    steps = {s["step"]: s["action"] for s in json.loads(r.stdout)["steps"]}
    # the factory ran again and saved the same weights: the same folder, the build's steps cached
    assert steps["load_llm"] == "cached" and steps["fp16/export_trtllm_checkpoint"] == "cached", steps
    assert len(list((tmp_path / "state" / "llm-sources" / "tinyllm").iterdir())) == 1

    cfg["source"] = {"factory": "mk:broken"}
    r = run_cli("validate", str(write_config(cfg, tmp_path / "b.yaml")), cwd=tmp_path, env=env)
    assert r.returncode == 2 and "source.factory: mk:broken must return (model, tokenizer)" in r.stderr
    cfg["source"] = {"factory": "mk:tinyllm", "checkpoint": "x"}
    r = run_cli("validate", str(write_config(cfg, tmp_path / "c.yaml")), cwd=tmp_path, env=env)
    assert r.returncode == 2 and "give exactly one of checkpoint" in r.stderr
