import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import make_driver, tiny_steps


def _export(tmp, cfg, force=False):
    _, plan = tiny_steps(cfg)
    d = make_driver(tmp / "state", force=force, plan=plan)
    d.run_step(plan.common.steps[0], plan.source)
    return d.run_step(plan.common.steps[1], d.outputs["load_checkpoint"])


def _torch_model(tmp, cls="Tiny"):
    import tinymodels

    m = getattr(tinymodels, cls)()
    m.load_state_dict(torch.load(tmp / "tiny.pt"))
    return m.eval()


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_matches_torch_at_every_batch_size(tiny_project, exporter):
    tmp, cfg = tiny_project
    cfg["export"]["exporter"] = exporter
    rec = _export(tmp, cfg)
    assert rec.metrics["exporter"] == exporter
    assert rec.output.meta["io"]["inputs"] == [{"name": "x", "dtype": "float32", "dims": ["batch", 4]}]
    assert rec.output.meta["io"]["outputs"][0]["name"] == "y_hat"
    sess = ort.InferenceSession(str(rec.output.onnx_file), providers=["CPUExecutionProvider"])
    m = _torch_model(tmp)
    for n in (1, 3, 16):
        x = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
        (got,) = sess.run(None, {"x": x})
        np.testing.assert_allclose(got, m(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_auto_falls_back_and_records_why(tiny_project):
    tmp, cfg = tiny_project
    import tinymodels

    torch.save(tinymodels.Branchy().state_dict(), tmp / "branchy.pt")
    cfg["source"].update(checkpoint="branchy.pt", factory="tinymodels:Branchy")
    cfg["export"]["exporter"] = "auto"
    rec = _export(tmp, cfg)
    assert rec.metrics["exporter"] == "torchscript"
    assert [a["exporter"] for a in rec.metrics["attempts"]] == ["dynamo", "torchscript"]
    assert rec.metrics["attempts"][0]["ok"] is False and rec.metrics["fallback_reason"]
    assert (rec.output.path / "model.onnx").is_file()
    # the reason is torch.export's cause and the user's line, not a colour-coded "step 1/3" banner
    why = rec.metrics["fallback_reason"]
    assert "\x1b" not in why and "step 1/3" not in why, why
    assert "data-dependent" in why and "tinymodels" in why and "in forward" in why, why


def test_cached_export_is_not_rerun(tiny_project):
    tmp, cfg = tiny_project
    first = _export(tmp, cfg)
    again = _export(tmp, cfg)
    assert again.cached and again.output.digest == first.output.digest
    cfg["export"]["opset"] = 17
    assert not _export(tmp, cfg).cached
