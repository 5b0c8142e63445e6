"""Error types. One type per cause; the CLI maps each to an exit code.

User errors (bad model.yaml, bad files) carry a message that names the key,
file or tensor and says what to do; the CLI prints it without a traceback.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1  # a build failed for a reason other than the user's input
EXIT_USAGE = 2  # configuration, input file or usage error: nothing was built
EXIT_ACCURACY = 3  # a variant missed its accuracy gate


class MscompileError(Exception):
    """Base class. `exit_code` is what the CLI exits with. What was done before the error
    travels with it: `result`, the build's result so far (the variants whose gates ran);
    `summary`, a serve-check's or deploy's summary so far. Both None when nothing was done."""

    exit_code = EXIT_FAILURE
    result: Any = None
    summary: Any = None


class ConfigError(MscompileError):
    """model.yaml is wrong, or a file it names is missing or malformed."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        self.problems = problems or [message]
        super().__init__(message if problems is None else "\n".join(problems))


class InputDataError(ConfigError):
    """Validation or calibration data does not match the model's inputs."""


class CheckpointError(ConfigError):
    """The checkpoint cannot be loaded safely or does not fit the factory."""


class ShapeError(ConfigError):
    """The declared input shapes are rejected by the model."""


class PipelineTypeError(MscompileError):
    """Pass i's output type is not pass i+1's input type (a programming error)."""


class PassError(MscompileError):
    """A pass failed. Names the pass and the passes that ran before it."""

    def __init__(self, pass_name: str, prior: list[str], cause: BaseException | str) -> None:
        self.pass_name = pass_name
        self.prior = list(prior)
        self.cause = cause
        ran = ", ".join(prior) if prior else "none"
        super().__init__(f"pass '{pass_name}' failed: {cause} (passes run before it: {ran})")


class AccuracyGateError(MscompileError):
    """One or more variants missed their tolerance; nothing was published."""

    exit_code = EXIT_ACCURACY


class RepositoryError(MscompileError):
    """The Triton repository cannot be written (lock held, bad state)."""


class UnsafePathError(ConfigError):
    """A file mscompile would write is a symbolic link (or not a regular file): refused."""


class UserCodeExit(MscompileError):
    """The user's model code (factory, tokenizer, generator, forward) ended the process."""

    exit_code = EXIT_USAGE


class TargetSkippedError(MscompileError):
    """--require-all-targets: a target could not be built here (e.g. TensorRT absent)."""


class FarmTaskError(MscompileError):
    """A target failed on a build-farm node: the node's error (a pass error, a user error), with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        self.exit_code = exit_code
        super().__init__(message)


class ServeLoadError(MscompileError):
    """The server did not load (or start, or answer): the message carries its own error line."""


class ServedWrongError(MscompileError):
    """The server answers, but not within the deployed target's gate."""

    exit_code = EXIT_ACCURACY
