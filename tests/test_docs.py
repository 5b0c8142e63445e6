"""The documentation keeps its promises: README stays short and its model.yaml
parses, the reference page is what the schema gives, the architecture page names
every module (and only modules that exist), and the site builds strictly."""

import importlib.util
import re
import subprocess
import sys

import pytest
import yaml
from helpers import REPO


def test_readme_is_short_and_its_model_yaml_is_valid(tmp_path, monkeypatch):
    from mscompile.tasks import parse_config

    text = (REPO / "README.md").read_text()
    assert len(text.encode()) <= 10 * 1024
    block, short = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    cfg = parse_config(yaml.safe_load(block))
    assert cfg.name == "digits" and [t.name for t in cfg.targets] == ["fp32", "int8"]
    # the Hugging Face short form, against a folder made where it says
    pytest.importorskip("transformers")
    from test_huggingface import make_bert

    monkeypatch.chdir(tmp_path)
    make_bert(tmp_path / "models/bert-classifier", num_labels=2)
    cfg = parse_config(yaml.safe_load(short))
    assert [i.name for i in cfg.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [t.name for t in cfg.targets] == ["fp32", "int8"] and cfg.calibration is not None
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO / link).is_file(), link


def test_the_model_yaml_reference_is_what_the_schema_gives():
    from mscompile.reference import markdown

    page = (REPO / "docs/reference/model-yaml.md").read_text()
    assert page == markdown(), "stale: run `mscompile schema --markdown > docs/reference/model-yaml.md`"
    for section in ("## ModelConfig", "## LlmModelConfig", "## OnnxRuntimeTarget", "## VllmTarget", "## TrtLlmTarget"):
        assert section in page


def test_the_architecture_page_names_every_module_and_only_real_ones():
    page = (REPO / "docs/architecture.md").read_text()
    named = set(re.findall(r"`((?:compiler|passes)/[\w/]+\.py)`", page))
    modules = {p.relative_to(REPO).as_posix() for root in ("compiler", "passes") for p in (REPO / root).rglob("*.py")}
    assert not modules - named, f"modules the architecture page does not name: {sorted(modules - named)}"
    assert not named - modules, f"named but missing: {sorted(named - modules)}"


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (pip install -e '.[dev]')"
)
def test_the_docs_build_strictly(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()
