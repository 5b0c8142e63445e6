"""Load the PyTorch checkpoint and record the reference outputs.

Output: a TorchModel folder with module.json (how to re-create the module, for
the export pass) and reference.npz (the module's outputs on the validation
inputs: the ground truth every variant is compared with)."""

from __future__ import annotations

import json

import numpy as np
from mscompile.artifacts import TorchModel, TorchSource
from mscompile.config import IOSpec, Section, SourceConfig, ValidationConfig
from mscompile.data import batches, load_validation
from mscompile.errors import ShapeError
from mscompile.loading import as_output_list, load_module
from mscompile.pipeline import Pass, PassContext, PassResult


class LoadConfig(Section):
    source: SourceConfig
    io: IOSpec
    validation: ValidationConfig


def reference_outputs(module, io: IOSpec, feeds: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Run the module in eval mode over `feeds` in batches; one array per declared output."""
    import torch

    outs: dict[str, list[np.ndarray]] = {o.name: [] for o in io.outputs}
    with torch.inference_mode():
        for feed in batches(feeds, batch_size):
            args = [torch.from_numpy(np.ascontiguousarray(feed[i.name])) for i in io.inputs]
            try:
                result = module(*args)
            except Exception as exc:
                shapes = ", ".join(f"{i.name}{tuple(feed[i.name].shape)}" for i in io.inputs)
                raise ShapeError(
                    f"inputs: the model rejected inputs of the declared shapes [{shapes}]: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                    "fix inputs[].shape/dtype (or the validation data) to what the model's forward() takes"
                ) from None
            for o, t in zip(io.outputs, as_output_list(result, len(io.outputs), "outputs"), strict=True):
                outs[o.name].append(t.detach().float().numpy() if t.is_floating_point() else t.numpy())
    return {k: np.concatenate(v, axis=0) if io.has_batch_axis() else v[0] for k, v in outs.items()}


class LoadCheckpoint(Pass[TorchSource, TorchModel]):
    name = "load_checkpoint"
    version = 1
    input_type = TorchSource
    output_type = TorchModel
    Config = LoadConfig
    libraries = ("torch", "numpy", "safetensors")
    extra_inputs = ("validation",)  # keys the result by the data's digest; read through cfg.validation

    def run(self, inp: TorchSource, cfg: LoadConfig, ctx: PassContext) -> PassResult[TorchModel]:
        import torch

        module = load_module(cfg.source, inp.path)
        feeds, labels = load_validation(cfg.io, cfg.validation)
        ctx.note(f"reference outputs on {next(iter(feeds.values())).shape[0]} validation samples")
        ref = reference_outputs(module, cfg.io, feeds, cfg.validation.batch_size)
        np.savez(ctx.workdir / "reference.npz", **ref)
        metrics: dict = {
            "parameters": int(sum(p.numel() for p in module.parameters()))
            if isinstance(module, torch.nn.Module)
            else None,
            "samples": int(next(iter(feeds.values())).shape[0]),
        }
        if labels is not None:
            first = ref[cfg.io.outputs[0].name]
            metrics["accuracy"] = float((first.argmax(axis=-1) == labels).mean() * 100.0)
        (ctx.workdir / "module.json").write_text(
            json.dumps(
                {
                    "source": cfg.source.model_dump(mode="json"),
                    "checkpoint": str(inp.path),
                    "checkpoint_sha256": inp.meta.get("checkpoint_sha256"),
                    "module_class": f"{type(module).__module__}.{type(module).__qualname__}",
                },
                indent=2,
            )
        )
        return PassResult(output=TorchModel(path=ctx.workdir, digest="", meta=dict(metrics)), metrics=metrics)
