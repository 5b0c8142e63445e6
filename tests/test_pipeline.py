import pytest
from helpers import make_driver
from mscompile.artifacts import OnnxModel, ParityReport, TorchModel, TorchSource
from mscompile.config import OptimizeConfig
from mscompile.errors import PassError, PipelineTypeError
from mscompile.passes.check_accuracy import CheckAccuracy
from mscompile.passes.convert_fp16 import ConvertFp16, Fp16Config
from mscompile.passes.optimize_graph import OptimizeGraph
from mscompile.pipeline import Pass, PassResult, Pipeline, Step
from pydantic import BaseModel, ConfigDict


class Cfg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    fail: bool = False
    factor: int = 1


class Double(Pass[TorchSource, TorchModel]):
    """A pass over plain files, to exercise the driver without heavy libraries."""

    name = "double"
    input_type = TorchSource
    output_type = TorchModel
    Config = Cfg
    runs = 0

    def run(self, inp, cfg, ctx):
        Double.runs += 1
        if cfg.fail:
            raise ValueError("boom")
        data = inp.path.read_bytes() * 2 * cfg.factor
        (ctx.workdir / "out.bin").write_bytes(data)
        return PassResult(path=ctx.workdir, metrics={"bytes": len(data)})


def test_types_are_checked_before_anything_runs():
    with pytest.raises(
        PipelineTypeError,
        match=r"the pipeline input gives TorchSource, but step opt \(optimize_graph\) takes OnnxModel",
    ):
        Pipeline([Step("opt", OptimizeGraph, OptimizeConfig())], input_type=TorchSource)
    report_then_fp16 = [
        Step("check", CheckAccuracy, _check_cfg(), extras={"reference": "a", "validation": "b"}),
        Step("fp16", ConvertFp16, Fp16Config()),
    ]
    with pytest.raises(
        PipelineTypeError,
        match=r"step check \(check_accuracy\) gives ParityReport, but step fp16 \(convert_fp16\) takes OnnxModel",
    ):
        Pipeline(report_then_fp16)
    assert issubclass(CheckAccuracy.output_type, ParityReport) and CheckAccuracy.input_type is OnnxModel


def _check_cfg():
    from mscompile.config import IOSpec, Tolerance
    from mscompile.passes.check_accuracy import CheckConfig

    io = IOSpec(inputs=[{"name": "x", "shape": [-1, 4]}], outputs=[{"name": "y"}])
    return CheckConfig(io=io, batch_size=8, tolerance=Tolerance())


def test_step_checks_side_inputs_and_config_type():
    with pytest.raises(PipelineTypeError, match="takes side inputs"):
        Step("check", CheckAccuracy, _check_cfg())
    with pytest.raises(PipelineTypeError, match="expects OptimizeConfig"):
        Step("opt", OptimizeGraph, Fp16Config())


def test_driver_caches_and_rekeys(tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"ab")
    inp = TorchSource.of(src)
    Double.runs = 0
    r1 = make_driver(tmp_path).run_step(Step("d", Double, Cfg()), inp)
    assert not r1.cached and (r1.output.path / "out.bin").read_bytes() == b"abab"
    r2 = make_driver(tmp_path).run_step(Step("d", Double, Cfg()), inp)
    assert r2.cached and r2.output.digest == r1.output.digest and Double.runs == 1
    r3 = make_driver(tmp_path).run_step(Step("d", Double, Cfg(factor=2)), inp)
    assert not r3.cached and Double.runs == 2
    r4 = make_driver(tmp_path, force=True).run_step(Step("d", Double, Cfg()), inp)
    assert not r4.cached and Double.runs == 3
    src.write_bytes(b"xy")
    r5 = make_driver(tmp_path).run_step(Step("d", Double, Cfg()), TorchSource.of(src))
    assert not r5.cached and (r5.output.path / "out.bin").read_bytes() == b"xyxy"


def test_failure_names_the_pass_and_those_before_it(tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"ab")
    d = make_driver(tmp_path)
    d.run_step(Step("first", Double, Cfg()), TorchSource.of(src))
    with pytest.raises(PassError, match=r"pass 'second' failed: ValueError: boom \(passes run before it: first\)"):
        d.run_step(Step("second", Double, Cfg(fail=True)), TorchSource.of(src))
    assert [p.name for p in (tmp_path / "cache" / "tmp").iterdir()] == []  # its work folder is gone
