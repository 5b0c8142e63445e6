"""Load the PyTorch checkpoint and record the reference outputs.

Output: a TorchModel folder with the checkpoint itself (copied in, and checked
against the digest the cache key was computed from: a file replaced during the
build is refused, never published under the old digest), module.json (how to
re-create the module, for the export pass) and reference.npz (the module's
outputs on the validation inputs: the ground truth every variant is compared
with). Nothing in it points back at the user's files."""

from __future__ import annotations

import json
import shutil

import numpy as np
from mscompile.accuracy import bucket_key, shape_buckets
from mscompile.artifacts import TorchModel, TorchSource, sha256_file
from mscompile.data import batches
from mscompile.errors import CheckpointError, ShapeError
from mscompile.loading import as_output_list, code_digest, load_module
from mscompile.pipeline import Pass, PassContext, PassResult
from mscompile.sections import IOSpec, Section, SourceConfig


class LoadConfig(Section):
    source: SourceConfig
    io: IOSpec
    batch_size: int = 32
    shapes: str = "report"  # validation.shapes: "generate" records a reference per generated bucket


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
    version = 3
    input_type = TorchSource
    output_type = TorchModel
    Config = LoadConfig
    libraries = ("torch", "numpy", "safetensors")
    extra_inputs = ("validation",)

    def run(self, inp: TorchSource, cfg: LoadConfig, ctx: PassContext) -> PassResult[TorchModel]:
        import torch

        # read the checkpoint once, into this pass's output, and check that copy
        copy = ctx.workdir / f"checkpoint{inp.path.suffix}"
        shutil.copyfile(inp.path, copy)
        got = sha256_file(copy)
        if got != inp.meta["checkpoint_sha256"]:
            raise CheckpointError(
                f"source.checkpoint: {inp.path} changed while the build was running (sha256 "
                f"{inp.meta['checkpoint_sha256'][:12]}... at the start, {got[:12]}... now); nothing was built "
                "from it. Run the build again once the file is complete (write it elsewhere and rename it into place)"
            )
        module = load_module(cfg.source, copy)
        if cfg.source.factory and code_digest(cfg.source.factory) != inp.meta.get("code_sha256"):
            raise CheckpointError(
                f"source.factory: the code of {cfg.source.factory} changed while the build was running; run it again"
            )
        feeds, labels = ctx.data("validation")
        ctx.note(f"reference outputs on {next(iter(feeds.values())).shape[0]} validation samples")
        ref = reference_outputs(module, cfg.io, feeds, cfg.batch_size)
        if cfg.shapes == "generate":
            for bucket, bfeeds in shape_buckets(cfg.io, feeds):
                ctx.note(f"reference outputs at {bucket} (validation.shapes: generate)")
                try:
                    got = reference_outputs(module, cfg.io, bfeeds, cfg.batch_size)
                except ShapeError as exc:
                    raise ShapeError(
                        f"validation.shapes: generate made inputs at {bucket} (the validation samples cropped "
                        f"or tiled to the declared size) and the model rejected them ({exc}); declare the range "
                        "the model takes in inputs[].range, or set validation.shapes: report"
                    ) from None
                ref.update({bucket_key(o, bucket): a for o, a in got.items()})
        for name, a in ref.items():
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                flat = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, -1)
                sample = int(np.argwhere(~np.isfinite(flat))[0][0])
                raise ShapeError(
                    f"outputs: the PyTorch model returns NaN or inf in {name!r} for validation sample {sample}; "
                    "it is the reference every variant is compared with: fix the model or its inputs"
                )
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
                    "checkpoint": copy.name,  # inside this folder
                    "checkpoint_sha256": inp.meta.get("checkpoint_sha256"),
                    "source_digest": inp.digest,  # checkpoint + factory code: the export is keyed by it
                    "module_class": f"{type(module).__module__}.{type(module).__qualname__}",
                },
                indent=2,
            )
        )
        return PassResult(path=ctx.workdir, meta=dict(metrics), metrics=metrics)
