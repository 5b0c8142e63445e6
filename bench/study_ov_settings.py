"""OpenVINO compile settings as a speed lever on INT8 IRs, mscompile's against optimum-intel's.

  python bench/study_ov_settings.py [--models minilm,vit] [--rounds 5]

Run after `python bench/bench_peers.py --models <the same> --peers optimum_intel`: it takes the
IR mscompile deployed (bench/.work/peers/<model>/repo/bench_<model>/1/model.xml) and
optimum-intel's INT8 IR from that run, and times each at batch 1 and 8 on the held-out
inputs with three compile settings, interleaved round by round, same threads:
  default  the CPU plugin's defaults (LATENCY hint; bf16 inference precision where the
           CPU has bf16 units, as Triton's OpenVINO backend runs it without parameters)
  static   the model reshaped to the exact input shape first (static batch and sequence)
  f32      INFERENCE_PRECISION_HINT f32 (the float ops around the INT8 ones in fp32)
It prints the median milliseconds of each and the ratio of mscompile's to optimum-intel's
under the same setting. Accuracy is not measured here (bench_peers does, at the defaults).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_int8 import time_side_by_side  # noqa: E402
from bench_peers import THREADS, WORK, isa, prepare_minilm, prepare_vit  # noqa: E402

SETTINGS = ("default", "static", "f32")


def compiled(core, path: Path, setting: str, feeds: dict):  # noqa: ANN001, ANN201
    import openvino as ov

    m = core.read_model(str(path))
    names = [p.get_any_name() for p in m.inputs]
    cfg: dict = {"INFERENCE_NUM_THREADS": THREADS}
    if setting == "static":
        m.reshape({n: ov.PartialShape(list(feeds[n].shape)) for n in names})
    if setting == "f32":
        cfg["INFERENCE_PRECISION_HINT"] = "f32"
    return core.compile_model(m, "CPU", cfg), {n: feeds[n] for n in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,vit")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    import openvino as ov

    core = ov.Core()
    host = isa()
    print(f"{host['cpu']} ({', '.join(host['flags'])}), {THREADS} threads, OpenVINO {ov.__version__}, "
          f"default precision hint {core.get_property('CPU', 'INFERENCE_PRECISION_HINT')}")  # fmt: skip
    prep = {"minilm": prepare_minilm, "vit": prepare_vit}
    for name in a.models.split(","):
        m = prep[name]()
        irs = {
            "mscompile": WORK / name / "repo" / f"bench_{name}" / "1" / "model.xml",
            "optimum_intel": WORK / name / "optimum_intel" / "int8" / "openvino_model.xml",
        }
        missing = [str(p) for p in irs.values() if not p.is_file()]
        if missing:
            sys.exit(
                f"{m['title']}: run bench_peers.py --models {name} --peers optimum_intel first (missing {missing})"
            )
        med: dict[tuple, float] = {}
        for b in (1, 8):  # interleaved round by round, as bench_peers times its runners
            runs = {}
            for who, path in irs.items():
                for setting in SETTINGS:
                    c, f = compiled(core, path, setting, {k: v[:b] for k, v in m["held"].items()})
                    runs[(who, setting, b)] = lambda c=c, f=f: c(f)
            med.update(time_side_by_side(runs, a.rounds, 20 if b == 1 else 5))
        print(f"\n{m['title']} ({a.rounds} interleaved rounds, median ms)")
        print(f"{'setting':<8} {'batch':>5} {'mscompile':>10} {'optimum-intel':>14} {'ratio':>6}")
        for setting in SETTINGS:
            for b in (1, 8):
                ms, oi = med[("mscompile", setting, b)], med[("optimum_intel", setting, b)]
                print(f"{setting:<8} {b:>5} {ms:>10.2f} {oi:>14.2f} {oi / ms:>5.2f}x")


if __name__ == "__main__":
    main()
