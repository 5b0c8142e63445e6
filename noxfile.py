"""Test sessions on other stacks than the default install.

  nox -s tests          # Python 3.11, what `pip install -e '.[dev]'` resolves today (newest onnx/ORT/numpy)
  nox -s gpu_stack      # Python 3.12 with the lent GPU machine's pins: onnx 1.23.1, onnxruntime 1.30 (no servers or once tests; of the llm tests the vllm ones)
  nox -s newest         # Python 3.12, every dependency upgraded to its newest release

The default install already takes the newest onnx, onnxruntime and numpy (the
requirements are lower bounds); these sessions add Python 3.12 and the older
ONNX Runtime the GPU machine carries. `.ci/run` runs `gpu_stack` as its second
leg when a Python 3.12 is on the machine.
"""

import nox

nox.options.default_venv_backend = "venv"
INSTALL = ["torch==2.13.0", "-e", ".[dev]"]


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install(*INSTALL)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python="3.12")
def gpu_stack(session: nox.Session) -> None:
    """The suite on the GPU machine's onnx/onnxruntime, on two workers, less the `servers`
    tests (the hand-off to real Triton/Ray/MLflow servers) and the `once` tests (refusals,
    crash and concurrency safety), whose checks do not change with these pins, and the
    `llm` tests other than the `vllm` ones (they run in environments of their own and
    never load this stack's onnx or onnxruntime); CI's first leg runs the rest
    (`not vllm and not zoo`), so every test runs in one leg or both."""
    session.install(*INSTALL, "onnx==1.23.1", "onnxruntime==1.30.0")
    session.run(
        "python", "-m", "pytest", "-n", "2", "-m", "not servers and not once and (not llm or vllm)", *session.posargs
    )


@nox.session(python="3.12")
def newest(session: nox.Session) -> None:
    session.install("--upgrade", "--upgrade-strategy", "eager", *INSTALL)
    session.run("python", "-m", "pytest", *session.posargs)
