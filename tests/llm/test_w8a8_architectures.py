"""quantize_w8a8 beyond Llama's layer names: the layers are found from the architecture
itself (every Linear inside the decoder blocks), and the compressed-tensors config
names exactly the layers written in INT8. Tiny seeded models made here from configs:
Qwen2 (biases, grouped-query attention), Phi-3 (fused qkv_proj, gate_up_proj), Falcon
(query_key_value, dense_h_to_4h), and GPT-2 (transformers Conv1D, [in, out] weights).
Phi-3 and GPT-2 are gated in vLLM itself."""

import json
import re
import shutil

import pytest
import torch
import yaml
from helpers import REPO, make_driver, run_cli, write_config
from mscompile.artifacts import HfModel
from mscompile.passes.llm import QuantizeW8A8, W8A8Config
from mscompile.pipeline import Step

TOK = REPO / "examples/tinyllm/model"
SMALL = dict(
    vocab_size=2048, hidden_size=128, num_attention_heads=4, max_position_embeddings=512
)  # head_dim 32: vLLM-CPU attention

CONFIGS = {
    "qwen2": ("Qwen2Config", dict(SMALL, intermediate_size=256, num_hidden_layers=2, num_key_value_heads=2)),
    "phi3": ("Phi3Config", dict(SMALL, intermediate_size=256, num_hidden_layers=2, num_key_value_heads=4,
                                pad_token_id=0)),
    "falcon": ("FalconConfig", dict(vocab_size=2048, hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                                    new_decoder_architecture=False, multi_query=True, parallel_attn=True,
                                    bias=False)),
    "gpt2": ("GPT2Config", dict(vocab_size=2048, n_embd=128, n_head=4, n_layer=2, n_positions=512, bos_token_id=0,
                                eos_token_id=1)),
}  # fmt: skip


def make_model(root, arch: str):
    import transformers

    cls_name, kw = CONFIGS[arch]
    config = getattr(transformers, cls_name)(**kw)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    folder = root / arch / "model"
    model.save_pretrained(str(folder), safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(TOK / f, folder / f)
    return root / arch, model


@pytest.mark.parametrize("arch", ["qwen2", "phi3", "falcon"])
def test_every_decoder_linear_is_quantized_and_the_config_names_exactly_those(tmp_path, arch):
    src, model = make_model(tmp_path, arch)
    rec = make_driver(tmp_path / "d").run_step(Step("w8a8", QuantizeW8A8, W8A8Config()), HfModel(src, arch))
    out = rec.output.path / "model"
    from safetensors.torch import load_file

    tensors = load_file(str(out / "model.safetensors"))
    head = model.get_output_embeddings()
    in_blocks = [
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not head and re.search(r"\.\d+\.", n)
    ]
    assert in_blocks and all(tensors[f"{n}.weight"].dtype == torch.int8 for n in in_blocks)
    assert all(f"{n}.weight_scale" in tensors for n in in_blocks)
    int8 = {k[: -len(".weight")] for k, v in tensors.items() if v.dtype == torch.int8}
    assert int8 == set(in_blocks)  # nothing else (embeddings, norms, the head) in INT8
    targets = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"][
        "targets"
    ]
    names = [n for n, _ in model.named_modules() if n]
    matched = {n for n in names if any(re.match(t[3:], n) if t.startswith("re:") else t == n for t in targets)}
    assert matched == set(in_blocks)  # the config claims INT8 for exactly what was written


def test_gpt2_conv1d_layers_are_quantized_in_their_own_layout(tmp_path):
    """GPT-2's c_attn/c_proj/c_fc are transformers Conv1D ([in, out] weights): INT8 kept in
    that layout (vLLM's GPT-2 loader transposes `.weight`, not `.weight_scale`), one scale
    per output channel [out, 1], and the config names exactly those layers."""
    from safetensors.torch import load_file

    src, model = make_model(tmp_path, "gpt2")
    rec = make_driver(tmp_path / "d").run_step(Step("w8a8", QuantizeW8A8, W8A8Config()), HfModel(src, "gpt2"))
    out = rec.output.path / "model"
    tensors = load_file(str(out / "model.safetensors"))
    conv = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    assert len(conv) == 8  # 2 blocks x c_attn, attn.c_proj, c_fc, mlp.c_proj
    for n in conv:
        w = dict(model.named_parameters())[f"{n}.weight"].detach()  # [in, out]
        q, scale = tensors[f"{n}.weight"], tensors[f"{n}.weight_scale"]
        assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (w.shape[1], 1)
        back = q.float() * scale.float().t()
        assert (back - w).abs().max() <= scale.max() * 0.51  # round-to-nearest per output column
    int8 = {k[: -len(".weight")] for k, v in tensors.items() if v.dtype == torch.int8}
    assert int8 == set(conv)
    targets = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"][
        "targets"
    ]
    names = [n for n, _ in model.named_modules() if n]
    assert {n for n in names if any(re.match(t[3:], n) for t in targets)} == set(conv)


@pytest.mark.parametrize("arch", ["phi3", "gpt2"])
def test_w8a8_is_gated_in_vllm(tmp_path, arch):
    """vLLM loads the exact-name targets of a fused-projection architecture (Phi-3) and of
    GPT-2's Conv1D layout, and serves each within the gate (perplexity against
    transformers)."""
    from vllm_harness import vllm_python, why

    python = vllm_python()
    if python is None:
        pytest.skip(why())
    src, _ = make_model(tmp_path, arch)
    cfg = yaml.safe_load((REPO / "examples/tinyllm/model.yaml").read_text())
    cfg.update(
        name=f"tiny{arch}",
        source={"checkpoint": str(src / "model")},
        targets=[
            {"name": "w8a8", "backend": "vllm", "quantization": "w8a8", "tolerance": {"perplexity_increase": 5.0}}
        ],
        profile={"enabled": False},
        triton={"repository": str(tmp_path / "repo")},
    )
    cfg["validation"]["max_texts"] = 8
    cfg.pop("calibration")
    r = run_cli(
        "build", str(write_config(cfg, tmp_path / "model.yaml")), "--json", env={"MSCOMPILE_VLLM_PYTHON": python}
    )
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)["variants"][0]
    assert v["status"] == "OK" and v["gated_on"] == ["vllm"], v


FIVE_LINES = """name: qwen
source: {{huggingface: {folder}, task: text-generation}}
targets:
  - {{name: fp32, backend: vllm, dtype: float32, tolerance: {{perplexity_increase: 1.0, token_agreement: 0.8}}}}
  - {{name: w8a8, backend: vllm, quantization: w8a8, tolerance: {{perplexity_increase: 5.0}}}}
"""


def test_a_qwen2_folder_builds_from_five_lines(tmp_path):
    """A Hugging Face decoder folder and targets, nothing else: the text-generation task
    from source.task, the gates on seeded synthetic token ids (said plainly)."""
    from vllm_harness import vllm_python, why

    python = vllm_python()
    if python is None:
        pytest.skip(why())
    src, _ = make_model(tmp_path, "qwen2")
    text = FIVE_LINES.format(folder=src / "model")
    assert len(text.strip().splitlines()) == 5
    (tmp_path / "model.yaml").write_text(text)
    v = run_cli("validate", "model.yaml", cwd=tmp_path, env={"MSCOMPILE_VLLM_PYTHON": python})
    assert v.returncode == 0 and "seeded synthetic token ids" in v.stdout, v.stderr
    r = run_cli("build", "model.yaml", "--json", cwd=tmp_path, env={"MSCOMPILE_VLLM_PYTHON": python})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {x["name"]: x["status"] for x in out["variants"]} == {"fp32": "OK", "w8a8": "OK"}
    assert "seeded synthetic token ids" in r.stderr
    manifest = json.loads((tmp_path / f"model_repository/qwen/{out['version']}/build_manifest.json").read_text())
    assert manifest["task"] == "text-generation"
