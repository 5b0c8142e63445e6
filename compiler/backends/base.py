"""The backend interface: everything about one runtime lives in one module.

A backend declares its own target section (selected by `backend:` in
model.yaml), its cross-field checks, whether this machine can build it, what
its device-bound results depend on, the recipe of named steps that turns the
shared optimized ONNX graph into a gated deployable, and what Triton gets. The
core (config, build, plan, publish, CLI) asks the backend; it never tests a
backend's name.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from mscompile.passes.check_accuracy import CheckAccuracy, CheckConfig
from mscompile.passes.profile import Profile, ProfilingConfig

from ..artifacts import Artifact, Dataset, ParityReport, ProfileReport
from ..device import cpu_fingerprint
from ..pipeline import Pipeline, Status, Step
from ..sections import TargetBase

if TYPE_CHECKING:
    from ..config import ModelConfig
    from ..pipeline import Driver, StepRecord


# -- what a target's build produced ------------------------------------------------


@dataclass
class TargetOutcome:
    status: Status
    model: Artifact | None = None  # what would be deployed (a graph, an engine, an IR)
    report: ParityReport | None = None
    reason: str = ""
    tries: list[dict[str, Any]] = field(default_factory=list)
    quantization: dict[str, Any] | None = None
    steps: list[str] = field(default_factory=list)
    note: str = ""  # how the variant was arrived at, for the summary
    gated_on: list[str] = field(default_factory=list)  # runtimes the gates ran on, in order
    # engines of one model for several GPU kinds (a farm's TensorRT target with gpus:):
    # compute capability -> the engine built and gated on a node of that kind
    engines: dict[str, Artifact] = field(default_factory=dict)


# -- recipes -----------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    """A parity check against the PyTorch reference. `on` says what it checks:
    'prepared' (the graph before the deployable step: catches a bad quantization
    before an engine build) or 'deployable' (what is served)."""

    step: Step
    runtime: str  # the runtime the check runs on, in words ("onnxruntime", "openvino", "tensorrt")
    on: str = "deployable"
    label: str = ""  # prefixed to a failure of a 'prepared' gate
    optional: bool = False  # a SKIPPED check (the runtime cannot run this graph) does not stop the target


class RecipeRunner:
    """Runs steps of one target through the driver and remembers their ids in order;
    `work_s`: seconds of the steps that ran (cache hits cost nothing), what a search's
    time budget counts."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.steps: list[str] = []
        self.work_s = 0.0

    def run(self, step: Step, inp: Artifact) -> StepRecord:
        rec = self.driver.run_step(step, inp)
        self.steps.append(step.id)
        if not rec.cached:
            self.work_s += rec.seconds
        return rec


def budget_stop(spent: float, budget: float, untried: list[str]) -> str:
    """What an INT8 search that spent its recovery.budget_s says it left out."""
    return f"time budget spent ({spent:.0f} s of recovery.budget_s {budget:g} s); not tried: {', '.join(untried)}"


class Search(Protocol):
    """A target whose deployable is found by trying (INT8 recovery). `first_tries`:
    the chains that always run, each from the prepared graph (what `plan` lists);
    `later`: the ids of steps that run only when a try misses its gate; `run`
    does the tries."""

    def first_tries(self) -> list[list[Step]]: ...

    def later(self) -> list[str]: ...

    def run(self, runner: RecipeRunner, graph: Artifact) -> TargetOutcome: ...


@dataclass
class Recipe:
    """Named steps from the shared graph to a gated deployable:
    prepare (graph rewrites) -> gates on 'prepared' -> deployable -> gates on
    'deployable'; or prepare -> search. `profile` times the deployable where it
    is served. `plan` and `build` both walk `planned()`."""

    prepare: list[Step]
    deployable: Step | None = None
    gates: list[Gate] = field(default_factory=list)
    search: Search | None = None
    profile: Step | None = None
    served_by: str = ""  # the runtime that serves the variant, in words

    def walk(self, visit: Any, base: Any) -> None:
        """Visit the planned steps in the order a build runs them; `visit(step, inp)`
        returns what the step hands on (reports hand on nothing: the model before
        them goes on). `plan`, `planned()` and `typecheck` are walks."""
        cur = base
        for s in self.prepare:
            cur = visit(s, cur)
        prepared = cur
        if self.search is not None:
            deployable = prepared
            for chain in self.search.first_tries():
                c = prepared
                for s in chain:
                    out = visit(s, c)
                    if not is_report(s):
                        c = deployable = out
        else:
            for g in self.gates:
                if g.on == "prepared":
                    visit(g.step, prepared)
            deployable = visit(self.deployable, prepared) if self.deployable is not None else prepared
            for g in self.gates:
                if g.on == "deployable":
                    visit(g.step, deployable)
        if self.profile is not None:
            visit(self.profile, deployable)

    def planned(self) -> list[Step]:
        steps: list[Step] = []
        self.walk(lambda s, inp: steps.append(s), None)
        return steps

    def later(self) -> list[str]:
        """Ids of steps that run only if a try misses its gate (a search's recovery)."""
        return self.search.later() if self.search is not None else []

    def step(self, step_id: str) -> Step:
        for s in self.planned():
            if s.id == step_id:
                return s
        raise KeyError(f"no step {step_id!r} in this recipe ({[s.id for s in self.planned()]})")

    def typecheck(self, input_type: type[Artifact]) -> None:
        """Each planned step takes what the walk hands it, checked before anything runs."""

        def visit(step: Step, given: type[Artifact]) -> type[Artifact]:
            Pipeline([step], input_type=given)
            return step.pass_cls.output_type

        self.walk(visit, input_type)


def is_report(step: Step) -> bool:
    """Reports (parity, profile) describe the model before them; they are not the
    next step's input."""
    return issubclass(step.pass_cls.output_type, (ParityReport, ProfileReport))


@dataclass(frozen=True)
class RecipeInputs:
    """The shared side inputs a recipe wires into its steps."""

    validation: Dataset
    calibration: Dataset | None
    reference: str = "load_checkpoint"  # the step whose output holds the PyTorch reference
    # target -> the fingerprint of the farm node that ran it (device-bound steps are keyed with
    # it); a target not named here is keyed with this machine's
    devices: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


# -- serving -----------------------------------------------------------------------


@dataclass
class ServedModel:
    """One Triton model: its name, its config (a ModelConfig message of Triton's
    own schema) and the files of its version folder (empty in a plan)."""

    name: str
    config: Any
    files: dict[str, Path] = field(default_factory=dict)
    # files whose text depends on the version number: name -> f(version, the model's folder on the server)
    templates: dict[str, Any] = field(default_factory=dict)
    # a config that names its own version folder (e.g. an engine path): f(version, the model's
    # folder on the server) -> ModelConfig; `config` is then what a plan shows
    configure: Any = None


# -- how a backend's profile says "fast" ----------------------------------------------


@dataclass(frozen=True)
class Speed:
    """The figure a backend's profile rows carry per batch, and which way is better:
    summaries print it, `deploy: fastest` ranks by it."""

    key: str  # the field of a profile row
    unit: str
    higher_is_better: bool = False

    def value(self, row: dict[str, Any]) -> float | None:
        v = row.get(self.key)
        return float(v) if isinstance(v, (int, float)) else None

    def rank(self, row: dict[str, Any]) -> float:
        """Smaller ranks first (the faster); a row without the figure ranks last."""
        v = self.value(row)
        if v is None:
            return float("inf")
        return -v if self.higher_is_better else v

    def fmt(self, row: dict[str, Any]) -> str:
        v = self.value(row)
        if v is None:
            return "-"
        return f"{v:.0f}{self.unit}" if self.higher_is_better else f"{v:.2f}{self.unit}"


LATENCY = Speed("p50_ms", "ms")
TOKENS_PER_S = Speed("tokens_per_s", "tok/s", higher_is_better=True)


# -- the interface -------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    module: str  # top-level import name
    install: str  # what to pip install (or where it comes from)


def missing(requirements: list[Requirement]) -> list[Requirement]:
    out = []
    for r in requirements:
        try:
            found = importlib.util.find_spec(r.module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            out.append(r)
    return out


class Backend:
    """Subclass per runtime; register by defining `BACKEND = MyBackend()` in a
    module of mscompile.backends (or through the `mscompile.backends` entry point)."""

    task: ClassVar[str] = "tensor"  # tensor models (ONNX pipeline) or "text-generation" (LLM pipeline)
    name: ClassVar[str]
    Target: ClassVar[type[TargetBase]]
    description: ClassVar[str] = ""
    speed: ClassVar[Speed] = LATENCY  # what its profile rows measure per batch
    # its published version folder is a checkpoint vLLM's OpenAI-compatible server loads (serve-check)
    openai_server: ClassVar[bool] = False

    def problems(self, cfg: ModelConfig, target: Any, key: str) -> list[str]:
        """Cross-field checks of one target; each line starts with `key` (e.g. 'model.yaml: targets[1]')."""
        return []

    def requirements(self, target: Any) -> list[Requirement]:
        """Python modules the target's whole chain needs."""
        return []

    def available(self, target: Any) -> tuple[bool, str]:
        """Whether this machine can build the target, and if not, why: checked
        before any pass of the target runs."""
        gone = missing(self.requirements(target))
        if gone:
            names = ", ".join(r.module for r in gone)
            how = "; ".join(f"{r.module}: {r.install}" for r in gone)
            return False, f"{self.name} target {target.name!r} needs {names}, not installed here ({how})"
        return True, ""

    def session(self, target: Any) -> Any:
        """The runtimes.py function that runs this target's deployable (a single model: what
        the end-to-end gate of a pipeline and Ray Serve run), or None where the variant is
        not one model a session opens (an LLM served by its engine)."""
        return None

    def rayserve_runtime(self, target: Any) -> str | None:
        """The runtime a Ray Serve app runs this target's variant on (the app's `RUNTIME`),
        or None where a Ray Serve app cannot serve it."""
        return None

    def rayserve_files(self, target: Any, artifact: Artifact) -> tuple[dict[str, Path], str]:
        """(files for the app's version folder, the one the app loads) of a deployed variant."""
        raise NotImplementedError(f"backend {self.name} has no Ray Serve app")

    def doctor(self) -> list[tuple[str, str, str]]:
        """`mscompile doctor` rows (component, status, detail): whether a target of this
        backend with its default settings can be built here, by the rule builds use
        (available(), then stops_at())."""
        t = self.Target.model_construct(name=self.name, backend=self.name)
        ok, why = self.available(t)
        stop = self.stops_at(t) if ok else None
        status = "missing" if not ok else ("partial" if stop else "ok")
        detail = why if not ok else (f"builds until {stop}" if stop else self.description)
        return [(f"backend {self.name}", status, detail)]

    def skip_point(self, target: Any) -> tuple[str, str] | None:
        """For a target that is available: (the id of the first step a build on this machine
        will report SKIPPED, e.g. an engine build without its GPU runtime; why), or None.
        `plan` marks that step and every later one as skipped."""
        return None

    def stops_at(self, target: Any) -> str | None:
        """skip_point in words: '<step> SKIPPED: <why>', or None."""
        point = self.skip_point(target)
        return None if point is None else f"{point[0]} SKIPPED: {point[1]}"

    def fingerprint(self, target: Any) -> dict[str, Any]:
        """What this backend's device-bound results (engines, latency profiles) depend on."""
        return cpu_fingerprint()

    def device(self, target: Any, inputs: RecipeInputs) -> dict[str, Any]:
        """The fingerprint recipes key device-bound steps with: this machine's, or, when a
        build farm ran the target on another node, that node's (given in the recipe's
        inputs, so the driver finds the node's results in the shared cache)."""
        given = inputs.devices.get(target.name)
        return dict(given) if given is not None else self.fingerprint(target)

    def resources(self, target: Any) -> dict[str, Any]:
        """What one of the target's farm tasks needs from a Ray node: num_cpus, num_gpus,
        memory (bytes), resources (custom, e.g. {"accelerator_type:H100": 0.001})."""
        return {"num_cpus": 1}

    def recipe(self, cfg: ModelConfig, target: Any, inputs: RecipeInputs) -> Recipe:  # pragma: no cover
        raise NotImplementedError

    def serving(
        self,
        cfg: ModelConfig,
        target: Any,
        name: str,
        io_sig: dict[str, Any],
        artifact: Artifact | None,
    ) -> list[ServedModel]:  # pragma: no cover
        """What Triton gets for a deployed variant; `artifact` is None in a plan."""
        raise NotImplementedError

    def plan_details(self, cfg: ModelConfig, target: Any) -> dict[str, Any]:
        """Extra facts `plan` shows for a target (JSON), with 'lines' for people."""
        return {}


# -- helpers backends share --------------------------------------------------------------


def parity_step(
    cfg: ModelConfig,
    t: TargetBase,
    step_id: str,
    inputs: RecipeInputs,
    *,
    session: Any,
    pass_cls: Any = None,
    device: dict[str, Any] | None = None,
    **settings: Any,
) -> Step:
    """A check of the step's input against the PyTorch reference under t.tolerance, run
    by `session` (a runtimes.py function: the runtime the backend gates on)."""
    pass_cls = pass_cls or CheckAccuracy
    return Step(
        step_id,
        pass_cls,
        CheckConfig(
            io=cfg.io,
            batch_size=cfg.validation.batch_size,
            tolerance=t.tolerance,
            shapes=cfg.validation.gate_shapes(),
            padding_mask=cfg.padding_mask(),
            **settings,
        ),
        extras={"reference": inputs.reference, "validation": inputs.validation},
        device=device,
        session=session,
    )


def profile_step(
    cfg: ModelConfig,
    t: TargetBase,
    inputs: RecipeInputs,
    device: dict[str, Any],
    runtime: str,
    *,
    session: Any,
    threads: int = 0,
    pass_cls: Any = None,
) -> Step | None:
    """Latency and throughput of the deployable where it is served (None: profiling is off)."""
    if not cfg.profile.enabled:
        return None

    pc = ProfilingConfig(
        io=cfg.io,
        batch_sizes=tuple(cfg.profile_batches()),
        runtime=runtime,
        intra_op_threads=threads,
        window=cfg.profile.window,
        max_windows=cfg.profile.max_windows,
        agreement=cfg.profile.agreement,
        budget_s=cfg.profile.budget_s,
    )
    return Step(
        f"{t.name}/profile",
        pass_cls or Profile,
        pc,
        extras={"validation": inputs.validation},
        device=device,
        session=session,
    )
