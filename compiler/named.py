"""Image models by name from torchvision or timm, with a local weights file:
`source: {torchvision: resnet50, checkpoint: resnet50.pth}` or
`source: {timm: convnext_tiny, checkpoint: weights.safetensors}`.

`expand` turns such a model.yaml into the plain form before it is validated: the
factory is `mscompile.named:torchvision_model` / `timm_model` (the library's own
constructor, `model_args` passed through, e.g. num_classes), the input is
`images` [-1, 3, H, W] at the size the library's preset for the model uses (timm:
the model's pretrained_cfg; torchvision: its registered weights' crop size, else
224; `image_size` overrides), the outputs are found by one forward pass on the
meta device (no weights read, no compute); validation and calibration data come
from an image folder (resized and center-cropped as the preset does, normalized
with its mean and std) or, when none is given, seeded synthetic images (warned).
The library's version enters the cache keys. Nothing is downloaded: the weights are
the checkpoint file, loaded by the build's own checked loading."""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Any

import numpy as np

from .data import image_files
from .errors import ConfigError
from .loading import flatten_outputs
from .sections import resolve_path

LIBRARIES = ("torchvision", "timm")
SYNTHETIC_SAMPLES = 32
SYNTHETIC = "mscompile.named:synthetic"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_pct": 0.875}


def library_of(src: dict[str, Any]) -> str | None:
    """The library a source names (`torchvision:` or `timm:`), when not yet expanded."""
    found = [lib for lib in LIBRARIES if lib in src]
    if len(found) > 1:
        raise ConfigError(f"source: give one of {' or '.join(LIBRARIES)}, not both")
    return found[0] if found and not src.get("factory") else None


def _import(lib: str, key: str) -> Any:
    try:
        return importlib.import_module(lib)
    except Exception as exc:  # an ImportError, or a library that fails inside its own import
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"{key}: {lib} does not import here ({type(exc).__name__}: {first}); install it beside this torch "
            f"(pip install {lib}), or write checkpoint + factory"
        ) from None


def _construct(lib: str, name: str, args: dict[str, Any]) -> Any:
    mod = importlib.import_module(lib)
    if lib == "timm":
        return mod.create_model(name, pretrained=False, **args)
    return mod.models.get_model(name, weights=None, **args)


def _preset(lib: str, name: str, model: Any) -> dict[str, Any]:
    """size [h, w], mean, std, crop_pct of the library's own preprocessing for the model."""
    if lib == "timm":
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        _, h, w = cfg.get("input_size", (3, 224, 224))
        return {
            "size": [int(h), int(w)],
            "mean": [float(x) for x in cfg.get("mean", IMAGENET["mean"])],
            "std": [float(x) for x in cfg.get("std", IMAGENET["std"])],
            "crop_pct": float(cfg.get("crop_pct") or IMAGENET["crop_pct"]),
        }
    import torchvision

    try:
        weights = list(torchvision.models.get_model_weights(name))
    except (ValueError, KeyError):
        weights = []
    preset = {"size": [224, 224], **IMAGENET}
    if weights:
        t = weights[0].transforms()
        crop, resize = list(getattr(t, "crop_size", [224])), list(getattr(t, "resize_size", [256]))
        preset.update(
            size=[int(crop[0]), int(crop[-1])],
            mean=[float(x) for x in getattr(t, "mean", IMAGENET["mean"])],
            std=[float(x) for x in getattr(t, "std", IMAGENET["std"])],
            crop_pct=float(crop[0]) / float(resize[0]),
        )
    return preset


def _image_size(value: Any, key: str) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return [value, value]
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return list(value)
    raise ConfigError(f"{key}.image_size: give one size (224) or [height, width], got {value!r}")


def _outputs(model: Any, size: list[int], key: str) -> list[str]:
    """Output names from one forward pass on the meta device: a single tensor is
    `logits`; dicts and tuples by their flattened paths (a segmenter's `out`, `aux`)."""
    import torch

    try:
        with torch.no_grad():
            out = model(torch.empty(2, 3, *size, device="meta"))
    except Exception as exc:
        raise ConfigError(
            f"{key}: the model did not run on a shape-only pass ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0][:200]}); declare outputs: in model.yaml"
        ) from None
    items = flatten_outputs(out)
    if len(items) == 1 and items[0][0] == "output":
        return ["logits"]
    return [p.replace(".", "_") for p, _ in items]


def expand(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A model.yaml mapping whose source names a torchvision or timm model, in the plain
    form (keys the user wrote are kept: inputs, outputs, validation, export...)."""
    import torch

    src = dict(data.get("source") or {})
    lib = library_of(src)
    assert lib is not None
    key = f"{where}: source.{lib}"
    name = src.get(lib)
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"{key}: give the model's name in {lib} (e.g. {'resnet50' if lib == 'torchvision' else 'convnext_tiny'})"
        )
    if not src.get("checkpoint"):
        raise ConfigError(
            f"{where}: source.checkpoint: a {lib} model needs its weights file (a state dict .pth/.pt or "
            ".safetensors; nothing is downloaded)"
        )
    mod = _import(lib, key)
    known = mod.list_models() if lib == "timm" else mod.models.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        raise ConfigError(
            f"{key}: {lib} {mod.__version__} has no model {name!r}" + (f"; close: {close}" if close else "")
        )
    args = src.get("model_args") or {}
    if not isinstance(args, dict):
        raise ConfigError(
            f"{where}: source.model_args: a mapping of the constructor's arguments (e.g. num_classes: 10)"
        )
    try:
        with torch.device("meta"):
            model = _construct(lib, name, dict(args)).eval()
    except TypeError as exc:
        raise ConfigError(f"{where}: source.model_args: {lib} {name}: {exc}") from None
    preset = _preset(lib, name, model)
    size = _image_size(src.get("image_size"), f"{where}: source") or preset["size"]
    preset["size"] = size
    out = dict(data)
    out["source"] = {
        **{k: v for k, v in src.items() if k not in ("factory", "factory_args")},
        "factory": f"mscompile.named:{lib}_model",
        "factory_args": {"name": name, "args": dict(args), "version": str(mod.__version__)},
    }
    out.setdefault(
        "inputs",
        [
            {
                "name": "images",
                "dtype": "float32",
                "shape": [-1, 3, *size],
                "range": {"min": [1, 3, *size], "opt": [8, 3, *size], "max": [64, 3, *size]},
            }
        ],
    )
    if not data.get("outputs"):
        out["outputs"] = [{"name": n} for n in _outputs(model, size, key)]
    out["validation"] = _data(data.get("validation"), preset, 0, "validation")
    int8 = any(isinstance(t, dict) and t.get("precision") == "int8" for t in data.get("targets") or [])
    if data.get("calibration") is not None or int8:
        out["calibration"] = _data(data.get("calibration"), preset, 1, "calibration")
    return out


def _data(section: Any, preset: dict[str, Any], seed: int, key: str) -> dict[str, Any]:
    section = dict(section or {})
    data = section.get("data")
    if data is None and section.get("generator") is None:
        section["generator"] = SYNTHETIC
        section["generator_args"] = {"preset": preset, "seed": seed}
        section.setdefault("samples", SYNTHETIC_SAMPLES)
    elif isinstance(data, str) and resolve_path(data).is_dir():
        path = resolve_path(data)
        image_files(path, f"{key}.data")
        section.pop("data")
        section["generator"] = "mscompile.named:images"
        section["generator_args"] = {"preset": preset, "images_folder": str(path)}
    return section


# -- what the build calls (factories, data generators) ---------------------------------


def torchvision_model(name: str, args: dict[str, Any] | None = None, version: str = "") -> Any:
    """torchvision.models.get_model(name, weights=None, **args): the structure; the
    build loads the checkpoint into it. `version` only enters the cache keys."""
    return _construct("torchvision", name, dict(args or {}))


def timm_model(name: str, args: dict[str, Any] | None = None, version: str = "") -> Any:
    """timm.create_model(name, pretrained=False, **args); as torchvision_model."""
    return _construct("timm", name, dict(args or {}))


def _normalize(arr: np.ndarray, preset: dict[str, Any]) -> np.ndarray:
    x = arr.astype(np.float32) / 255.0
    x = (x - np.asarray(preset["mean"], np.float32)) / np.asarray(preset["std"], np.float32)
    return x.transpose(0, 3, 1, 2).astype(np.float32)


def images(preset: dict[str, Any], images_folder: str, batch: int = 32) -> Any:
    """The image files of a folder (sorted by name) as the preset prepares them: the
    shorter side resized to size / crop_pct (bilinear), the center cropped to size,
    scaled to [0, 1], normalized."""
    from PIL import Image

    h, w = preset["size"]
    paths = image_files(Path(images_folder), "generator_args.images_folder")
    for s in range(0, len(paths), batch):
        out = []
        for p in paths[s : s + batch]:
            im = Image.open(p).convert("RGB")
            scale = max(h, w) / preset["crop_pct"] / min(im.size)
            im = im.resize((max(w, round(im.size[0] * scale)), max(h, round(im.size[1] * scale))), Image.BILINEAR)
            left, top = (im.size[0] - w) // 2, (im.size[1] - h) // 2
            out.append(np.asarray(im.crop((left, top, left + w, top + h))))
        yield {"images": _normalize(np.stack(out), preset)}


def synthetic(preset: dict[str, Any], seed: int) -> Any:
    """Seeded random images at the model's size, normalized as the preset does: a
    parity check of the same inputs through PyTorch and the variant (the summary
    says the gates ran on synthetic inputs)."""
    rng = np.random.default_rng(seed)
    h, w = preset["size"]
    yield {"images": _normalize(rng.integers(0, 256, (SYNTHETIC_SAMPLES, h, w, 3), dtype=np.uint8), preset)}
