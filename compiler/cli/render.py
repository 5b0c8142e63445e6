"""What the commands print: the build summary table, the plan, MLflow and farm lines,
the runs list. Only click.echo; no logic beyond formatting."""

from __future__ import annotations

from typing import Any

import click

from ..accuracy import padding_line
from ..backends import get
from ..builder import passes_ran
from ..handoff import summary_lines


def fmt_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def fmt_parity(metrics: dict[str, Any]) -> str:
    parts = []
    if "max_abs" in metrics:
        parts.append(f"max_abs={metrics['max_abs']:.2e}")
    if "cosine_min" in metrics:
        parts.append(f"cos_min={metrics['cosine_min']:.6f}")
    if "cosine" in metrics and "accuracy" not in metrics:
        parts.append(f"cos_mean={metrics['cosine']:.4f}")
    if "accuracy" in metrics:
        parts.append(f"acc={metrics['accuracy']:.2f}% (ref {metrics['reference_accuracy']:.2f}%)")
    if "perplexity" in metrics:  # an LLM variant
        parts.append(f"ppl={metrics['perplexity']:.3f} ({metrics['perplexity_increase']:+.2f}%)")
        parts.append(f"greedy={metrics['token_agreement']:.2f} first_div={metrics['first_divergence']:.1f}")
    return " ".join(parts) or "-"


def fmt_speed(v: Any) -> str:
    """The variant's profile per batch, in the figure its backend measures (p50 ms, tok/s)."""
    if not v.profile:
        return "-"
    speed = get(v.backend).speed
    return " ".join(f"b{r['batch']}:{speed.fmt(r)}" for r in sorted(v.profile["batches"], key=lambda r: r["batch"]))


def print_summary(result: Any) -> None:
    rows = [("variant", "backend", "precision", "size", "gated on", "parity vs PyTorch", "speed", "status", "cached")]
    for v in result.variants:
        j = v.to_json()
        rows.append(
            (
                j["name"],
                j["backend"],
                j["precision"],
                fmt_size(j["size_bytes"]),
                "+".join(v.gated_on) or "-",
                fmt_parity(j["metrics"]),
                fmt_speed(v),
                j["status"],
                "yes" if j["cached"] else "no",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for v in result.variants:
        buckets = v.report.meta.get("buckets") if v.report else None
        if buckets:
            click.echo(
                f"{v.target} by shape: "
                + "; ".join(
                    f"{name} {fmt_parity(b['metrics'])}{'' if b['passed'] else ' FAIL'}" for name, b in buckets.items()
                )
            )
    padded = next((v.report.meta["padding"] for v in result.variants if v.report and v.report.meta.get("padding")), {})
    if padded:
        click.echo("gates compare " + padding_line(padded))
    for v in result.variants:
        if v.status != "OK" and v.reason:
            click.echo(f"{v.target}: {v.status}: {v.reason}")
        elif v.note:
            click.echo(f"{v.target}: {v.note}")
    ran, cached = passes_ran(result.records)
    click.echo(f"passes: {ran} ran, {cached} from cache" + ("  (no pass ran)" if ran == 0 else ""))
    for p in result.published:
        state = "unchanged, latest version kept" if p.reused else "new version"
        click.echo(f"published {p.model} version {p.version} ({state}): {p.path}")
        if p.pruned:
            click.echo(f"retention: removed {p.model} version(s) {', '.join(map(str, p.pruned))}")
    if result.report_path:
        click.echo(f"report: {result.report_path}")
    click.echo(f"done in {result.seconds:.1f}s")


def mlflow_line(tracked: dict[str, Any]) -> str:
    how = f"run {tracked['run_id']}" if tracked["run_id"] else "recorded in the background"
    return f"mlflow: {how}, experiment {tracked['experiment']!r} ({tracked['tracking_uri']})"


def print_outcome(outcome: Any) -> None:
    """One model of several: its summary, where MLflow has it, or its error."""
    if outcome.result is not None:
        print_summary(outcome.result)
    if outcome.tracked is not None:
        click.echo(mlflow_line(outcome.tracked))
    if outcome.error is not None:
        click.echo(f"error: {outcome.cfg.name}: {outcome.error}", err=True)


def farm_line(report: Any) -> str:
    c = report.counts()
    return (
        f"farm: {c['tasks']} task(s) in {report.seconds:.1f}s: {c['done']} done ({c['cached']} all from "
        f"cache), {c['skipped']} skipped, {c['failed']} failed, {c['retried']} retried after a lost worker"
    )


def print_check(summary: dict[str, Any]) -> None:
    for line in summary_lines(summary):
        click.echo(line)


def print_plan(result: dict[str, Any]) -> None:
    rows = result["steps"]
    width = max(len(r["step"]) for r in rows) + 2
    for r in rows:
        key = r["key"][:16] if r["key"] else "- (key follows from an earlier step)"
        click.echo(f"{r['step']:<{width}} {r['action']:<7} {key}")
    n = sum(r["action"] == "run" for r in rows)
    skip = sum(r["action"] == "skip" for r in rows)
    click.echo(
        f"{n} pass(es) would run, {len(rows) - n - skip} from cache" + (f", {skip} skipped here" if skip else "")
    )
    for name, t in result["targets"].items():
        click.echo(
            f"\n== target {name} ({t['backend']}, {t['precision']}; served by {t['served_by']}); I/O from {t['io_from']}"
        )
        if not t["available"]:
            click.echo(f"SKIPPED here: {t['reason']}")
        if t["if_needed"]:
            click.echo(
                f"if a try misses its gate, up to {len(t['if_needed'])} more step(s): {', '.join(t['if_needed'])}"
            )
        for line in t["lines"]:
            click.echo(line)
        for model, text in t["models"].items():
            click.echo(f"config.pbtxt of {model}:")
            click.echo("  " + text.rstrip().replace("\n", "\n  "))


def print_runs(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        head = " ".join(f"{k}={v:.4g}" for k, v in sorted(r["headline"].items()))
        click.echo(
            f"{r['start']}  {r['run_id'][:12]}  {r['status']:<8}  version {r['version'] or '-':<4} "
            f"git {r['git_commit'] or '-':<10}  ran {r['passes_run']:.0f} cached {r['passes_cached']:.0f}  {head}"
        )


def print_doctor(table: list[tuple[str, str, str]]) -> None:
    width = max(len(r[0]) for r in table) + 2
    for name, status, detail in table:
        click.echo(f"{name:<{width}} {status:<8} {detail}")
