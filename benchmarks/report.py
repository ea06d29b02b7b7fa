"""What a run leaves behind: the printed table, latest.json, latest.svg and a history line.

The chart is hand-written SVG (no plotting library to install): one bar per subject for
throughput, and p50 inside p99 for latency, grouped by scenario.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from .bench import Check, Row, Settings
from .procs import ROOT


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "load_avg_at_start": list(os.getloadavg()),
            "tools": {t: _version(t) for t in ("wrk", "h2load", "memcached", "nginx", "haproxy")}}


def _version(tool: str) -> str:
    if shutil.which(tool) is None:
        return "missing"
    flag = {"wrk": "-v", "h2load": "--version", "memcached": "-V", "nginx": "-v", "haproxy": "-v"}[tool]
    try:
        p = subprocess.run([tool, flag], capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (p.stdout or p.stderr).decode(errors="replace").strip()
    return text.splitlines()[0][:80] if text else "unknown"


def git_commit() -> str | None:
    try:
        p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, cwd=ROOT, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.decode().strip() or None


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def table(rows: Sequence[Row]) -> str:
    head = ("scenario", "subject", "req/s", "p50 ms", "p99 ms", "baseline", "ratio", "note")
    body = []
    for r in rows:
        m = r.measure
        body.append((r.scenario, r.subject, _fmt(m.rps if m else None, ",.0f"), _fmt(m.p50_ms if m else None, ".2f"),
                     _fmt(m.p99_ms if m else None, ".2f"), r.baseline or "", _fmt(r.ratio, ".2f"), r.note))
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    numeric = {2, 3, 4, 6}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body)])


def markdown_table(rows: Sequence[Row]) -> str:
    out = ["| scenario | subject | req/s | p50 ms | p99 ms | baseline | ratio | note |",
           "|---|---|--:|--:|--:|---|--:|---|"]
    for r in rows:
        m = r.measure
        out.append(f"| {r.scenario} | {r.subject} | {_fmt(m.rps if m else None, ',.0f')} | "
                   f"{_fmt(m.p50_ms if m else None, '.2f')} | {_fmt(m.p99_ms if m else None, '.2f')} | "
                   f"{r.baseline or ''} | {_fmt(r.ratio, '.2f')} | {r.note} |")
    return "\n".join(out)


def checks_text(checks: Sequence[Check]) -> str:
    return "\n".join(f"{'PASS' if c.passed else 'MISS'}  {c.target}: {c.value:.3f} {c.unit}".rstrip()
                     for c in checks)


def document(settings: Settings, rows: Sequence[Row], checks: Sequence[Check], errors: Sequence[str],
             started: datetime, only: Sequence[str], host: dict[str, Any]) -> dict[str, Any]:
    """`host` is `machine()` as it was at the start: the load average then says whether other
    work shared the CPUs; the one at the end is added here."""
    return {
        "when": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
        "commit": git_commit(),
        "machine": {**host, "load_avg_at_end": list(os.getloadavg())},
        "settings": {"duration_s": settings.duration, "repeat": settings.repeat, "warmup_s": settings.warmup,
                     "rate": settings.rate, "scenarios": list(only)},
        "rows": [r.as_dict() for r in rows],
        "checks": [c.as_dict() for c in checks],
        "errors": list(errors),
    }


def history_line(doc: dict[str, Any]) -> str:
    short = {
        "when": doc["when"], "commit": doc["commit"], "settings": doc["settings"],
        "rows": [{k: r[k] for k in ("scenario", "subject", "ratio")}
                 | ({"rps": r["measure"]["rps"], "p50_ms": round(r["measure"]["p50_ms"], 3),
                     "p99_ms": round(r["measure"]["p99_ms"], 3)} if r["measure"] else {})
                 | r["extra"] for r in doc["rows"]],
        "checks": {c["target"]: c["passed"] for c in doc["checks"]},
        "errors": doc["errors"],
    }
    return json.dumps(short, ensure_ascii=False)


def write(out: Path, doc: dict[str, Any], rows: Sequence[Row]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    latest, svg, history = out / "latest.json", out / "latest.svg", out / "history.jsonl"
    md = out / "latest.md"
    latest.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    checks = "\n".join(f"- {'PASS' if c['passed'] else 'MISS'} {c['target']}: {c['value']:.3f} {c['unit']}".rstrip()
                       for c in doc["checks"])
    load_avg = f"{doc['machine']['load_avg_at_start'][0]:.2f} → {doc['machine']['load_avg_at_end'][0]:.2f}"
    md.write_text(f"Run of {doc['when']} (commit {doc['commit'] or '?'}), {doc['machine']['cpus']} CPUs "
                  f"({doc['machine']['cpu_model']}), load average {load_avg}, settings {doc['settings']}.\n\n"
                  f"{markdown_table(rows)}\n\n{checks}\n")
    svg.write_text(chart(rows, f"adaptercar benchmarks, {doc['when']} (commit {doc['commit'] or '?'})"))
    with history.open("a") as f:
        f.write(history_line(doc) + "\n")
    return [latest, svg, md, history]


# -- the chart ------------------------------------------------------------------------------------
_LABEL_W, _BAR_W, _GAP, _ROW_H = 360, 300, 60, 22


def _scales(rows: Sequence[Row]) -> dict[str, tuple[float, float]]:
    """Per scenario, the largest throughput and p99 to draw at full width. A direct client far
    faster than the rest is left out of the throughput scale (its bar is cut and marked), so
    that the bars compared with each other, sidecar and floor, stay readable."""
    out: dict[str, tuple[float, float]] = {}
    for sc in dict.fromkeys(r.scenario for r in rows):
        group = [r.measure for r in rows if r.scenario == sc and r.measure is not None]
        compared = [r.measure for r in rows if r.scenario == sc and r.measure is not None
                    and not r.subject.startswith("direct:")] or group
        top, top_compared = max(m.rps for m in group), max(m.rps for m in compared)
        rps_scale = top if top <= 1.5 * top_compared else top_compared
        out[sc] = (rps_scale or 1.0, max(m.p99_ms for m in group) or 1.0)
    return out


def chart(rows: Sequence[Row], title: str) -> str:
    loaded = [r for r in rows if r.measure is not None]
    scales = _scales(loaded)
    x_rps = _LABEL_W
    x_lat = _LABEL_W + _BAR_W + _GAP
    width = x_lat + _BAR_W + 130
    parts: list[str] = []
    y = 56
    scenario = None
    for r in loaded:
        assert r.measure is not None
        if r.scenario != scenario:
            scenario = r.scenario
            y += 8
            parts.append(f'<text x="8" y="{y + 12}" class="s">{escape(scenario)}</text>')
            y += _ROW_H
        m = r.measure
        max_rps, max_ms = scales[r.scenario]
        w_rps = min(_BAR_W, _BAR_W * m.rps / max_rps)
        w50, w99 = _BAR_W * m.p50_ms / max_ms, _BAR_W * m.p99_ms / max_ms
        if m.rps > max_rps:  # off the scale: the bar is cut, its value written inside it
            value = (f'<text x="{x_rps + _BAR_W - 4}" y="{y + 14}" text-anchor="end" fill="white">'
                     f'{m.rps:,.0f} (bar cut) »</text>')
        else:
            value = f'<text x="{x_rps + w_rps + 4:.1f}" y="{y + 14}" class="v">{m.rps:,.0f}</text>'
        parts += [
            f'<text x="20" y="{y + 14}">{escape(r.subject)}</text>',
            f'<rect x="{x_rps}" y="{y + 3}" width="{w_rps:.1f}" height="14" class="t"/>',
            value,
            f'<rect x="{x_lat}" y="{y + 3}" width="{w99:.1f}" height="14" class="p99"/>',
            f'<rect x="{x_lat}" y="{y + 3}" width="{w50:.1f}" height="14" class="p50"/>',
            f'<text x="{x_lat + w99 + 4:.1f}" y="{y + 14}" class="v">{m.p50_ms:.2f} / {m.p99_ms:.2f} ms</text>',
        ]
        y += _ROW_H
    memory = [r for r in rows if r.measure is None and r.note]
    if memory:
        y += 8
        parts.append(f'<text x="8" y="{y + 12}" class="s">{escape(memory[0].scenario)}</text>')
        y += _ROW_H
        for r in memory:
            parts.append(f'<text x="20" y="{y + 14}">{escape(r.subject)}: {escape(r.note)}</text>')
            y += _ROW_H
    height = y + 16
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        "<style>.s{font-weight:bold}.v{fill:#333}.t{fill:#4a78b5}.p50{fill:#d9822b}.p99{fill:#f2c28f}"
        ".h{font-weight:bold;font-size:14px}</style>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="8" y="20" class="h">{escape(title)}</text>',
        f'<text x="{x_rps}" y="44" class="s">throughput, req/s (scale per scenario)</text>',
        f'<text x="{x_lat}" y="44" class="s">latency ms: p50 (dark) inside p99 (light)</text>',
    ]
    return "\n".join([*head, *parts, "</svg>"]) + "\n"
