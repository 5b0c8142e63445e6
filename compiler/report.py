"""One self-contained HTML page per build: variants with accuracy and size,
latency-vs-batch plots, parity error distributions, INT8 tries and excluded
layers, pass timings; and what was measured on the server since (serve-check
--perf's capacity curve, tune's trials and Pareto front), from the records those
commands keep under the state folder. Plots are inline SVG; the page loads nothing."""

from __future__ import annotations

import html
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from .accuracy import padding_line
from .errors import ConfigError
from .tritonrepo.writer import MANIFEST, versions, write_atomic

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fraction(t: dict[str, Any]) -> str:
    f = t.get("excluded_fraction")
    return f" ({f * 100:.0f}%)" if f is not None else ""


def _line_chart(
    series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, w: int = 560, h: int = 300
) -> str:
    pts = [p for s in series.values() for p in s]
    if not pts:
        return "<p>No profile data.</p>"
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y1 = max(p[1] for p in pts) * 1.1 or 1.0
    ml, mb, mt, mr = 78, 40, 15, 150

    def sx(x: float) -> float:
        return ml + (0 if x1 == x0 else (x - x0) / (x1 - x0) * (w - ml - mr))

    def sy(y: float) -> float:
        return h - mb - y / y1 * (h - mb - mt)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="{_e(ylabel)} vs {_e(xlabel)}">',
        f'<line x1="{ml}" y1="{h - mb}" x2="{w - mr}" y2="{h - mb}" stroke="#333"/>',
        f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{h - mb}" stroke="#333"/>',
    ]
    for i in range(5):
        y = y1 * i / 4
        out.append(f'<text x="{ml - 6}" y="{sy(y) + 4:.1f}" font-size="11" text-anchor="end">{y:.3g}</text>')
        out.append(f'<line x1="{ml}" y1="{sy(y):.1f}" x2="{w - mr}" y2="{sy(y):.1f}" stroke="#eee"/>')
    for x in sorted({p[0] for p in pts}):
        out.append(f'<text x="{sx(x):.1f}" y="{h - mb + 16}" font-size="11" text-anchor="middle">{x:g}</text>')
    out.append(f'<text x="{(ml + w - mr) / 2}" y="{h - 5}" font-size="12" text-anchor="middle">{_e(xlabel)}</text>')
    out.append(
        f'<text x="14" y="{(h - mb) / 2}" font-size="12" transform="rotate(-90 14 {(h - mb) / 2})" text-anchor="middle">{_e(ylabel)}</text>'
    )
    for i, (name, s) in enumerate(series.items()):
        c = COLORS[i % len(COLORS)]
        s = sorted(s)
        path = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for j, (x, y) in enumerate(s))
        out.append(f'<path d="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        for x, y in s:
            out.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"><title>{_e(name)}: {y:.4g} at {x:g}</title></circle>'
            )
        out.append(f'<text x="{w - mr + 10}" y="{mt + 14 + 16 * i}" font-size="12" fill="{c}">{_e(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _histogram(values: list[float], label: str, log: bool, w: int = 260, h: int = 150, bins: int = 20) -> str:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return ""
    tr = [math.log10(max(v, 1e-12)) for v in vals] if log else vals
    lo, hi = min(tr), max(tr)
    if hi == lo:
        hi = lo + 1e-9
    counts = [0] * bins
    for v in tr:
        counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    top = max(counts)
    bw = (w - 20) / bins
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 30}" role="img" aria-label="{_e(label)}">'
    ]
    for i, c in enumerate(counts):
        bh = c / top * h
        out.append(
            f'<rect x="{10 + i * bw:.1f}" y="{h - bh:.1f}" width="{bw - 1:.1f}" height="{bh:.1f}" fill="#1f77b4"><title>{c} samples</title></rect>'
        )
    fmt = (lambda v: f"1e{v:.1f}") if log else (lambda v: f"{v:.7f}")
    out.append(f'<text x="10" y="{h + 14}" font-size="10">{fmt(lo)}</text>')
    out.append(f'<text x="{w - 10}" y="{h + 14}" font-size="10" text-anchor="end">{fmt(hi)}</text>')
    out.append(f'<text x="{w / 2}" y="{h + 27}" font-size="11" text-anchor="middle">{_e(label)}</text></svg>')
    return "".join(out)


SERVING_KINDS = ("capacity", "tune")


def serving_folder(reports: Path, model: str, version: int) -> Path:
    return reports / model / f"v{version}" / "serving"


def save_serving(reports: Path, model: str, version: int, kind: str, data: dict[str, Any]) -> Path:
    """Keep one server measurement of a published version (kind: capacity or tune)."""
    assert kind in SERVING_KINDS
    d = serving_folder(reports, model, version)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{kind}.json"
    write_atomic(
        path, json.dumps({"kind": kind, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **data}, default=str)
    )
    return path


def load_serving(reports: Path, model: str, version: int) -> dict[str, dict[str, Any]]:
    """The latest record of each kind for this version (none: {})."""
    out: dict[str, dict[str, Any]] = {}
    d = serving_folder(reports, model, version)
    for path in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a record cut short is not shown
        if rec.get("kind") in SERVING_KINDS:
            out[rec["kind"]] = dict(rec, file=str(path))
    return out


def _serving_section(serving: dict[str, dict[str, Any]]) -> str:
    if not serving:
        return (
            "<p>Nothing measured on a server for this version yet: <code>mscompile serve-check --perf</code> "
            "(capacity with perf_analyzer) and <code>mscompile tune</code> (serving-config search) add it here.</p>"
        )
    parts = []
    cap = serving.get("capacity")
    if cap:
        c = cap.get("capacity") or {}
        series, rows = {}, []
        for proto in ("grpc", "http"):
            pts = [p for p in c.get(proto) or [] if p.get("stable")]
            if pts:
                series[f"{proto}"] = sorted((p["throughput"], p["latency_ms"]["p99"]) for p in pts)
            for p in c.get(proto) or []:
                if p.get("stable"):
                    lat, tri = p["latency_ms"], p.get("triton") or {}
                    rows.append(
                        f"<tr><td>{proto}</td><td>{_e(p['mode'])} {p['value']:g}</td><td>{p['throughput']:.1f}</td>"
                        f"<td>{lat['p50']:.3g}</td><td>{lat['p90']:.3g}</td><td>{lat['p99']:.3g}</td>"
                        f"<td>{_e(tri.get('mean_batch', '-'))}</td></tr>"
                    )
                else:
                    rows.append(
                        f"<tr><td>{proto}</td><td>{_e(p['mode'])} {p['value']:g}</td>"
                        f"<td colspan='5'>not measured: {_e(p.get('error', 'unstable'))}</td></tr>"
                    )
        st = c.get("settings") or {}
        parts.append(
            f"<h3>Capacity (perf_analyzer, recorded {_e(cap.get('recorded', ''))})</h3>"
            f"<p style='font-size:12px'>{_e(st.get('requests', ''))}; windows of {_e(st.get('measurement_ms', '-'))} ms, "
            f"stable within {_e(st.get('stability_percent', '-'))}%</p>"
            f"{_line_chart(series, 'throughput (infer/s)', 'p99 latency (ms)')}"
            "<table><tr><th>protocol</th><th>point</th><th>infer/s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th>"
            f"<th>mean batch (Triton)</th></tr>{''.join(rows)}</table>"
        )
    tune = serving.get("tune")
    if tune:
        front = {p["trial"] for p in tune.get("pareto") or []}
        rows = []
        for t in tune.get("trials") or []:
            k = (t["max_batch_size"], t["max_queue_delay_microseconds"], t["instances"])
            pref = ", ".join(str(x) for x in t.get("preferred_batch_size") or []) or "-"
            at = t.get("at") or {}
            rows.append(
                f"<tr><td>{t['trial']}</td><td>{k[0]}</td><td>{k[1]}</td><td>{_e(pref)}</td><td>{k[2]}</td>"
                f"<td>{t['throughput_under_slo']}</td><td>{_e(at.get('p99_ms', '-'))}</td>"
                f"<td>{'yes' if t['trial'] in front else ''}</td></tr>"
            )
        pareto = sorted((p["throughput"], p["p99_ms"]) for p in tune.get("pareto") or [])
        slo = tune.get("objective", {}).get("slo", {}).get("p99_ms")
        best = tune.get("best") or {}
        written = tune.get("written")
        parts.append(
            f"<h3>Serving-config search (tune, recorded {_e(tune.get('recorded', ''))})</h3>"
            f"<p>Objective: the highest throughput with p99 &le; {_e(slo)} ms. Published config: "
            f"{_e(tune.get('published', {}).get('throughput_under_slo'))} infer/s; best: {_e(best.get('candidate', '-'))} "
            f"at {_e(best.get('throughput_under_slo', '-'))} infer/s"
            f"{' (written to ' + _e(written['config']) + ')' if written else ' (not written)'}.</p>"
            f"{_confirmation(tune.get('confirmation'), tune.get('not_written'))}"
            f"{_line_chart({'Pareto front': pareto}, 'throughput (infer/s)', 'p99 latency (ms)') if pareto else ''}"
            "<table><tr><th>trial</th><th>max_batch_size</th><th>queue delay (us)</th><th>preferred</th><th>instances</th>"
            f"<th>infer/s under the SLO</th><th>p99 ms there</th><th>on the Pareto front</th></tr>{''.join(rows)}</table>"
        )
    return "".join(parts)


def _confirmation(c: dict[str, Any] | None, not_written: str | None) -> str:
    """tune's confirmation rounds (the published and the best config measured again)."""
    if not c:
        return f"<p>Not written: {_e(not_written)}.</p>" if not_written else ""
    verdict = "the lead holds" if c["holds"] else f"the lead does not hold (not more than {c['margin']:.0%})"
    return (
        f"<p>Measured again, {_e(c['rounds'])} interleaved round(s): published {_e(c['published'])}, "
        f"best {_e(c['best'])} infer/s under the SLO: {verdict}.</p>"
    )


def render(manifest: dict[str, Any], serving: dict[str, dict[str, Any]] | None = None) -> str:
    cfg = manifest.get("config", {})
    variants = manifest.get("variants", [])
    title = f"mscompile build report: {cfg.get('name', '?')}"
    rows = []
    for v in variants:
        m = v.get("metrics") or {}
        acc = ", ".join(
            f"{k} {m[k]:.6g}"
            for k in (
                "max_abs",
                "cosine",
                "cosine_min",
                "accuracy",
                "accuracy_drop",
                "perplexity",
                "perplexity_increase",
                "token_agreement",
                "first_divergence",
            )
            if k in m
        )
        prof = v.get("profile") or {}
        lat = ", ".join(
            f"b{r['batch']}: {r['p50_ms']:.3g} ms"
            if "p50_ms" in r
            else f"b{r['batch']}: {r['tokens_per_s']:.0f} tokens/s"
            for r in sorted(prof.get("batches", []), key=lambda r: r["batch"])
        )
        size = f"{v['size_bytes'] / 1024:.1f} KB" if v.get("size_bytes") else "-"
        deployed = " (deployed)" if v["name"] == manifest.get("deployed_variant") else ""
        gated = " and ".join(v.get("gated_on") or []) or "not gated"
        rows.append(
            f"<tr><td>{_e(v['name'])}{deployed}</td><td>{_e(v['backend'])}</td><td>{_e(v['precision'])}</td>"
            f"<td>{_e(v['status'])}</td><td>{_e(v.get('served_by') or '-')}</td><td>{_e(gated)}</td>"
            f"<td>{size}</td><td>{_e(acc)}</td><td>{_e(lat or '-')}</td>"
            f"<td>{_e(v.get('reason') or v.get('note') or '')}</td></tr>"
        )
    lat_series = {
        v["name"]: [(r["batch"], r["p50_ms"]) for r in (v.get("profile") or {}).get("batches", []) if "p50_ms" in r]
        for v in variants
    }
    thr_series = {
        v["name"]: [
            (r["batch"], r.get("throughput", r.get("tokens_per_s", 0.0)))
            for r in (v.get("profile") or {}).get("batches", [])
        ]
        for v in variants
    }
    lat_series = {k: s for k, s in lat_series.items() if s}
    thr_series = {k: s for k, s in thr_series.items() if s}
    dists = []
    for v in variants:
        d = v.get("distribution")
        if d:
            dists.append(
                f"<div class='dist'><h4>{_e(v['name'])}</h4>{_histogram(d['max_abs'], 'max |error| per sample (log10)', True)}"
                f"{_histogram(d['cosine'], 'cosine per sample', False)}</div>"
            )
    tries = []
    for v in variants:
        for t in v.get("tries") or []:
            tm = t.get("metrics", {})
            tries.append(
                f"<tr><td>{_e(v['name'])}</td><td>{t['try']}</td>"
                f"<td>{_e(t['mode'] + (', preset ' + t['preset'] if t.get('preset') else ''))}</td>"
                f"<td>{len(t['excluded_nodes'])}{_fraction(t)}</td>"
                f"<td>{tm.get('cosine', float('nan')):.4f}</td><td>{'pass' if t['passed'] else 'fail'}</td>"
                f"<td><details><summary>nodes</summary>{'<br>'.join(_e(n) for n in t['excluded_nodes']) or '-'}</details></td></tr>"
            )
    passes = [
        f"<tr><td>{_e(p['step'])}</td><td>{_e(p['status'])}</td><td>{'yes' if p['cached'] else 'no'}</td>"
        f"<td>{p['seconds']:.3f}</td></tr>"
        for p in manifest.get("passes", [])
    ]
    libs = ", ".join(f"{k} {v}" for k, v in (manifest.get("libraries") or {}).items())
    shapes = [
        f"<tr><td>{_e(r['input'])}[{r['axis']}]</td><td>{_e(r['dim'])}</td>"
        f"<td>{_e(', '.join(f'{k} {v}' for k, v in r['declared'].items()))}</td>"
        f"<td>{_e(', '.join(str(g) for g in r['gated']))}</td>"
        f"<td>{'batch: not judged' if r['batch'] else _e(', '.join(f'{v} ({k})' for k, v in r['not_gated'].items()) or 'none')}</td></tr>"
        for r in manifest.get("shape_coverage") or []
    ]
    padded = next((v["padding"] for v in variants if v.get("padding")), {})
    bucket_rows = [
        f"<tr><td>{_e(v['name'])}</td><td>{_e(name)}</td><td>{b['samples']}</td>"
        f"<td>{_e(' '.join(f'{k}={x:.6g}' for k, x in b['metrics'].items() if isinstance(x, float)))}</td>"
        f"<td>{'pass' if b['passed'] else _e('fail: ' + '; '.join(b['failures']))}</td></tr>"
        for v in variants
        for name, b in (v.get("buckets") or {}).items()
    ]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left;vertical-align:top}} th{{background:#f3f3f3}}
.plots,.dists{{display:flex;flex-wrap:wrap;gap:2em}} .dist{{border:1px solid #eee;padding:.5em}} h4{{margin:.2em 0}}
</style></head><body>
<h1>{_e(title)}</h1>
<p>Triton model <b>{_e(manifest.get("model", cfg.get("name")))}</b> version <b>{_e(manifest.get("version", "-"))}</b>,
deployed variant <b>{_e(manifest.get("deployed_variant", "-"))}</b>; built {_e(manifest.get("created", ""))}
with mscompile {_e(manifest.get("mscompile", ""))}.</p>
<p style="font-size:12px;color:#555">{_e(libs)}</p>
<h2>Variants</h2>
<table><tr><th>variant</th><th>backend</th><th>precision</th><th>status</th><th>served by</th><th>gated on</th><th>size</th><th>parity vs PyTorch</th><th>p50 latency</th><th>notes</th></tr>
{"".join(rows)}</table>
<h2>Shapes the gates covered</h2>
{("<table><tr><th>input dim</th><th>name</th><th>declared</th><th>gated at</th><th>never gated</th></tr>" + "".join(shapes) + "</table>") if shapes else "<p>No dynamic dimensions with a declared range (or not recorded for this task).</p>"}
{("<p>" + _e("The gates compared " + padding_line(padded)) + "</p>") if padded else ""}
{("<h3>Gates per generated shape (validation.shapes: generate)</h3><table><tr><th>variant</th><th>bucket</th><th>samples</th><th>parity vs PyTorch</th><th>gate</th></tr>" + "".join(bucket_rows) + "</table>") if bucket_rows else ""}
<h2>Latency and throughput vs batch size</h2>
<div class="plots">{_line_chart(lat_series, "batch size", "p50 latency (ms)")}{_line_chart(thr_series, "batch size", "throughput (samples/s; LLMs: tokens/s)")}</div>
<h2>Parity error distributions (first output, validation set)</h2>
<div class="dists">{"".join(dists) or "<p>No parity data.</p>"}</div>
<h2>INT8 tries and layers kept in float</h2>
{("<table><tr><th>variant</th><th>try</th><th>mode</th><th>excluded</th><th>cosine</th><th>gate</th><th>excluded nodes</th></tr>" + "".join(tries) + "</table>") if tries else "<p>No INT8 search in this build.</p>"}
<h2>Measured on the server</h2>
{_serving_section(serving or {})}
<h2>Pass timings</h2>
<table><tr><th>step</th><th>status</th><th>cached</th><th>seconds</th></tr>{"".join(passes)}</table>
</body></html>
"""


def write_report(manifest: dict[str, Any], out: Path, serving: dict[str, dict[str, Any]] | None = None) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    # concurrent builds that reuse one version write the same report name: each stages
    # its own temporary file
    write_atomic(out, render(manifest, serving))
    return out


def latest_manifest(repo: Path, name: str, version: int | None = None) -> tuple[dict[str, Any], Path]:
    d = repo / name
    vs = versions(d)
    if not vs:
        siblings = sorted(p.name for p in repo.glob(f"{name}_*") if versions(p)) if repo.is_dir() else []
        hint = (
            f"; with triton.deploy: all each variant is its own model: pass --model with one of {siblings}"
            if siblings
            else "; run `mscompile build` first"
        )
        raise ConfigError(f"{d}: no published version{hint}")
    v = version or vs[-1]
    path = d / str(v) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{d}: version {v} not found (versions: {vs})")
    return json.loads(path.read_text()), path
