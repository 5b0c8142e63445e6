"""The accuracy judge: compare a variant's outputs with the PyTorch reference and apply
a target's tolerance. One judge for every place that gates: the check passes (on the
step's session), the ensemble's end-to-end gate and the serve-checks (on a real
server's answers)."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from .artifacts import TorchModel
from .data import batches
from .errors import ConfigError
from .sections import IOSpec, Tolerance, is_dynamic


def real_positions(out: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    """Where a token-level output holds answers: the padding mask (validation.padding_mask)
    != 0, broadcast over the output's trailing dims; None when the output is not
    token-level (its leading dims are not the mask's) or there is no mask."""
    if mask is None or out.ndim < mask.ndim or out.shape[: mask.ndim] != mask.shape:
        return None
    keep = np.asarray(mask) != 0
    return np.broadcast_to(keep.reshape(keep.shape + (1,) * (out.ndim - keep.ndim)), out.shape)


def without_padding(out: np.ndarray, ref: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """`out` and `ref` with their padded positions set to 0 in both (they then add
    nothing to a difference, a dot product or a norm); unchanged where `mask` does not
    apply to the output."""
    return _zeroed(out, ref, real_positions(out, mask))


def _zeroed(out: np.ndarray, ref: np.ndarray, keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if keep is None:
        return out, ref
    return np.where(keep, out, 0).astype(out.dtype), np.where(keep, ref, 0).astype(ref.dtype)


def compare(
    out: np.ndarray, ref: np.ndarray, classes: bool = True, mask: np.ndarray | None = None, mask_name: str = ""
) -> dict[str, Any]:
    """Parity metrics of one output against its reference (samples on axis 0).
    Cosine only where a sample has more than one value (on one value it is always
    +-1 and checks nothing); top-1 agreement only for class scores (`classes`).
    `mask`: the padding mask; a token-level output is compared at its real positions
    only, and says so (`positions`) where the mask left any out."""
    keep = real_positions(out, mask)
    out, ref = _zeroed(out, ref, keep)
    a = out.astype(np.float64).reshape(out.shape[0], -1) if out.ndim > 0 else out.astype(np.float64).reshape(1, -1)
    b = ref.astype(np.float64).reshape(a.shape)
    diff = np.abs(a - b)
    scale = float(np.abs(b).max()) if b.size else 1.0
    scale = scale or 1.0
    counted = int(keep.sum()) if keep is not None else diff.size
    m: dict[str, Any] = {
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "mean_abs": float(diff.sum() / counted) if counted else 0.0,
        "max_rel": float(diff.max() / scale) if diff.size else 0.0,
        "nonfinite": int((~np.isfinite(out)).sum()),
    }
    if a.shape[1] > 1:
        cos = cosine_rows(a, b)
        m.update(cosine=float(cos.mean()), cosine_min=float(cos.min()))
    if classes and out.ndim == 2 and out.shape[1] > 1:
        if keep is None:
            got, want = out.argmax(axis=1), ref.argmax(axis=1)
        else:  # the best-scoring real position
            got, want = np.where(keep, out, -np.inf).argmax(axis=1), np.where(keep, ref, -np.inf).argmax(axis=1)
        m["top1_agreement"] = float((got == want).mean())
    if keep is not None and not keep.all():  # said only where some position was left out
        m["positions"] = {"compared": int(keep.sum()), "of": int(keep.size), "mask": mask_name or "padding mask"}
    return m


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity per sample (axis 0) of two arrays of one shape. Two all-zero
    rows are identical (1); one all-zero row against a non-zero one is orthogonal (0):
    a variant that outputs zeros never scores as a perfect one."""
    a = a.astype(np.float64).reshape(a.shape[0], -1)
    b = b.astype(np.float64).reshape(a.shape)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    denom = na * nb
    return np.where(denom > 0, (a * b).sum(axis=1) / np.where(denom > 0, denom, 1.0), np.where(na + nb == 0, 1.0, 0.0))


def per_sample(
    out: np.ndarray, ref: np.ndarray, cap: int = 2000, mask: np.ndarray | None = None
) -> dict[str, list[float]]:
    """Per-sample max |error| and cosine of the first output (for the report's histograms),
    at the real positions of a token-level output."""
    out, ref = without_padding(out[:cap], ref[:cap], None if mask is None else mask[:cap])
    a = out.astype(np.float64).reshape(len(out), -1)
    b = ref.astype(np.float64).reshape(a.shape)
    cos = cosine_rows(a, b)
    return {"max_abs": [float(x) for x in np.abs(a - b).max(axis=1)], "cosine": [float(x) for x in cos]}


def padding_line(padding: dict[str, Any]) -> str:
    """Which outputs the gates compared at real positions only, e.g. 'last_hidden_state
    where attention_mask != 0 (812 of 1,024 values): padded positions carry no answer (...)'."""
    parts = [f"{n} where {p['mask']} != 0 ({p['compared']:,} of {p['of']:,} values)" for n, p in padding.items()]
    return "; ".join(parts) + ": padded positions carry no answer (validation.padding_mask: none compares them too)"


UPPER = ("max_abs", "max_rel", "accuracy_drop")  # gates that hold a maximum
LOWER = ("cosine", "cosine_min", "top1_agreement")  # gates that hold a minimum
WHY_NOT = {
    "accuracy_drop": "it needs integer labels: set validation.labels",
    "cosine": "every output has one value per sample, where cosine is always +-1",
    "cosine_min": "every output has one value per sample, where cosine is always +-1",
    "top1_agreement": "no output holds class scores (a 2-D output, with validation.labels or "
    "tolerance.top1_agreement naming it so)",
}


def apply_gate(per_output: dict[str, dict[str, Any]], tol: Tolerance, task: dict[str, Any] | None = None) -> list[str]:
    """Each failed gate as a line naming the output; empty when the variant passes.
    Each output is judged by tol.for_output (its per_output entry, the shared keys, or
    not at all); `task`: accuracy metrics over the first output (accuracy_drop). A gate
    no output can be checked by is refused (ConfigError): it would pass while checking
    nothing."""
    fails = []
    judged = {n: (m, t) for n, m in per_output.items() if (t := tol.for_output(n)) is not None}
    for name, (m, _) in judged.items():
        if m.get("nonfinite", 0):
            fails.append(f"{name}: {m['nonfinite']} non-finite output values (NaN/inf)")
    for k in UPPER + LOWER:
        if k == "accuracy_drop":
            if tol.accuracy_drop is None:
                continue
            if task is None:
                raise ConfigError(f"tolerance.accuracy_drop: checks nothing for this model ({WHY_NOT[k]}); remove it")
            if task[k] > tol.accuracy_drop:
                fails.append(f"{k} {task[k]:.6g} > {tol.accuracy_drop:g}")
            continue
        if getattr(tol, k) is not None and not any(k in m for m, t in judged.values() if t is tol):
            why = WHY_NOT.get(k) if any(t is tol for _, t in judged.values()) else None
            why = why or "every output it could gate has its own per_output gate, or is not in tolerance.outputs"
            raise ConfigError(f"tolerance.{k}: checks nothing for this model ({why}); remove it")
        for n, (m, t) in judged.items():
            limit = getattr(t, k)
            if limit is None:
                continue
            if k not in m:
                if t is not tol:
                    raise ConfigError(f"tolerance.per_output.{n}.{k}: checks nothing for this output ({WHY_NOT[k]})")
                continue
            bad = m[k] > limit if k in UPPER else m[k] < limit
            if bad:
                fails.append(f"{n}: {k} {m[k]:.6g} {'>' if k in UPPER else '<'} {limit:g}")
    return fails


def evaluate(
    outs: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    labels: np.ndarray | None,
    io: IOSpec,
    tol: Tolerance,
    mask: np.ndarray | None = None,
    mask_name: str = "",
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Per-output metrics, their worst values over all outputs, and the gate's failures.
    `mask`: the padding mask input's values (validation.padding_mask): token-level
    outputs are judged at their real positions only."""
    first = io.outputs[0].name
    # an output whose size depends on the data (a detector's boxes) can come out with
    # another count than the reference's: that is a failed gate, not a comparison
    differ = {n: (outs[n].shape, ref[n].shape) for n in outs if outs[n].shape != ref[n].shape}
    if differ:
        fails = [
            f"{n}: shape {list(a)} differs from the reference's {list(b)} (an output whose size follows the "
            "data: the variant found another number of items)"
            for n, (a, b) in differ.items()
        ]
        return (
            {"shape_mismatch": len(differ)},
            {n: {"shape": list(a), "reference_shape": list(b)} for n, (a, b) in differ.items()},
            fails,
        )
    # class scores: the labelled output, or every 2-D output when the gate asks for top-1
    classes = {
        n: (n == first and labels is not None) or getattr(tol.for_output(n), "top1_agreement", None) is not None
        for n in outs
    }
    per_output = {n: compare(outs[n], ref[n], classes[n], mask, mask_name) for n in outs}
    agg: dict[str, Any] = {}
    for m in per_output.values():
        for k, v in m.items():
            if not isinstance(v, int | float):
                continue
            worse = max if k in ("max_abs", "mean_abs", "max_rel", "nonfinite") else min
            agg[k] = v if k not in agg else worse(agg[k], v)
    task = None
    if labels is not None:
        acc = float((outs[first].argmax(axis=-1) == labels).mean() * 100.0)
        ref_acc = float((ref[first].argmax(axis=-1) == labels).mean() * 100.0)
        task = {"accuracy": acc, "reference_accuracy": ref_acc, "accuracy_drop": max(0.0, ref_acc - acc)}
        agg.update(task)
    return agg, per_output, apply_gate(per_output, tol, task)


def check_batch(io: IOSpec, batch: int) -> int:
    """The validation batch size, within every input's range."""
    maxes = [i.range.max[0] for i in io.inputs if i.range is not None and io.has_batch_axis()]
    return min(batch, *maxes) if maxes else batch


def load_reference(reference: TorchModel) -> dict[str, np.ndarray]:
    with np.load(reference.path / "reference.npz") as z:
        return {k: z[k] for k in z.files}


def run_model(infer: Any, io: IOSpec, feeds: dict[str, np.ndarray], batch: int) -> tuple[dict[str, np.ndarray], float]:
    """The declared outputs of a model over `feeds`, in batches, through the session
    `infer`; and the seconds it took."""
    names = [o.name for o in io.outputs]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    t0 = time.perf_counter()
    for feed in batches(feeds, batch) if io.has_batch_axis() else [feeds]:
        for n, r in zip(names, infer(feed), strict=True):
            parts[n].append(r)
    seconds = time.perf_counter() - t0
    return {n: np.concatenate(v, axis=0) if io.has_batch_axis() else v[0] for n, v in parts.items()}, seconds


def compare_llm(
    ref: dict[str, Any], nll: list[list[float]], greedy: list[list[int]], tol: Any
) -> tuple[dict, list[str]]:
    """A language model's variant against the reference: perplexity from its per-passage
    NLL (sum, count), greedy-token agreement and first divergence per prompt; and the
    gate's failures."""
    ppl = math.exp(sum(n for n, _ in nll) / max(1, sum(c for _, c in nll)))
    increase = (ppl / ref["perplexity"] - 1.0) * 100.0
    exact, firsts = 0, []
    for a, b in zip(ref["greedy"], greedy, strict=True):
        first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        firsts.append(first)
        exact += int(a == b)
    n = max(1, len(firsts))
    metrics = {
        "perplexity": round(ppl, 4),
        "reference_perplexity": round(ref["perplexity"], 4),
        "perplexity_increase": round(increase, 4),
        "token_agreement": round(exact / n, 4),
        "first_divergence": round(sum(firsts) / n, 3),
        "prompts": len(firsts),
    }
    fails = []
    if tol.perplexity_increase is not None and increase > tol.perplexity_increase:
        fails.append(f"perplexity_increase {increase:.3f}% > {tol.perplexity_increase:g}%")
    if tol.token_agreement is not None and exact / n < tol.token_agreement:
        fails.append(f"token_agreement {exact / n:.3f} < {tol.token_agreement:g}")
    if tol.first_divergence is not None and sum(firsts) / n < tol.first_divergence:
        fails.append(f"first_divergence {sum(firsts) / n:.2f} < {tol.first_divergence:g}")
    return metrics, fails


GENERATED_SAMPLES = 32  # samples per generated shape bucket (the first of the validation set)


def _dynamic_dims(
    io: IOSpec, feeds: dict[str, np.ndarray]
) -> list[tuple[str, list[tuple[str, int]], dict[str, int], int]]:
    """The dynamic non-batch dimensions with a declared range, as (label, members
    [(input, axis)], declared {min, opt, max}, the data's size there). Inputs that name
    the same dimension vary together; unnamed (-1) ones vary together when they sit on
    the same axis with the same data size and range (input_ids and attention_mask
    declared [-1, -1] must keep one length)."""
    groups: dict[Any, tuple[str, list[tuple[str, int]], dict[str, int], int]] = {}
    for inp in io.inputs:
        arr = feeds.get(inp.name)
        if inp.range is None or arr is None:
            continue
        for axis, d in enumerate(inp.shape):
            if not is_dynamic(d) or axis >= arr.ndim or (axis == 0 and io.has_batch_axis()):
                continue
            declared = {"min": inp.range.min[axis], "opt": inp.range.opt[axis], "max": inp.range.max[axis]}
            size = int(arr.shape[axis])
            key = d if isinstance(d, str) else (axis, size, tuple(declared.values()))
            if key not in groups:
                groups[key] = (str(io.dim_name(inp, axis)), [], declared, size)
            groups[key][1].append((inp.name, axis))
    return list(groups.values())


def _resize(a: np.ndarray, axis: int, size: int, across_samples: bool) -> np.ndarray:
    """`a` cropped or tiled to `size` along `axis`. Tiling continues each sample with the
    next ones (sample i, i+1, ...: a paragraph of sentences, not one sentence repeated)."""
    cur = a.shape[axis]
    if size > cur:
        reps = -(-size // cur)
        parts = [np.roll(a, -k, axis=0) if across_samples else a for k in range(reps)]
        a = np.concatenate(parts, axis=axis)
    return np.ascontiguousarray(np.take(a, np.arange(size), axis=axis))


def shape_buckets(io: IOSpec, feeds: dict[str, np.ndarray]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """`validation.shapes: generate`: for each declared size (range min/opt/max) of a
    dynamic non-batch dimension that the validation data lacks, the first
    GENERATED_SAMPLES samples cropped or tiled to that size there, named '<dim>=<size>'.
    Deterministic: the reference pass and every gate make the same buckets."""
    out: list[tuple[str, dict[str, np.ndarray]]] = []
    batched = io.has_batch_axis()
    base = {k: v[:GENERATED_SAMPLES] for k, v in feeds.items()} if batched else dict(feeds)
    for label, members, declared, size in _dynamic_dims(io, feeds):
        for want in sorted(set(declared.values()) - {size}):
            bucket = dict(base)
            for name, axis in members:
                bucket[name] = _resize(base[name], axis, want, batched)
            out.append((f"{label}={want}", bucket))
    return out


def bucket_key(output: str, bucket: str) -> str:
    """The name of a generated bucket's reference array in reference.npz."""
    return f"{output}@{bucket}"


def evaluate_buckets(
    buckets: dict[str, dict[str, np.ndarray]],
    ref: dict[str, np.ndarray],
    io: IOSpec,
    tol: Tolerance,
    masks: dict[str, np.ndarray] | None = None,
    mask_name: str = "",
) -> tuple[dict[str, Any], list[str]]:
    """The gate at each generated shape: per bucket its samples, metrics and failures;
    and every failure, prefixed with the bucket. Labels belong to the data as given, so
    accuracy_drop is judged there only. `masks`: each bucket's padding mask."""
    per_bucket: dict[str, Any] = {}
    fails: list[str] = []
    tol_b = tol.model_copy(update={"accuracy_drop": None})
    for name, outs in buckets.items():
        r = {o: ref[bucket_key(o, name)] for o in outs}
        agg, _, f = evaluate(outs, r, None, io, tol_b, (masks or {}).get(name), mask_name)
        per_bucket[name] = {
            "samples": int(next(iter(outs.values())).shape[0]) if io.has_batch_axis() else 1,
            "metrics": agg,
            "failures": f,
            "passed": not f,
        }
        fails.extend(f"at {name}: {line}" for line in f)
    return per_bucket, fails


def shape_coverage(
    io: IOSpec, feeds: dict[str, np.ndarray], batch_size: int, generated: bool = False
) -> list[dict[str, Any]]:
    """Per dynamic dimension of each input with a declared range: the sizes the gate ran
    (the validation arrays' size there, and with `generated` the declared sizes, each gated
    in its own bucket; for the batch dimension, the gate's batches) and
    the declared points (range min/opt/max) no gate figure covers. Only non-batch
    dimensions count as not gated: the batch dimension is reported, not judged."""
    rows: list[dict[str, Any]] = []
    for inp in io.inputs:
        arr = feeds.get(inp.name)
        if inp.range is None or arr is None:
            continue
        for axis, d in enumerate(inp.shape):
            if not is_dynamic(d) or axis >= arr.ndim:
                continue
            batch = axis == 0 and io.has_batch_axis()
            if batch:
                n = int(arr.shape[0])
                gated = sorted(
                    {min(batch_size, n)} | ({n % batch_size} if n > batch_size and n % batch_size else set())
                )
            declared = {"min": inp.range.min[axis], "opt": inp.range.opt[axis], "max": inp.range.max[axis]}
            if not batch:
                # with shapes: generate, every declared size has its own bucket
                gated = sorted({int(arr.shape[axis])} | (set(declared.values()) if generated else set()))
            rows.append(
                {
                    "input": inp.name,
                    "axis": axis,
                    "dim": io.dim_name(inp, axis),
                    "batch": batch,
                    "declared": declared,
                    "gated": gated,
                    "not_gated": {} if batch else {k: v for k, v in declared.items() if v not in gated},
                }
            )
    return rows


def coverage_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per dimension with declared sizes no gate covers (one line per named dim)."""
    out: list[str] = []
    seen: set[str] = set()
    for r in rows:
        if not r["not_gated"] or r["dim"] in seen:
            continue
        seen.add(r["dim"])
        sizes = ", ".join(f"{v} ({k})" for k, v in r["not_gated"].items())
        out.append(
            f"{r['input']}[{r['axis']}] ({r['dim']}): the validation data has size {r['gated'][0]} there, "
            f"so no gate covers the declared {sizes}; add validation data at those sizes"
        )
    return out
