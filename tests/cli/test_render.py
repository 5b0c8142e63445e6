"""The CLI's rendering, in process: what a user reads after a build."""

from mscompile.builder import BuildResult, Variant
from mscompile.cli import print_summary
from mscompile.pipeline import Status


def test_the_summary_prints_each_backends_own_speed_figure(capsys):
    """A TensorRT-LLM profile has tokens/s and no p50 (the summary raised KeyError 'p50_ms'
    after a successful TensorRT-LLM build); each backend declares its figure."""
    rows = [{"batch": 1, "tokens_per_s": 812.4, "seconds": 0.5, "tokens": 406}]
    variants = [
        Variant("trt", "tensorrtllm", "fp16", Status.OK, profile={"runtime": "tensorrtllm", "batches": rows}),
        Variant("vl", "vllm", "bfloat16", Status.OK, profile={"runtime": "vllm", "batches": rows}),
        Variant(
            "fp32",
            "onnxruntime",
            "fp32",
            Status.OK,
            profile={"runtime": "onnxruntime", "batches": [{"batch": 8, "p50_ms": 0.251}, {"batch": 1, "p50_ms": 0.1}]},
        ),
    ]
    print_summary(BuildResult("m", variants, []))
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert "b1:812tok/s" in lines["trt"] and "b1:812tok/s" in lines["vl"]
    assert "b1:0.10ms b8:0.25ms" in lines["fp32"]
