"""The sections of an LLM model.yaml (task: text-generation), shared by the LLM backends."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from ..sections import FACTORY_PATTERN, NAME_PATTERN, RetentionConfig, Section, VersionPolicy


class LlmSource(Section):
    checkpoint: str | None = Field(
        default=None,
        min_length=1,
        description="a Hugging Face causal-LM folder (config.json, *.safetensors, tokenizer files), "
        "or pkg:<package>/<folder>",
    )
    factory: str | None = Field(
        default=None,
        pattern=FACTORY_PATTERN,
        description="module:function returning (model, tokenizer), a transformers causal LM and its tokenizer; "
        "mscompile saves them as a Hugging Face folder (safetensors) and builds from that",
    )
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the factory")

    @model_validator(mode="after")
    def _one_source(self) -> LlmSource:
        if (self.checkpoint is None) == (self.factory is None):
            raise ValueError(
                "give exactly one of checkpoint (a Hugging Face folder, or pkg:...) and factory (module:function)"
            )
        if self.args and self.factory is None:
            raise ValueError("args are the factory's keyword arguments: give a factory, or remove args")
        return self


class LlmValidation(Section):
    text: str | None = Field(
        default=None,
        min_length=1,
        description="a .txt (one passage per line) or .jsonl ({'text': ...}) file: perplexity; "
        "with neither text nor prompts, seeded synthetic token ids are used (and the build says so)",
    )
    prompts: str | None = Field(
        default=None, min_length=1, description="a .txt (one prompt per line) or .jsonl file: greedy agreement"
    )
    new_tokens: int = Field(default=32, ge=1, le=4096, description="greedy tokens generated per prompt")
    max_texts: int = Field(default=64, ge=1, le=100_000)
    max_prompts: int = Field(default=16, ge=1, le=100_000)
    max_tokens: int = Field(default=256, ge=8, le=32_768, description="passages are cut to this many tokens")


class LlmCalibration(Section):
    text: str = Field(
        min_length=1, description="a .txt or .jsonl file of calibration passages (kept apart from validation)"
    )
    samples: int = Field(default=64, ge=1, le=100_000)
    max_tokens: int = Field(default=256, ge=8, le=32_768)


class LlmTolerance(Section):
    """The gate of an LLM variant against Hugging Face transformers (the reference)."""

    perplexity_increase: float | None = Field(
        default=None, ge=0, description="largest relative perplexity increase on the validation text, in percent"
    )
    token_agreement: float | None = Field(
        default=None, ge=0, le=1, description="smallest fraction of prompts whose greedy tokens all match"
    )
    first_divergence: float | None = Field(
        default=None, ge=0, description="smallest mean position of the first differing greedy token"
    )


class LlmTargetBase(Section):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    tolerance: LlmTolerance = Field(default_factory=lambda: LlmTolerance(perplexity_increase=1.0, token_agreement=0.9))
    on_fail: Literal["error", "skip"] = "error"


class LlmTritonConfig(Section):
    repository: str = Field(default="model_repository", min_length=1)
    deploy: str | None = Field(
        default=None, description="fastest (most tokens/s at the batch) | a target name; default: the first that passes"
    )
    server_repository: str | None = Field(
        default=None,
        description="the repository's path as the Triton server sees it (e.g. /models in a container); "
        "model.json names the checkpoint there. Default: its path here",
    )
    version_policy: VersionPolicy | None = None
    retention: RetentionConfig | None = None
    lock_timeout_s: float = Field(default=600, gt=0)


class LlmProfile(Section):
    enabled: bool = True
    batches: list[Annotated[int, Field(ge=1, le=4096)]] = Field(default_factory=lambda: [1, 8])
    new_tokens: int = Field(default=32, ge=1, le=4096)
