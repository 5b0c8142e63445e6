"""Hugging Face folders as sources: `source: {huggingface: <folder>, task: <task>}` and
targets, nothing else. Folders are made here (configs, seeded weights, a tokenizer
built from a word list, an image processor): no hub access."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import run_cli, write_config

transformers = pytest.importorskip("transformers")

WORDS = (
    "the a cat dog sat on mat ran fast slow red blue green house tree car road sun moon star big small "
    "and with over under near far old new"
).split()


def make_bert(folder: Path, task_cls: str = "BertForSequenceClassification", **extra) -> None:
    from transformers import BertConfig, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=64).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, **extra,
    )  # fmt: skip
    getattr(transformers, task_cls)(cfg).eval().save_pretrained(folder)


def make_vit(folder: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=5,
    )  # fmt: skip
    ViTForImageClassification(cfg).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


FIVE_LINES = """name: {name}
source: {{huggingface: {folder}, task: {task}}}
targets:
  - {{name: fp32, tolerance: {{max_rel: 1.0e-4}}}}
  - {{name: int8, precision: int8, tolerance: {{cosine: 0.98}}}}
"""


def _build(tmp_path, name, folder, task, extra=""):
    text = FIVE_LINES.format(name=name, folder=folder, task=task) + extra
    (tmp_path / f"{name}.yaml").write_text(text)
    r = run_cli("build", f"{name}.yaml", "--json", cwd=tmp_path)
    return r, text


def test_a_bert_classifier_folder_builds_from_five_lines(tmp_path):
    make_bert(tmp_path / "bert", num_labels=3)
    r, text = _build(tmp_path, "bert", "bert", "text-classification")
    assert len(text.strip().splitlines()) == 5
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    v = {x["name"]: x for x in out["variants"]}
    assert v["fp32"]["status"] == "OK" and v["int8"]["status"] == "OK"
    # the sequence range derived from the model (64 positions) is gated at each size
    assert sorted(v["fp32"]["buckets"]) == ["sequence=1", "sequence=64"]
    assert "seeded synthetic inputs" in r.stderr
    manifest = json.loads((tmp_path / "model_repository/bert/1/build_manifest.json").read_text())
    cfg = manifest["config"]
    assert [i["name"] for i in cfg["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert cfg["inputs"][0]["shape"] == [-1, "sequence"] and cfg["inputs"][0]["range"]["max"] == [64, 64]
    assert cfg["outputs"] == [{"name": "logits"}] or cfg["outputs"][0]["name"] == "logits"
    assert cfg["source"]["huggingface"] == "bert" and cfg["source"]["factory"] == "mscompile.hf:model"

    # independently: the published graph against transformers on a fresh sentence, unseen length
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path / "bert"))
    ref = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "bert")).eval()
    enc = tok(["the big red dog ran over the old road near a tree", "a cat"], padding=True, return_tensors="np")
    sess = ort.InferenceSession(
        str(tmp_path / "model_repository/bert/1/model.onnx"), providers=["CPUExecutionProvider"]
    )
    (got,) = sess.run(None, {k: v.astype(np.int64) for k, v in enc.items()})
    with torch.no_grad():
        want = ref(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
    assert np.abs(got - want).max() < 1e-4

    # the same five lines again: every pass cached; an edited config.json is another model
    again = run_cli("build", "bert.yaml", "--json", cwd=tmp_path)
    assert json.loads(again.stdout)["passes_run"] == 0
    conf = json.loads((tmp_path / "bert/config.json").read_text())
    conf["id2label"] = {"0": "neg", "1": "neu", "2": "pos"}
    (tmp_path / "bert/config.json").write_text(json.dumps(conf))
    third = run_cli("build", "bert.yaml", "--json", cwd=tmp_path)
    assert third.returncode == 0 and json.loads(third.stdout)["passes_run"] > 0


def test_text_file_validation_goes_through_the_folders_tokenizer(tmp_path):
    make_bert(tmp_path / "enc", task_cls="BertModel")
    (tmp_path / "val.txt").write_text("the cat sat on the mat\na big dog ran fast\nthe sun and the moon\n" * 4)
    (tmp_path / "cal.txt").write_text("red car on the road\ngreen tree near the house\n" * 4)
    r, _ = _build(
        tmp_path, "enc", "enc", "feature-extraction", "validation: {data: val.txt}\ncalibration: {data: cal.txt}\n"
    )
    assert r.returncode == 0, r.stderr
    assert "synthetic" not in r.stderr
    out = json.loads(r.stdout)
    fp32 = next(v for v in out["variants"] if v["name"] == "fp32")
    assert fp32["status"] == "OK" and "cosine" in fp32["metrics"]  # last_hidden_state [B, S, 32]
    cfg = json.loads((tmp_path / "model_repository/enc/1/build_manifest.json").read_text())["config"]
    assert (
        cfg["validation"]["tokenizer"] == "mscompile.hf:tokenize" and cfg["outputs"][0]["name"] == "last_hidden_state"
    )


def test_a_vit_folder_with_an_image_folder_for_validation(tmp_path):
    from PIL import Image

    make_vit(tmp_path / "vit")
    rng = np.random.default_rng(0)
    for sub, n in (("images", 12), ("calib", 12)):
        (tmp_path / sub).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / sub / f"{i:02d}.png")
    r, _ = _build(
        tmp_path, "vit", "vit", "image-classification", "validation: {data: images}\ncalibration: {data: calib}\n"
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert all(v["status"] == "OK" for v in out["variants"])
    cfg = json.loads((tmp_path / "model_repository/vit/1/build_manifest.json").read_text())["config"]
    assert cfg["inputs"][0]["shape"] == [-1, 3, 32, 32]  # the image processor's size
    assert cfg["validation"]["generator"] == "mscompile.hf:images"
    assert (
        out["variants"][0]["metrics"]["top1_agreement"] if "top1_agreement" in out["variants"][0]["metrics"] else True
    )


def test_a_detector_folder_with_images_of_other_aspects(tmp_path):
    """object-detection: YOLOS (a fixed set of detection tokens: logits and boxes of fixed
    shape). Its processor keeps the aspect ratio, so the images of a folder (48x40 here)
    are first made the size the model takes; the published graph equals transformers."""
    import onnxruntime as ort
    from PIL import Image
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    torch.manual_seed(0)
    cfg = YolosConfig(
        image_size=[32, 32], patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_detection_tokens=6, num_labels=4,
    )  # fmt: skip
    model = YolosForObjectDetection(cfg).eval()
    model.save_pretrained(tmp_path / "det")
    YolosImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(tmp_path / "det")
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    r, _ = _build(tmp_path, "det", "det", "object-detection", "validation: {data: images}\n")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [v["status"] for v in out["variants"]] == ["OK", "OK"], out["variants"]
    cfg = json.loads((tmp_path / "model_repository/det/1/build_manifest.json").read_text())["config"]
    assert cfg["inputs"][0]["shape"] == [-1, 3, 32, 32]
    assert [o["name"] for o in cfg["outputs"]] == ["logits", "pred_boxes"]
    assert cfg["validation"]["generator_args"]["resize"] == [32, 32]
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "model_repository/det/1/model.onnx"), providers=["CPUExecutionProvider"])
    logits, boxes = sess.run(["logits", "pred_boxes"], {"pixel_values": x})
    with torch.no_grad():
        want = model(pixel_values=torch.from_numpy(x))
    assert logits.shape == (2, 6, 5) and boxes.shape == (2, 6, 4)
    assert np.abs(boxes - want.pred_boxes.numpy()).max() < 1e-4


def test_a_whisper_folder_builds_its_encoder_for_speech_recognition(tmp_path):
    """automatic-speech-recognition on an encoder-decoder: the encoder, on log-mel
    features at Whisper's window (two frames per position) when the folder has no
    feature extractor; the gate ran on synthetic features and says so."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    cfg = WhisperConfig(
        num_mel_bins=8, d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, max_source_positions=20,
        vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
    )  # fmt: skip
    WhisperForConditionalGeneration(cfg).eval().save_pretrained(tmp_path / "asr")
    r, _ = _build(tmp_path, "asr", "asr", "automatic-speech-recognition")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert all(v["status"] == "OK" for v in out["variants"]), out["variants"]
    cfg = json.loads((tmp_path / "model_repository/asr/1/build_manifest.json").read_text())["config"]
    assert cfg["inputs"][0]["name"] == "input_features" and cfg["inputs"][0]["shape"] == [-1, 8, 40]
    assert [o["name"] for o in cfg["outputs"]] == ["last_hidden_state"]
    assert "synthetic" in r.stderr
    # an audio model's feature extractor is not made a pipeline step: said, with what to write
    (tmp_path / "asr.yaml").write_text((tmp_path / "asr.yaml").read_text() + "pipeline: auto\n")
    r = run_cli("validate", "asr.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "feature extractor is not turned into a step: write pipeline: steps" in r.stderr


def test_hf_source_errors_name_the_key_and_the_fix(tmp_path):
    make_bert(tmp_path / "bert", num_labels=2)
    bad = [
        ({"huggingface": "nowhere", "task": "text-classification"}, "has no config.json"),
        ({"huggingface": "bert", "task": "translation"}, "source.task: 'translation'; use one of feature-extraction"),
        (
            {"huggingface": "bert", "task": "object-detection"},
            "no AutoModelForObjectDetection for model_type 'bert'",
        ),
        (
            {"huggingface": "bert", "task": "automatic-speech-recognition"},
            "no AutoModelForCTC or AutoModelForSpeechSeq2Seq for model_type 'bert'",
        ),
        (
            {"huggingface": "bert", "task": "image-classification"},
            "no AutoModelForImageClassification for model_type 'bert'",
        ),
    ]
    for source, want in bad:
        d = {"name": "m", "source": source, "targets": [{"name": "fp32"}]}
        r = run_cli("validate", str(write_config(d, tmp_path / "m.yaml")), cwd=tmp_path)
        assert r.returncode == 2 and want in r.stderr, (source, r.stderr)
    (tmp_path / "bert/model.safetensors").rename(tmp_path / "bert/model-00001-of-00002.safetensors")
    d = {"name": "m", "source": {"huggingface": "bert", "task": "text-classification"}, "targets": [{"name": "fp32"}]}
    r = run_cli("validate", str(write_config(d, tmp_path / "m.yaml")), cwd=tmp_path)
    assert r.returncode == 2 and "has no model.safetensors (found ['model-00001-of-00002.safetensors'])" in r.stderr
    assert yaml.safe_load((tmp_path / "m.yaml").read_text()) == d  # nothing rewritten


def test_init_on_a_folder_writes_the_short_form_that_builds_unchanged(tmp_path):
    make_vit(tmp_path / "vit")
    r = run_cli("init", "--huggingface", "vit", "--task", "image-classification", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "model.yaml").read_text()
    d = yaml.safe_load(text)
    assert d["source"] == {"huggingface": "vit", "task": "image-classification"} and d["name"] == "vit"
    assert '#   inputs: {"name": "pixel_values", "dtype": "float32", "shape": [-1, 3, 32, 32]' in text
    assert [t["name"] for t in d["targets"]][:3] == ["fp32", "fp16", "int8"]
    b = run_cli("build", "model.yaml", "--json", cwd=tmp_path)
    assert b.returncode == 0, b.stderr
    assert all(v["status"] == "OK" for v in json.loads(b.stdout)["variants"] if v["name"] != "openvino_int8")


def test_pipeline_auto_serves_text_in_probabilities_out(tmp_path):
    """pipeline: auto: the ensemble's steps from the folder's own tokenizer, gated end to
    end against the same chain with the PyTorch model."""
    make_bert(tmp_path / "bert", num_labels=3)
    (tmp_path / "val.txt").write_text("the cat sat on the mat\na big dog ran fast\nthe sun and the moon\n" * 4)
    r, text = _build(tmp_path, "bert", "bert", "text-classification", "validation: {data: val.txt}\npipeline: auto\n")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["pipeline"]["passed"] and out["pipeline"]["samples"] == 12
    assert out["pipeline"]["metrics"]["max_abs"] < 1e-5
    published = {p["model"] for p in out["published"]}
    assert published == {"bert", "bert_text_preprocess", "bert_text_postprocess", "bert_text"}
    cfg = json.loads((tmp_path / "model_repository/bert/1/build_manifest.json").read_text())["config"]
    assert cfg["pipeline"]["postprocess"]["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": [3]}]
    # anywhere else, auto is refused with what to write
    d = {"name": "m", "source": {"checkpoint": "x.pt"}, "pipeline": "auto", "targets": [{"name": "fp32"}]}
    r = run_cli("validate", str(write_config(d, tmp_path / "m.yaml")), cwd=tmp_path)
    assert r.returncode == 2 and "pipeline: auto derives the steps from a Hugging Face folder" in r.stderr


def test_pipeline_auto_for_an_image_model_replays_its_processor(tmp_path):
    """pipeline: auto on a ViT folder: RGB pixels of any size in, the folder's image
    processor settings replayed by mscompile.hf_steps (equal to the processor itself,
    also for center-cropping and ConvNeXt's crop_pct rule), probabilities out, gated end to
    end on the validation images; a processor it cannot replay is refused at validate."""
    from mscompile import hf_steps
    from PIL import Image
    from transformers import BitImageProcessor, ConvNextImageProcessor, DeiTImageProcessor, ViTImageProcessor

    rng = np.random.default_rng(0)
    for proc in (
        ViTImageProcessor(size={"height": 32, "width": 32}),
        DeiTImageProcessor(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}),
        BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}),
        ConvNextImageProcessor(size={"shortest_edge": 32}),
        ConvNextImageProcessor(size={"shortest_edge": 400}),  # from 384 up: warped to a square
    ):
        cfg = json.loads(proc.to_json_string())
        for h, w in ((50, 70), (81, 64)):
            im = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            want = np.asarray(proc([im], return_tensors="np")["pixel_values"])
            got = hf_steps.pixels_for([im], cfg)
            assert got.shape == want.shape and np.abs(got - want).max() < 1e-5, (type(proc).__name__, h, w)

    make_vit(tmp_path / "vit")
    (tmp_path / "images").mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"images/{i:02d}.png")
    r, _ = _build(tmp_path, "vit", "vit", "image-classification", "validation: {data: images}\npipeline: auto\n")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["pipeline"]["passed"] and out["pipeline"]["samples"] == 10, out["pipeline"]
    assert {p["model"] for p in out["published"]} == {
        "vit",
        "vit_image_preprocess",
        "vit_image_postprocess",
        "vit_image",
    }
    cfg = json.loads((tmp_path / "model_repository/vit/1/build_manifest.json").read_text())["config"]
    assert cfg["pipeline"]["preprocess"]["inputs"] == [{"name": "image", "dtype": "uint8", "shape": [-1, -1, 3]}]
    assert (tmp_path / "model_repository/vit_image_preprocess/1/preprocessor_config.json").is_file()

    # ConvNeXt from 384 px has a rule hf_steps replays; a size rule it does not know is refused
    conf = tmp_path / "vit/preprocessor_config.json"
    conf.write_text(json.dumps({**json.loads(conf.read_text()), "size": {"max_height": 32, "max_width": 32}}))
    r = run_cli("validate", "vit.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "pipeline: auto" in r.stderr and "write pipeline: steps" in r.stderr, r.stderr
