"""model.yaml for `task: text-generation`: a causal LM checkpoint, text to gate on,
and LLM targets (the backends whose task is text-generation: vllm, tensorrtllm)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag

from ..sections import NAME_PATTERN, MlflowConfig, Section
from .sections import LlmCalibration, LlmProfile, LlmSource, LlmTritonConfig, LlmValidation


def llm_target_union() -> Any:
    from ..backends import backends_of

    members = tuple(Annotated[b.Target, Tag(name)] for name, b in backends_of("text-generation").items())
    return Annotated[
        Union[members],  # noqa: UP007
        Discriminator(lambda v: v.get("backend", "vllm") if isinstance(v, dict) else v.backend),
    ]


LlmTargetConfig = llm_target_union()


class LlmModelConfig(Section):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    task: Literal["text-generation"]
    source: LlmSource
    validation: LlmValidation
    calibration: LlmCalibration | None = None
    targets: list[LlmTargetConfig] = Field(min_length=1)  # type: ignore[valid-type]
    triton: LlmTritonConfig = Field(default_factory=LlmTritonConfig)
    profile: LlmProfile = Field(default_factory=LlmProfile)
    mlflow: MlflowConfig | None = None


def text_file(key: str, value: str) -> tuple[Path, list[str]]:
    """A text file of model.yaml (validation.text, validation.prompts, calibration.text):
    its path and passages, or ConfigError naming the key and what to fix."""
    from mscompile.passes.llm import read_lines

    from ..config import resolve_path
    from ..errors import ConfigError

    p = resolve_path(value)
    if not p.is_file():
        raise ConfigError(f"{key}: {p} not found; check the path (relative paths start at the working directory)")
    try:
        lines = read_lines(str(p))
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{key}: {p} is not one passage per line (or JSON lines with a 'text' key): {exc}") from None
    if not lines:
        raise ConfigError(f"{key}: {p} holds no text")
    return p, lines
