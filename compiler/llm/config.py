"""model.yaml for `task: text-generation`: a causal LM checkpoint, text to gate on,
and LLM targets (the backends whose task is text-generation: vllm, tensorrtllm)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag

from ..backends import backends_of
from ..sections import NAME_PATTERN, MlflowConfig, Section
from .sections import LlmCalibration, LlmProfile, LlmSource, LlmTritonConfig, LlmValidation


def llm_target_union() -> Any:
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
    validation: LlmValidation = Field(default_factory=LlmValidation)
    calibration: LlmCalibration | None = None
    targets: list[LlmTargetConfig] = Field(min_length=1)  # type: ignore[valid-type]
    triton: LlmTritonConfig = Field(default_factory=LlmTritonConfig)
    profile: LlmProfile = Field(default_factory=LlmProfile)
    mlflow: MlflowConfig | None = None
