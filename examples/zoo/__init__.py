"""The architecture coverage set: third-party architectures (transformers' own model
classes, with tiny configs and seeded weights; a torchvision-style detector and two
encoder halves through factories) built the way a user would build them, each with
fp32, fp16, INT8 on ONNX Runtime and INT8 on OpenVINO.

`python -m examples.zoo --write docs/model-coverage.md` builds every entry and
writes the matrix; tests/test_zoo.py builds them all and checks that each target
passed, or failed or was skipped with a reason that names it (never an internal
error). No hub access: every folder, tokenizer and image processor is made here."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

WORDS = (
    "the a cat dog sat on mat ran fast slow red blue green house tree car road sun moon star big small "
    "and with over under near far old new"
).split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]

# every entry builds these; INT8 and OpenVINO may fail their gate (on_fail: skip)
TARGETS = [
    {"name": "fp32", "backend": "onnxruntime", "precision": "fp32", "tolerance": {"max_rel": 1e-3}},
    {"name": "fp16", "backend": "onnxruntime", "precision": "fp16", "tolerance": {"max_rel": 2e-2}, "on_fail": "skip"},
    {"name": "int8", "backend": "onnxruntime", "precision": "int8", "mode": "auto", "on_fail": "skip",
     "recovery": {"max_tries": 2}, "tolerance": {"cosine": 0.98}},
    {"name": "openvino_int8", "backend": "openvino", "precision": "int8", "on_fail": "skip",
     "tolerance": {"cosine": 0.98}},
]  # fmt: skip


def _tokenizer(folder: Path) -> None:
    from transformers import BertTokenizerFast

    BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, model_max_length=64).save_pretrained(folder)


def _save(model: Any, folder: Path) -> None:
    model.eval().save_pretrained(folder)


def _hf(
    task: str,
    text: bool = False,
    image: int | None = None,
    outputs: list[str] | None = None,
    processor: Callable[[], Any] | None = None,
):
    """An entry from a transformers config: (make the folder) -> model.yaml source part."""

    def wrap(make_model: Callable[[], Any]) -> Callable[[Path], dict[str, Any]]:
        def make(folder: Path) -> dict[str, Any]:
            import torch

            torch.manual_seed(0)
            folder.mkdir(parents=True, exist_ok=True)
            _save(make_model(), folder)
            if text:
                _tokenizer(folder)
            if image:
                from transformers import ViTImageProcessor

                ViTImageProcessor(size={"height": image, "width": image}).save_pretrained(folder)
            if processor:
                processor().save_pretrained(folder)
            doc: dict[str, Any] = {"source": {"huggingface": str(folder), "task": task}}
            if outputs:
                doc["outputs"] = [{"name": o} for o in outputs]
            return doc

        return make

    return wrap


def _t() -> Any:
    import transformers

    return transformers


TEXT = {"vocab_size": len(VOCAB), "max_position_embeddings": 64}
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


@_hf("text-classification", text=True)
def bert():
    return _t().BertForSequenceClassification(_t().BertConfig(**TEXT, **SMALL, num_labels=3))


@_hf("feature-extraction", text=True, outputs=["last_hidden_state", "pooler_output"])
def bert_two_outputs():
    return _t().BertModel(_t().BertConfig(**TEXT, **SMALL))


@_hf("text-classification", text=True)
def distilbert():
    cfg = _t().DistilBertConfig(
        vocab_size=len(VOCAB), max_position_embeddings=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64
    )
    return _t().DistilBertForSequenceClassification(cfg)


@_hf("token-classification", text=True)
def roberta():
    cfg = _t().RobertaConfig(vocab_size=len(VOCAB), max_position_embeddings=72, pad_token_id=0, **SMALL, num_labels=4)
    return _t().RobertaForTokenClassification(cfg)


@_hf("text-classification", text=True)
def albert():
    return _t().AlbertForSequenceClassification(_t().AlbertConfig(**TEXT, **SMALL, embedding_size=16, num_labels=2))


@_hf("feature-extraction", text=True)
def electra():
    return _t().ElectraModel(_t().ElectraConfig(**TEXT, **SMALL, embedding_size=16))


@_hf("feature-extraction", text=True)
def gpt2():
    cfg = _t().GPT2Config(vocab_size=len(VOCAB), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    return _t().GPT2Model(cfg)


IMG = {"image_size": 32, "num_channels": 3}


@_hf("image-classification", image=32)
def vit():
    return _t().ViTForImageClassification(_t().ViTConfig(**IMG, patch_size=8, **SMALL, num_labels=5))


@_hf("image-classification", image=32)
def deit():
    return _t().DeiTForImageClassification(_t().DeiTConfig(**IMG, patch_size=8, **SMALL, num_labels=5))


@_hf("image-classification", image=32)
def swin():
    cfg = _t().SwinConfig(
        **IMG, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, num_labels=5
    )
    return _t().SwinForImageClassification(cfg)


@_hf("image-classification", image=32)
def convnext():
    cfg = _t().ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)
    return _t().ConvNextForImageClassification(cfg)


@_hf("image-classification", image=32)
def resnet():
    cfg = _t().ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=5
    )
    return _t().ResNetForImageClassification(cfg)


@_hf("image-classification", image=32)
def mobilenet_v2():
    import torch

    cfg = _t().MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.35, num_labels=5)
    model = _t().MobileNetV2ForImageClassification(cfg)
    # transformers' own init leaves this net's logits near 1e-25 (every INT8 rounds them to 0):
    # He init, as a trained net's activations would be, keeps them at ~1
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


@_hf("image-classification", image=32)
def mobilevit():
    cfg = _t().MobileViTConfig(
        num_channels=3, image_size=32, patch_size=2, hidden_sizes=[16, 24, 32],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48], num_attention_heads=2, num_labels=5,
    )  # fmt: skip
    return _t().MobileViTForImageClassification(cfg)


@_hf("semantic-segmentation", image=32)
def segformer():
    cfg = _t().SegformerConfig(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
        num_attention_heads=[1, 1], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2],
        decoder_hidden_size=16, num_labels=3,
    )  # fmt: skip
    return _t().SegformerForSemanticSegmentation(cfg)


@_hf("feature-extraction")
def wav2vec2():
    cfg = _t().Wav2Vec2Config(
        **SMALL, conv_dim=(16, 16), conv_kernel=(10, 8), conv_stride=(10, 8), num_feat_extract_layers=2,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, do_stable_layer_norm=True,
    )  # fmt: skip
    return _t().Wav2Vec2Model(cfg)


@_hf("automatic-speech-recognition")
def wav2vec2_ctc():
    cfg = _t().Wav2Vec2Config(
        **SMALL, conv_dim=(16, 16), conv_kernel=(10, 8), conv_stride=(10, 8), num_feat_extract_layers=2,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=12, pad_token_id=0,
    )  # fmt: skip
    return _t().Wav2Vec2ForCTC(cfg)


# one second of audio at 16 kHz: 100 log-mel frames, Whisper's two frames per encoder position
@_hf("automatic-speech-recognition", processor=lambda: _t().WhisperFeatureExtractor(feature_size=16, chunk_length=1))
def whisper():
    cfg = _t().WhisperConfig(
        num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, max_source_positions=50,
        vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
    )  # fmt: skip
    return _t().WhisperForConditionalGeneration(cfg)


def _yolos_processor() -> Any:
    return _t().YolosImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})


@_hf("object-detection", processor=_yolos_processor)
def yolos():
    cfg = _t().YolosConfig(
        **SMALL, image_size=[32, 32], patch_size=8, num_detection_tokens=6, num_labels=4,
    )  # fmt: skip
    return _t().YolosForObjectDetection(cfg)


# -- by name from torchvision / timm, with a weights file ---------------------------------


def _named(lib: str, model: str, image_size: int, **args: Any) -> Callable[[Path], dict[str, Any]]:
    def make(folder: Path) -> dict[str, Any]:
        import importlib

        import torch

        folder.mkdir(parents=True, exist_ok=True)
        mod = importlib.import_module(lib)  # where it does not import, the build says so
        torch.manual_seed(0)
        m = mod.create_model(model, pretrained=False, **args) if lib == "timm" else mod.models.get_model(model, **args)
        torch.save(m.state_dict(), folder / "weights.pth")
        return {
            "source": {lib: model, "checkpoint": str(folder / "weights.pth"), "model_args": args,
                       "image_size": image_size},
        }  # fmt: skip

    return make


# -- factory entries: what a source: {huggingface} does not derive ----------------------

FACTORIES = '''
import torch
from torch import nn
import transformers


class T5Encoder(nn.Module):
    """The encoder half of an encoder-decoder (T5: relative-position buckets)."""

    def __init__(self):
        super().__init__()
        cfg = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
        cfg._attn_implementation = "eager"
        self.encoder = transformers.T5EncoderModel(cfg)

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state



class TinyDetector(nn.Module):
    """torchvision-style detection output: per image a dict of boxes, scores, labels
    whose count depends on the image (torchvision's own detectors cannot load here)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.cls = nn.Conv2d(16, 4, 1)
        self.box = nn.Conv2d(16, 4, 1)

    def forward(self, images):
        f = self.backbone(images)
        scores = torch.sigmoid(self.cls(f))
        boxes = self.box(f)
        out = []
        for i in range(images.shape[0]):
            s, labels = scores[i].flatten(1).max(dim=0)
            keep = torch.nonzero(s > 0.5).squeeze(1)
            out.append({"boxes": boxes[i].flatten(1).t()[keep], "scores": s[keep], "labels": labels[keep]})
        return out
'''


def _factory(cls: str, inputs: list[dict[str, Any]], outputs: list[str], data: Callable[[Any], dict[str, Any]]):
    def make(folder: Path) -> dict[str, Any]:
        import torch

        folder.mkdir(parents=True, exist_ok=True)
        (folder / "zoo_models.py").write_text(FACTORIES)
        ns: dict[str, Any] = {}
        exec(compile(FACTORIES, "zoo_models", "exec"), ns)  # noqa: S102 - this module's own source
        torch.manual_seed(0)
        torch.save(ns[cls]().state_dict(), folder / f"{cls}.pt")
        rng = np.random.default_rng(0)
        np.savez(folder / "val.npz", **data(rng))
        np.savez(folder / "cal.npz", **data(np.random.default_rng(1)))
        return {
            "source": {"checkpoint": str(folder / f"{cls}.pt"), "factory": f"zoo_models:{cls}"},
            "inputs": inputs,
            "outputs": [{"name": o} for o in outputs],
            "export": {"exporter": "torchscript"},
            "validation": {"data": str(folder / "val.npz")},
            "calibration": {"data": str(folder / "cal.npz")},
        }

    return make


def _ids(rng: Any) -> dict[str, Any]:
    ids = rng.integers(1, 64, (16, 20)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[::2, 14:] = 0
    return {"input_ids": ids, "attention_mask": mask}


t5_encoder = _factory(
    "T5Encoder",
    [
        {
            "name": n,
            "dtype": "int64",
            "shape": [-1, "sequence"],
            "range": {"min": [1, 1], "opt": [8, 20], "max": [16, 64]},
        }
        for n in ("input_ids", "attention_mask")
    ],
    ["last_hidden_state"],
    _ids,
)
detector = _factory(
    "TinyDetector",
    [{"name": "images", "shape": [1, 3, 32, 32]}],
    ["boxes", "scores", "labels"],
    lambda rng: {"images": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)},
)

# name -> (what it covers, maker)
ENTRIES: dict[str, tuple[str, Callable[[Path], dict[str, Any]]]] = {
    "tv_resnet18": ("torchvision resnet18 (by name)", _named("torchvision", "resnet18", 64, num_classes=10)),
    "tv_mobilenet_v3": (
        "torchvision mobilenet_v3_small (hardswish, squeeze-excite; by name)",
        _named("torchvision", "mobilenet_v3_small", 64, num_classes=10),
    ),
    "timm_efficientnet": ("timm efficientnet_b0 (by name)", _named("timm", "efficientnet_b0", 64, num_classes=10)),
    "timm_vit": (
        "timm vit_tiny_patch16_224 at 32 px (by name)",
        _named("timm", "vit_tiny_patch16_224", 32, num_classes=10, img_size=32, patch_size=8),
    ),
    "bert": ("BERT encoder, text-classification (HF folder)", bert),
    "bert_two_outputs": ("BERT, two outputs of its ModelOutput (HF folder)", bert_two_outputs),
    "distilbert": ("DistilBERT, text-classification (HF folder)", distilbert),
    "roberta": ("RoBERTa, token-classification (HF folder)", roberta),
    "albert": ("ALBERT (shared layers), text-classification (HF folder)", albert),
    "electra": ("ELECTRA, feature-extraction (HF folder)", electra),
    "gpt2": ("GPT-2 decoder as an encoder, feature-extraction (HF folder)", gpt2),
    "vit": ("ViT, image-classification (HF folder)", vit),
    "deit": ("DeiT, image-classification (HF folder)", deit),
    "swin": ("Swin (windowed attention), image-classification (HF folder)", swin),
    "convnext": ("ConvNeXt, image-classification (HF folder)", convnext),
    "resnet": ("ResNet, image-classification (HF folder)", resnet),
    "mobilenet_v2": ("MobileNetV2 (depthwise, ReLU6), image-classification (HF folder)", mobilenet_v2),
    "mobilevit": ("MobileViT (conv + attention), image-classification (HF folder)", mobilevit),
    "segformer": ("SegFormer, semantic-segmentation (HF folder)", segformer),
    "wav2vec2": ("wav2vec2 audio encoder on raw audio, feature-extraction (HF folder)", wav2vec2),
    "t5_encoder": ("T5 encoder of an encoder-decoder (factory)", t5_encoder),
    "wav2vec2_ctc": ("wav2vec2 with its CTC head, automatic-speech-recognition (HF folder)", wav2vec2_ctc),
    "whisper": ("Whisper's encoder on log-mel features, automatic-speech-recognition (HF folder)", whisper),
    "yolos": ("YOLOS (ViT detector: logits, boxes), object-detection (HF folder)", yolos),
    "detector": ("detector with per-image dicts, variable box count, batch 1 (factory)", detector),
}


def model_yaml(name: str, root: Path) -> dict[str, Any]:
    """Make the entry's files under root/<name>/ and return its model.yaml document."""
    doc = ENTRIES[name][1](root / name)
    return {
        "name": name,
        **doc,
        "targets": json.loads(json.dumps(TARGETS)),
        "triton": {"repository": str(root / "repo")},
        "profile": {"enabled": False},  # the matrix is about what builds and passes, not speed
    }


def build(name: str, root: Path) -> dict[str, Any]:
    """One entry built through the Python API: per target its status and reason, or the
    build's error (its type and message) when it did not get as far as the targets."""
    import mscompile
    from mscompile.errors import MscompileError

    row: dict[str, Any] = {"name": name, "covers": ENTRIES[name][0], "targets": {}, "error": None}
    doc = model_yaml(name, root)
    try:
        with contextlib.chdir(root / name):  # a factory's module sits in the entry's folder
            result = mscompile.build(doc, quiet=True, cache_dir=root / "cache")
    except MscompileError as exc:
        row["error"] = f"{type(exc).__name__} (exit {exc.exit_code}): {str(exc).splitlines()[0]}"
        result = exc.result
    for v in result.variants if result is not None else []:
        row["targets"][v.target] = {"status": v.status.value, "reason": v.reason, "metrics": v.metrics}
    return row
