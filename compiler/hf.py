"""Hugging Face model folders as sources: `source: {huggingface: <folder>, task: <task>}`.

`expand` turns such a model.yaml into the plain form before it is validated, the way
Optimum's export configs derive a model's ONNX signature from its task: the
checkpoint is the folder's model.safetensors, the factory is `mscompile.hf:model`
(transformers' Auto class of the task, built from config.json, wrapped so that
forward() takes the inputs in order and returns the task's outputs as a tuple); the
inputs come from the model's main input (token ids and the tokenizer's other inputs,
pixel values at the image processor's size, raw audio), the outputs from the task;
validation and calibration data come from a text file (through the folder's own
tokenizer), a folder of images (through its image processor), or, when none is given,
seeded synthetic inputs made with the same tokenizer or processor. Only local folders
are read (no hub access). What was derived is what the manifest records."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np

from . import hf_steps
from .data import image_files
from .errors import ConfigError
from .sections import resolve_path

# task -> (transformers Auto class, output names of the task's ModelOutput)
TASKS: dict[str, tuple[str, list[str]]] = {
    "feature-extraction": ("AutoModel", ["last_hidden_state"]),
    "text-classification": ("AutoModelForSequenceClassification", ["logits"]),
    "token-classification": ("AutoModelForTokenClassification", ["logits"]),
    "image-classification": ("AutoModelForImageClassification", ["logits"]),
    "semantic-segmentation": ("AutoModelForSemanticSegmentation", ["logits"]),
    # DETR-style set prediction: a fixed number of queries, so fixed output shapes
    "object-detection": ("AutoModelForObjectDetection", ["logits", "pred_boxes"]),
    # CTC models (wav2vec2, HuBERT...): per-frame vocabulary logits; an encoder-decoder
    # speech model (Whisper) builds its encoder (see ENCODER_OF)
    "automatic-speech-recognition": ("AutoModelForCTC", ["logits"]),
}
# task -> the Auto class whose model's encoder is built when the first one has none
ENCODER_OF = {"automatic-speech-recognition": "AutoModelForSpeechSeq2Seq"}
NOT_YET = {
    "text-generation": "a language model's folder builds with vLLM or TensorRT-LLM targets (backend: vllm)",
}
PROCESSOR_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "sentencepiece.bpe.model",
    "spiece.model",
)
SYNTHETIC_SAMPLES = 32
SYNTHETIC = "mscompile.hf:synthetic"  # the generator of data made when none is given
AUDIO_RATE = 16000


def _folder(value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: give the path of a local Hugging Face model folder")
    path = resolve_path(value)
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{key}: {path} has no config.json; give a folder written by save_pretrained "
            "(mscompile reads local folders only, never the hub)"
        )
    return path


def files_digest(folder: Path) -> str:
    """The config and tokenizer/processor files: what shapes the model and its data."""
    h = hashlib.sha256()
    for name in PROCESSOR_FILES:
        f = folder / name
        if f.is_file():
            h.update(name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).hexdigest().encode())
    return h.hexdigest()


def _model_class(folder: Path, task: str) -> tuple[Any, Any, bool]:
    """(the transformers class, its config, whether only its encoder is built)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    for name, encoder in ((TASKS[task][0], False), (ENCODER_OF.get(task), True)):
        found = getattr(transformers, name)._model_mapping.get(type(config), None) if name else None
        if found is not None:
            # some model types map to several classes (DeiT: with and without its teacher): the first
            return (found[0] if isinstance(found, (tuple, list)) else found), config, encoder
    also = f" or {ENCODER_OF[task]}" if task in ENCODER_OF else ""
    raise ConfigError(
        f"source.task: {task}: transformers has no {TASKS[task][0]}{also} for model_type {config.model_type!r}; "
        "pick the task the model was made for"
    )


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _image_processor(folder: Path) -> Any:
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)


def _image_size(folder: Path, config: Any) -> tuple[int, int]:
    """The size the folder's image processor makes (run on a square image: resizing and
    cropping settings differ between processors), else config.json's image_size."""
    if (folder / "preprocessor_config.json").is_file():
        from PIL import Image

        out = _image_processor(folder)(Image.new("RGB", (97, 97)), return_tensors="np")["pixel_values"]
        return int(out.shape[-2]), int(out.shape[-1])
    s = getattr(config, "image_size", None)
    if isinstance(s, int):
        return s, s
    if isinstance(s, (list, tuple)) and len(s) == 2:
        return int(s[0]), int(s[1])
    raise ConfigError(
        "source.huggingface: no preprocessor_config.json and no image_size in config.json: "
        "save the image processor in the folder, or declare inputs"
    )


def _feature_extractor(folder: Path) -> Any:
    from transformers import AutoFeatureExtractor

    return AutoFeatureExtractor.from_pretrained(str(folder), local_files_only=True)


def _feature_size(folder: Path, config: Any) -> tuple[int, int]:
    """(mel bins, frames) of a speech model's log-mel input: what the folder's feature
    extractor makes of one second of audio (Whisper's pads to its fixed window), else
    Whisper's own rule (two frames per encoder position)."""
    if (folder / "preprocessor_config.json").is_file():
        fe = _feature_extractor(folder)
        out = fe(np.zeros(AUDIO_RATE, np.float32), sampling_rate=AUDIO_RATE, return_tensors="np")["input_features"]
        return int(out.shape[-2]), int(out.shape[-1])
    mels, positions = getattr(config, "num_mel_bins", None), getattr(config, "max_source_positions", None)
    if config.model_type == "whisper" and mels and positions:
        return int(mels), 2 * int(positions)
    raise ConfigError(
        "source.huggingface: a log-mel speech model needs its feature extractor in the folder "
        "(preprocessor_config.json: feature_extractor.save_pretrained(folder)), or declare inputs"
    )


def signature(folder: Path, task: str) -> tuple[str, list[dict[str, Any]], list[str], Any]:
    """(modality, inputs: entries, output names, its transformers config) for the
    folder's model under `task`."""
    cls, config, encoder = _model_class(folder, task)
    outputs = ["last_hidden_state"] if encoder else TASKS[task][1]
    main = getattr(cls, "main_input_name", "input_ids")
    params = list(inspect.signature(cls.forward).parameters)
    if main == "input_ids":
        tok = _tokenizer(folder)
        names = [p for p in params if p in tok.model_input_names or p == "input_ids"]
        limit = min(int(getattr(config, "max_position_embeddings", 512) or 512), int(tok.model_max_length or 512))
        opt = min(128, limit)
        inputs = [
            {
                "name": n,
                "dtype": "int64",
                "shape": [-1, "sequence"],
                "range": {"min": [1, 1], "opt": [8, opt], "max": [64, limit]},
            }
            for n in names
        ]
        return "text", inputs, outputs, config
    if main == "pixel_values":
        h, w = _image_size(folder, config)
        c = int(getattr(config, "num_channels", 3) or 3)
        inputs = [
            {
                "name": "pixel_values",
                "dtype": "float32",
                "shape": [-1, c, h, w],
                "range": {"min": [1, c, h, w], "opt": [8, c, h, w], "max": [64, c, h, w]},
            }
        ]
        return "image", inputs, outputs, config
    if main == "input_values":
        inputs = [
            {
                "name": "input_values",
                "dtype": "float32",
                "shape": [-1, "samples"],
                "range": {"min": [1, AUDIO_RATE // 10], "opt": [4, AUDIO_RATE], "max": [16, 2 * AUDIO_RATE]},
            }
        ]
        return "audio", inputs, outputs, config
    if main == "input_features":
        mels, frames = _feature_size(folder, config)
        inputs = [
            {
                "name": "input_features",
                "dtype": "float32",
                "shape": [-1, mels, frames],
                "range": {"min": [1, mels, frames], "opt": [4, mels, frames], "max": [16, mels, frames]},
            }
        ]
        return "features", inputs, outputs, config
    raise ConfigError(
        f"source.huggingface: the model's main input is {main!r}, which mscompile does not derive yet; "
        "declare inputs and outputs and use a factory"
    )


def _data(
    section: Any, folder: Path, modality: str, digest: str, seed: int, key: str, resize: list[int] | None = None
) -> dict[str, Any]:
    """A validation/calibration section for an HF source: a .txt through the tokenizer,
    an image folder through the processor (each image first resized to `resize`, [h, w],
    where the processor keeps the aspect: a detector's), nothing given: synthetic inputs."""
    section = dict(section or {})
    common = {"folder": str(folder), "files": digest}
    data = section.get("data")
    if data is None and section.get("generator") is None:
        section["generator"] = SYNTHETIC
        section["generator_args"] = {**common, "modality": modality, "seed": seed}
        section.setdefault("samples", SYNTHETIC_SAMPLES)
    elif isinstance(data, str) and data.endswith(".txt") and modality == "text" and "tokenizer" not in section:
        section["tokenizer"] = "mscompile.hf:tokenize"
        section["tokenizer_args"] = common
    elif isinstance(data, str) and modality == "image" and resolve_path(data).is_dir():
        path = resolve_path(data)
        image_files(path, f"{key}.data")
        section.pop("data")
        section["generator"] = "mscompile.hf:images"
        section["generator_args"] = {**common, "images_folder": str(path)}
        if resize:
            section["generator_args"]["resize"] = list(resize)
    return section


def expand(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A model.yaml mapping whose source names a Hugging Face folder, in the plain form
    (keys the user wrote are kept: inputs, outputs, validation, export...)."""
    src = dict(data.get("source") or {})
    folder = _folder(src.get("huggingface"), f"{where}: source.huggingface")
    task = src.get("task")
    if task in NOT_YET:
        raise ConfigError(f"{where}: source.task: {task} is not derived yet: {NOT_YET[task]}")
    if task not in TASKS:
        raise ConfigError(f"{where}: source.task: {task!r}; use one of {', '.join(TASKS)}")
    if src.get("factory"):
        raise ConfigError(f"{where}: source: give huggingface + task, or checkpoint (+ factory), not both")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        shards = sorted(p.name for p in folder.glob("*.safetensors")) + sorted(p.name for p in folder.glob("*.bin"))
        raise ConfigError(
            f"{where}: source.huggingface: {folder} has no model.safetensors (found {shards or 'no weights'}); "
            "re-save with model.save_pretrained(folder, max_shard_size='1000GB') for one safetensors file"
        )
    modality, inputs, outputs, config = signature(folder, task)
    digest = files_digest(folder)
    out = dict(data)
    out["source"] = {
        "huggingface": str(src["huggingface"]),
        "task": task,
        "checkpoint": str(weights),
        "factory": "mscompile.hf:model",
        "factory_args": {
            "folder": str(folder),
            "task": task,
            "inputs": [i["name"] for i in (data.get("inputs") or inputs)],
            "outputs": [
                o["name"] if isinstance(o, dict) else o for o in (data.get("outputs") or [{"name": n} for n in outputs])
            ],
            "files": digest,
        },
    }
    out.setdefault("inputs", inputs)
    out.setdefault("outputs", [{"name": n} for n in outputs])
    out.setdefault("export", {"exporter": "torchscript"})  # transformers' graphs: the one ORT's fusions know
    # DETR-style processors keep the aspect ratio: a detector's images are first made the size it takes
    resize = list(out["inputs"][0]["shape"][2:]) if task == "object-detection" and modality == "image" else None
    out["validation"] = _data(data.get("validation"), folder, modality, digest, 0, "validation", resize)
    out["validation"].setdefault("shapes", "generate")  # the derived ranges are gated, not only the data's sizes
    pipe = data.get("pipeline")
    if pipe == "auto" or (isinstance(pipe, dict) and pipe.get("auto") is True):
        extra = {k: v for k, v in pipe.items() if k != "auto"} if isinstance(pipe, dict) else {}
        out["pipeline"] = {
            **_pipeline(data, folder, task, modality, int(config.num_labels), out["validation"], where),
            **extra,
        }
    int8 = any(isinstance(t, dict) and t.get("precision") == "int8" for t in data.get("targets") or [])
    if data.get("calibration") is not None or int8:
        out["calibration"] = _data(data.get("calibration"), folder, modality, digest, 1, "calibration", resize)
    return out


def _pipeline(
    data: dict[str, Any], folder: Path, task: str, modality: str, labels: int, validation: dict, where: str
) -> dict:
    """`pipeline: auto` (or `{auto: true, ...}` with keys of its own, e.g. python_path): the
    Triton ensemble text -> the folder's tokenizer (or RGB pixels -> its image
    processor's settings) -> the model -> probabilities (classification tasks), gated
    end to end on the validation text or images."""
    key = f"{where}: pipeline: auto"
    if modality == "image":
        pipe = _image_pipeline(data, folder, validation, key)
    else:
        pipe = _text_pipeline(data, folder, modality, validation, key)
    if task in ("text-classification", "token-classification", "image-classification"):
        pipe["postprocess"] = {
            "function": "mscompile.hf_steps:softmax_postprocess",
            "inputs": ["logits"],
            "outputs": [
                {"name": "probabilities", "shape": [-1, labels] if task == "token-classification" else [labels]}
            ],
        }
    return pipe


def _text_pipeline(data: dict[str, Any], folder: Path, modality: str, validation: dict, key: str) -> dict[str, Any]:
    if modality in ("audio", "features"):
        raise ConfigError(
            f"{key}: derives text and image ensembles; an audio model's feature extractor is not turned into a "
            "step: write pipeline: steps (preprocess: raw audio -> input_values / input_features)"
        )
    if modality != "text" or not (folder / "tokenizer.json").is_file():
        raise ConfigError(
            f"{key}: made for text models with a tokenizer.json and image models with a preprocessor_config.json "
            "in the folder; write pipeline: steps"
        )
    text = validation.get("data")
    if not (isinstance(text, str) and text.endswith(".txt")):
        raise ConfigError(f"{key}: the end-to-end gate needs raw text: set validation.data to a .txt file")
    files = [
        str(folder / f) for f in ("tokenizer.json", "tokenizer_config.json", "config.json") if (folder / f).is_file()
    ]
    return {
        "name": f"{data.get('name', 'model')}_text",
        "preprocess": {
            "function": "mscompile.hf_steps:text_preprocess",
            "files": files,
            "inputs": [{"name": "text", "dtype": "string", "shape": [1]}],
        },
        "validation": text,
    }


def _image_pipeline(data: dict[str, Any], folder: Path, validation: dict, key: str) -> dict[str, Any]:
    """RGB pixels of any size in; the folder's image processor settings replayed by
    hf_steps.pixels_for, checked here against the processor itself on two test images."""
    import json

    conf = folder / "preprocessor_config.json"
    if not conf.is_file():
        raise ConfigError(
            f"{key}: the folder has no preprocessor_config.json (its image processor); write pipeline: steps"
        )
    images = validation.get("generator_args", {}).get("images_folder")
    if not images:
        raise ConfigError(f"{key}: the end-to-end gate needs raw images: set validation.data to an image folder")
    cfg = json.loads(conf.read_text())
    rng = np.random.default_rng(0)
    tests = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((50, 70), (81, 64))]
    try:
        ours = [hf_steps.pixels_for([t], cfg) for t in tests]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{key}: {exc}; write pipeline: steps") from None
    proc = _image_processor(folder)
    theirs = [np.asarray(proc([t], return_tensors="np")["pixel_values"], np.float32) for t in tests]
    diff = max(
        float(np.abs(a - b).max()) if a.shape == b.shape else float("inf") for a, b in zip(ours, theirs, strict=True)
    )
    if diff > 0.05:
        raise ConfigError(
            f"{key}: mscompile.hf_steps does not reproduce {type(proc).__name__} (max difference {diff:.3g} on a "
            "test image); write pipeline: steps"
        )
    return {
        "name": f"{data.get('name', 'model')}_image",
        "preprocess": {
            "function": "mscompile.hf_steps:image_preprocess",
            "files": [str(conf)],
            "inputs": [{"name": "image", "dtype": "uint8", "shape": [-1, -1, 3]}],
        },
        "validation": images,
    }


# -- what the build calls (factory, tokenizer, generators) ----------------------------


def model(folder: str, task: str, inputs: list[str], outputs: list[str], files: str = "") -> Any:
    """The task's model, taking `inputs` in order and returning `outputs` as a tuple. Its
    weights come from the state dict the build loads (the load pass's checked copy of
    model.safetensors) through transformers' own loading (its renamed and tied weights);
    a missing or unexpected weight is an error; where the task builds an encoder-decoder's
    encoder (Whisper under automatic-speech-recognition), the encoder. `files` is not read: it puts the config
    and tokenizer files' digest in the cache keys."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cls, config, encoder = _model_class(Path(folder), task)

    class HfTask(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            with torch.device("meta"):  # the structure only: load_state_dict makes the real one
                self.model = cls(config)

        def forward(self, *args: Any) -> tuple[Any, ...]:
            out = self.model(**dict(zip(inputs, args, strict=True)), return_dict=True)
            return tuple(out[k] for k in outputs)

        def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
            loaded, info = cls.from_pretrained(
                None, config=config, state_dict=dict(state_dict), attn_implementation="eager", output_loading_info=True
            )
            bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
            if strict and bad:
                raise RuntimeError(
                    f"Error(s) in loading state_dict for {cls.__name__}: "
                    + "; ".join(f"{k} {sorted(map(str, v))[:5]}" for k, v in bad.items())
                )
            # an encoder-decoder speech model under automatic-speech-recognition: its encoder
            self.model = (loaded.get_encoder() if encoder else loaded).eval()
            return info

    return HfTask()


def tokenize(lines: list[str], folder: str, files: str = "") -> dict[str, np.ndarray]:
    """Lines through the folder's tokenizer, padded to the longest, truncated to the
    model's limit: one int64 array per tokenizer input."""
    return _encode(_tokenizer(Path(folder)), lines)


def _encode(tok: Any, lines: list[str]) -> dict[str, np.ndarray]:
    enc = tok(lines, padding="longest", truncation=True, return_tensors="np")
    return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}


def _pixels(proc: Any, ims: list[Any]) -> dict[str, np.ndarray]:
    return {"pixel_values": np.asarray(proc(ims, return_tensors="np")["pixel_values"], dtype=np.float32)}


def images(folder: str, images_folder: str, files: str = "", batch: int = 32, resize: list[int] | None = None) -> Any:
    """The image files of a folder (sorted by name) through the model's image processor,
    each first resized to `resize` ([h, w]) when given."""
    from PIL import Image

    proc = _image_processor(Path(folder))
    paths = image_files(Path(images_folder), "generator_args.images_folder")
    for s in range(0, len(paths), batch):
        ims = [Image.open(p).convert("RGB") for p in paths[s : s + batch]]
        if resize:
            ims = [im.resize((int(resize[1]), int(resize[0])), Image.Resampling.BILINEAR) for im in ims]
        yield _pixels(proc, ims)


def synthetic(folder: str, modality: str, seed: int, files: str = "") -> Any:
    """Seeded inputs when no data is given: text of random vocabulary words of varied
    length through the tokenizer; random images through the image processor; noise for
    audio (through the feature extractor for a log-mel model). A parity check of the same inputs through PyTorch and the variant: the
    summary says the gates ran on synthetic inputs."""
    rng = np.random.default_rng(seed)
    n = SYNTHETIC_SAMPLES
    if modality == "text":
        tok = _tokenizer(Path(folder))
        special = set(tok.all_special_ids)
        vocab = [t for t, i in tok.get_vocab().items() if i not in special and t.isalpha()]
        if len(vocab) < 10:
            vocab = [t for t, i in tok.get_vocab().items() if i not in special]
        words = [
            tok.convert_tokens_to_string([vocab[j] for j in rng.integers(0, len(vocab), int(rng.integers(4, 48)))])
            for _ in range(n)
        ]
        yield _encode(tok, words)  # the tokenizer loaded above, not again
    elif modality == "image":
        from PIL import Image

        proc = _image_processor(Path(folder))
        yield _pixels(proc, [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(n)])
    elif modality == "features":
        audio = [(rng.standard_normal(AUDIO_RATE) * 0.1).astype(np.float32) for _ in range(n)]
        if (Path(folder) / "preprocessor_config.json").is_file():
            fe = _feature_extractor(Path(folder))
            feats = fe(audio, sampling_rate=AUDIO_RATE, return_tensors="np")["input_features"]
        else:  # Whisper without its extractor: log-mel-like values at the model's window
            from transformers import AutoConfig

            mels, frames = _feature_size(Path(folder), AutoConfig.from_pretrained(folder, local_files_only=True))
            feats = rng.standard_normal((n, mels, frames)) * 0.5
        yield {"input_features": np.asarray(feats, dtype=np.float32)}
    else:
        yield {"input_values": (rng.standard_normal((n, AUDIO_RATE)) * 0.1).astype(np.float32)}
