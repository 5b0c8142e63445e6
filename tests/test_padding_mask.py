"""validation.padding_mask: token-level outputs are gated at their real positions.

A tokenizer pads a batch to its longest text; what a model writes at the padded positions
of `last_hidden_state` is not an answer anyone reads, and two runtimes may differ there
by far more than on the real tokens (an fp16 graph can saturate there). The gates compare
such outputs where the attention mask is not 0, and say so."""

import json
from pathlib import Path

import numpy as np
from helpers import make_token_project, run_cli, write_config
from mscompile.accuracy import compare, evaluate, per_sample
from mscompile.sections import IOSpec, Tolerance


def _pair():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 6, 8)).astype(np.float32)
    mask = np.ones((4, 6), np.int64)
    mask[:, 4:] = 0  # two padded positions per sample
    out = ref.copy()
    out[:, 4:] = 1e4  # far off where nobody reads
    out[0, 5, 0] = np.nan
    return out, ref, mask


def test_padded_positions_are_left_out_and_real_ones_still_count():
    out, ref, mask = _pair()
    plain = compare(out, ref)
    assert plain["nonfinite"] == 1 and plain["cosine"] < 0.5
    m = compare(out, ref, mask=mask, mask_name="attention_mask")
    assert m["max_abs"] == 0.0 and m["nonfinite"] == 0 and m["cosine"] == 1.0
    assert m["positions"] == {"compared": 4 * 4 * 8, "of": 4 * 6 * 8, "mask": "attention_mask"}
    out[1, 2, 3] += 0.5  # a real position off: seen
    m = compare(out, ref, mask=mask)
    assert m["max_abs"] == 0.5 and m["mean_abs"] == 0.5 / (4 * 4 * 8)
    assert per_sample(out, ref, mask=mask)["max_abs"] == [0.0, 0.5, 0.0, 0.0]


def test_outputs_that_are_not_token_level_and_the_gate_verdict():
    out, ref, mask = _pair()
    pooled = ref.mean(axis=1)
    io = IOSpec(
        inputs=[{"name": "input_ids", "dtype": "int64", "shape": [-1, -1]}],
        outputs=[{"name": "tokens"}, {"name": "pooled"}],
    )
    outs = {"tokens": out, "pooled": pooled + 1.0}  # [4, 8]: its leading dims are not the mask's
    refs = {"tokens": ref, "pooled": pooled}
    agg, per_output, fails = evaluate(outs, refs, None, io, Tolerance(max_abs=1e-3), mask, "attention_mask")
    assert "positions" in per_output["tokens"] and "positions" not in per_output["pooled"]
    assert fails == ["pooled: max_abs 1 > 0.001"]
    assert "positions" not in agg  # figures only in the aggregate
    _, _, fails = evaluate(outs, refs, None, io, Tolerance(max_abs=1e-3))
    assert any(f.startswith("tokens: 1 non-finite") for f in fails)


def test_a_build_gates_token_outputs_at_real_positions_and_says_so(tmp_path):
    d = make_token_project(tmp_path)
    r = run_cli("build", str(write_config(d, tmp_path / "model.yaml")), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    v = json.loads(r.stdout)["variants"][0]
    assert v["status"] == "OK"
    real = int(np.load(tmp_path / "val.npz")["attention_mask"].sum())
    assert v["padding"] == {"last_hidden_state": {"compared": real * 8, "of": 12 * 10 * 8, "mask": "attention_mask"}}
    r = run_cli("build", str(tmp_path / "model.yaml"), cwd=tmp_path)
    assert r.returncode == 0
    assert f"gates compare last_hidden_state where attention_mask != 0 ({real * 8:,} of 960 values)" in r.stdout
    report = Path(r.stdout.split("report: ")[1].splitlines()[0]).read_text()
    assert "last_hidden_state where attention_mask != 0" in report

    # every position compared: the fp16 graph's clamped value at the padded positions fails it
    d["validation"]["padding_mask"] = "none"
    r = run_cli("build", str(write_config(d, tmp_path / "model.yaml")), "--json", cwd=tmp_path)
    assert r.returncode == 3  # a gate failed
    v = json.loads(r.stdout)["variants"][0]
    assert v["status"] == "FAIL" and "last_hidden_state: max_rel 0.93" in v["reason"]
    assert v["padding"] == {}


def test_padding_mask_names_an_integer_input(tmp_path):
    d = make_token_project(tmp_path)
    d["validation"]["padding_mask"] = "mask"
    r = run_cli("validate", str(write_config(d, tmp_path / "model.yaml")), cwd=tmp_path)
    assert r.returncode == 2
    assert "validation.padding_mask: 'mask' is not an input (inputs: input_ids, attention_mask)" in r.stderr
    d["inputs"][1]["dtype"] = "float32"
    d["validation"]["padding_mask"] = "attention_mask"
    r = run_cli("validate", str(write_config(d, tmp_path / "model.yaml")), cwd=tmp_path)
    assert r.returncode == 2 and "input 'attention_mask' is float32; a padding mask holds integers" in r.stderr


def test_nncf_accuracy_control_scores_real_positions_too(tmp_path):
    """The OpenVINO INT8 search's accuracy-control try watches the gate's own figure:
    its step carries the padding mask (the plain tries do not: their keys stay put)."""
    from mscompile.backends.base import RecipeInputs
    from mscompile.backends.openvino import NncfSearch
    from mscompile.config import ModelConfig

    d = make_token_project(tmp_path)
    d["calibration"] = {"data": "val.npz"}
    d["targets"] = [{"name": "ov", "backend": "openvino", "precision": "int8", "tolerance": {"cosine": 0.99}}]
    cfg = ModelConfig.model_validate(d)
    search = NncfSearch(cfg, cfg.targets[0], RecipeInputs(validation=None, calibration=None))
    assert search.quantize_step(3, "mixed", True).config.padding_mask == "attention_mask"
    assert search.quantize_step(1, "performance", False).config.padding_mask is None


def test_nothing_is_said_where_no_position_is_padded():
    out, ref, _ = _pair()
    m = compare(out[:, :4], ref[:, :4], mask=np.ones((4, 4), np.int64))
    assert "positions" not in m and m["max_abs"] == 0.0
