"""Typed artifacts passed between passes: a path, the sha256 of its content,
and JSON-able metadata. Passes declare which artifact type they take and give,
and the pipeline checks the chain before anything runs."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(path: Path) -> str:
    """Digest of a file, or of a folder (relative names and file digests, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    return folder_digest((rel, sha256_file(f)) for rel, f in walk_files(path))


def walk_files(path: Path):
    """(relative name, path) of every file under a folder, in a stable order."""
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            f = Path(root) / name
            yield f.relative_to(path).as_posix(), f


def folder_digest(entries) -> str:
    """One digest over (relative name, file digest) pairs, in the order given."""
    h = hashlib.sha256()
    for rel, digest in entries:
        h.update(rel.encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


def size_of(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


_KINDS: dict[str, type[Artifact]] = {}


@dataclass(frozen=True)
class Artifact:
    path: Path
    digest: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    kind: ClassVar[str] = "artifact"
    model_name: ClassVar[str] = ""  # the file a runtime opens, inside `path` (model.onnx, model.xml, model.plan)

    @property
    def model_file(self) -> Path:
        if not self.model_name:
            raise TypeError(f"a {self.kind} is not a model a runtime opens")
        return self.path / self.model_name

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _KINDS[cls.kind] = cls

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        p = self.path.relative_to(relative_to) if relative_to else self.path
        return {"kind": self.kind, "path": p.as_posix(), "digest": self.digest, "meta": self.meta}

    @staticmethod
    def from_json(data: dict[str, Any], base: Path | None = None) -> Artifact:
        cls = _KINDS[data["kind"]]
        p = Path(data["path"])
        return cls(path=(base / p) if base else p, digest=data["digest"], meta=data.get("meta", {}))

    @classmethod
    def of(cls, path: Path, meta: dict[str, Any] | None = None) -> Artifact:
        return cls(path=Path(path), digest=sha256_path(path), meta=dict(meta or {}))


@dataclass(frozen=True)
class TorchSource(Artifact):
    """The checkpoint file plus the source file of its factory. `digest` covers both,
    so editing the model class invalidates everything built from it."""

    kind: ClassVar[str] = "torch_source"


@dataclass(frozen=True)
class HfSource(Artifact):
    """A Hugging Face checkpoint folder (config, safetensors, tokenizer): its digest covers every file."""

    kind: ClassVar[str] = "hf_source"


@dataclass(frozen=True)
class HfModel(Artifact):
    """A causal LM as a folder: model/ (a Hugging Face checkpoint vLLM and transformers load)
    and, for the reference, reference.json (token ids, log-likelihoods, greedy tokens)."""

    kind: ClassVar[str] = "hf_model"


@dataclass(frozen=True)
class TrtllmCheckpoint(Artifact):
    """A TensorRT-LLM checkpoint as a folder: checkpoint/ (config.json, rank<N>.safetensors,
    written by ModelOpt), tokenizer/ (the Hugging Face tokenizer files), and for quantized
    checkpoints modelopt_state.pt (the calibrated quantizers, for the simulated gate)."""

    kind: ClassVar[str] = "trtllm_checkpoint"


@dataclass(frozen=True)
class TrtllmEngine(Artifact):
    """TensorRT-LLM engines as a folder: engine/ (config.json, rank<N>.engine) from
    trtllm-build, tokenizer/, and build.sh (the command that built them)."""

    kind: ClassVar[str] = "trtllm_engine"


@dataclass(frozen=True)
class Dataset(Artifact):
    """An .npz of named arrays (validation or calibration data)."""

    kind: ClassVar[str] = "dataset"


@dataclass(frozen=True)
class TorchModel(Artifact):
    """Folder: module.json (how to re-create the module) + reference.npz (its outputs
    on the validation inputs)."""

    kind: ClassVar[str] = "torch_model"


@dataclass(frozen=True)
class OnnxModel(Artifact):
    """Folder holding model.onnx (and model.onnx.data when weights are external).
    meta: io (names, dtypes, dims), opset, node_count, precision."""

    kind: ClassVar[str] = "onnx_model"
    model_name: ClassVar[str] = "model.onnx"

    @property
    def onnx_file(self) -> Path:
        return self.path / "model.onnx"


@dataclass(frozen=True)
class ParityReport(Artifact):
    """report.json: a variant's metrics against the PyTorch reference and its gate."""

    kind: ClassVar[str] = "parity_report"

    @property
    def passed(self) -> bool:
        return bool(self.meta.get("passed"))


@dataclass(frozen=True)
class TrtEngine(Artifact):
    """Folder: model.plan, engine.json (TensorRT version, GPU, compute capability,
    build flags, profiles) and reproduce.py (the script that built it)."""

    kind: ClassVar[str] = "trt_engine"
    model_name: ClassVar[str] = "model.plan"

    @property
    def plan_file(self) -> Path:
        return self.path / "model.plan"


@dataclass(frozen=True)
class OpenVinoModel(Artifact):
    """Folder: model.xml + model.bin (OpenVINO IR). meta: io, precision, quantization."""

    kind: ClassVar[str] = "openvino_model"
    model_name: ClassVar[str] = "model.xml"


@dataclass(frozen=True)
class ProfileReport(Artifact):
    """profile.json: latency percentiles and throughput per batch size, on one runtime."""

    kind: ClassVar[str] = "profile_report"
