"""``report.html`` of a run: summary, a timeline (one row per host, one bar per phase, failures
in red) as inline SVG, the failure summary and the phase table. One file, no external assets."""

from __future__ import annotations

from datetime import datetime
from html import escape

from .runreport import parse_time

# Phase colours: blues, greens, purples, browns; never red (red means failed).
PALETTE = [
    "#4e79a7",
    "#59a14f",
    "#76b7b2",
    "#b07aa1",
    "#9c755f",
    "#edc948",
    "#2f4b7c",
    "#8cd17d",
    "#a0cbe8",
    "#d4a6c8",
    "#499894",
    "#bab0ac",
]
FAILED = "#d62728"
SKIPPED = "#d9d9d9"
STATUS_TEXT = {"done": "done", "failed": "FAILED", "skipped": "skipped", "running": "running"}


def _span(report: dict) -> tuple[datetime | None, float]:
    start = parse_time(report.get("started"))
    end = parse_time(report.get("ended"))
    stamps = [
        parse_time(hp.get(key))
        for phase in report.get("phases", [])
        for hp in phase["hosts"].values()
        for key in ("start", "end")
    ]
    stamps = [s for s in stamps if s]
    if stamps:
        start = min([start, *stamps]) if start else min(stamps)
        end = max([end, *stamps]) if end else max(stamps)
    if start is None or end is None:
        return None, 1.0
    return start, max((end - start).total_seconds(), 1.0)


def _duration(value: float | None) -> str:
    if value is None:
        return ""
    value = round(value)
    return f"{value // 60}m{value % 60:02d}s" if value >= 60 else f"{value}s"


def _tick(value: float) -> str:
    if value == 0:
        return "0s"
    return f"{value:.1f}s" if value < 10 else _duration(value)


def timeline_svg(report: dict) -> str:
    hosts = report.get("hosts") or []
    phases = report.get("phases") or []
    colour = {p["name"]: PALETTE[i % len(PALETTE)] for i, p in enumerate(phases)}
    origin, total = _span(report)
    left, width, row, top = 130, 860, 30, 34
    # legend: the phases' colours and red, wrapped into lines under the rows
    legend, x, line = [], left, 0
    failed = [("failed", FAILED)] if any(hp["status"] == "failed" for p in phases for hp in p["hosts"].values()) else []
    for name, fill in [*((p["name"], colour[p["name"]]) for p in phases), *failed]:
        size = 24 + 7 * len(name)
        if x + size > left + width and x > left:
            x, line = left, line + 1
        legend.append((x, line, name, fill))
        x += size
    rows_end = top + row * max(len(hosts), 1)
    height = rows_end + 18 * (line + 1) + 14
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="timeline" width="{left + width + 20}" height="{height}" '
        f'viewBox="0 0 {left + width + 20} {height}" font-family="sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{left + width + 20}" height="{height}" fill="#ffffff"/>',
    ]
    # time axis: 5 ticks
    for i in range(6):
        x = left + width * i / 5
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{rows_end}" stroke="#e5e5e5"/>')
        out.append(
            f'<text x="{x:.1f}" y="{top - 10}" text-anchor="middle" fill="#555">{escape(_tick(total * i / 5))}</text>'
        )
    for r, host in enumerate(hosts):
        y = top + r * row
        out.append(
            f'<text x="{left - 8}" y="{y + row / 2 + 4:.1f}" text-anchor="end" fill="#222">{escape(host)}</text>'
        )
        for phase in phases:
            hp = phase["hosts"].get(host)
            start, end = parse_time(hp and hp.get("start")), parse_time(hp and hp.get("end"))
            if not hp or origin is None or start is None:
                continue
            end = end or start
            x0 = left + width * (start - origin).total_seconds() / total
            w = max(width * (end - start).total_seconds() / total, 3.0)
            fill = (
                FAILED if hp["status"] == "failed" else SKIPPED if hp["status"] == "skipped" else colour[phase["name"]]
            )
            state = STATUS_TEXT.get(hp["status"], hp["status"])
            tip = f"{host} - {phase['name']}: {state}, {_duration(hp.get('seconds'))}"
            if hp.get("failure"):
                tip += f" - {hp['failure']['task']}"
            out.append(
                f'<rect class="bar {escape(hp["status"])}" x="{x0:.1f}" y="{y + 5}" '
                f'width="{w:.1f}" height="{row - 10}" '
                f'fill="{fill}" stroke="#ffffff" stroke-width="1"><title>{escape(tip)}</title></rect>'
            )
            if w > 7 * len(phase["name"]) + 6:
                text_fill = "#ffffff" if fill != SKIPPED else "#333"
                out.append(
                    f'<text x="{x0 + 4:.1f}" y="{y + row / 2 + 4:.1f}" fill="{text_fill}">'
                    f"{escape(phase['name'])}</text>"
                )
    for x, line, name, fill in legend:
        y = rows_end + 22 + 18 * line
        out.append(f'<rect x="{x}" y="{y - 10}" width="10" height="10" fill="{fill}"/>')
        out.append(f'<text x="{x + 14}" y="{y}" fill="#333">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


CSS = """
body { font-family: sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 20px; margin: 0 0 8px 0; }
h2 { font-size: 16px; margin: 24px 0 8px 0; }
.ok { color: #2e7d32; } .failed { color: #c62828; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.failed { background: #fde0e0; } td.done { background: #e6f4ea; } td.skipped { color: #888; }
pre { white-space: pre-wrap; margin: 0; font-size: 12px; max-width: 900px; max-height: 15em; overflow: auto; }
.meta td { border: none; padding: 1px 12px 1px 0; }
"""


def render_html(report: dict) -> str:
    ok = report.get("exit_code") == 0
    title = f"ascend-fleet {report.get('verb', '')} {report.get('inventory', '')}"
    verdict = "succeeded" if ok else "FAILED" if report.get("exit_code") == 1 else "refused (bad input)"
    meta = [
        (
            "result",
            f'<b class="{"ok" if ok else "failed"}">{escape(verdict)}</b> (exit code {report.get("exit_code")})',
        ),
        ("playbook", escape(str(report.get("playbook", "")))),
        ("inventory", escape(" + ".join(report.get("inventories", [])))),
        ("started", escape(str(report.get("started") or ""))),
        ("duration", escape(_duration(report.get("seconds")))),
    ]
    if report.get("check"):
        meta.append(("mode", "check (--check): nothing changed"))
    if report.get("extra_var_names"):
        meta.append(("extra vars", escape(", ".join(report["extra_var_names"]))))
    if report.get("lab"):
        lab = report["lab"]
        meta.append(
            ("lab", escape(f"labctl up {lab.get('topology')}: exit {lab.get('rc')}, {_duration(lab.get('seconds'))}"))
        )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        '<table class="meta">' + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in meta) + "</table>",
        "<h2>Timeline</h2>",
        timeline_svg(report),
    ]
    failures = report.get("failures") or []
    parts.append("<h2>Failures</h2>")
    if failures:
        rows = "".join(
            f"<tr><td>{escape(f['host'])}</td><td>{escape(f['phase'])}</td><td>{escape(str(f.get('task') or ''))}</td>"
            f"<td><pre>{escape(('UNREACHABLE: ' if f.get('unreachable') else '') + f['message'])}</pre></td></tr>"
            for f in failures
        )
        parts.append(
            f'<table id="failures"><tr><th>host</th><th>phase</th><th>task</th><th>message</th></tr>{rows}</table>'
        )
    elif report.get("ansible_output"):
        parts.append(
            "<p>Ansible stopped before any play:</p><pre>" + escape("\n".join(report["ansible_output"])) + "</pre>"
        )
    else:
        parts.append("<p>none</p>")
    hosts = report.get("hosts") or []
    head = "".join(f"<th>{escape(h)}</th>" for h in hosts)
    rows = []
    for phase in report.get("phases") or []:
        cells = []
        for host in hosts:
            hp = phase["hosts"].get(host)
            if not hp:
                cells.append("<td></td>")
                continue
            text = f"{STATUS_TEXT.get(hp['status'], hp['status'])} {_duration(hp.get('seconds'))}"
            if hp.get("changed"):
                text += f", {hp['changed']} changed"
            cells.append(f'<td class="{escape(hp["status"])}">{escape(text)}</td>')
        rows.append(f"<tr><td>{escape(phase['name'])}</td>{''.join(cells)}</tr>")
    parts.append(f'<h2>Phases</h2><table id="phases"><tr><th>phase</th>{head}</tr>{"".join(rows)}</table>')
    notes = report.get("notes") or []
    if notes:
        parts.append("<h2>Messages</h2><table>")
        parts.extend(
            f"<tr><td>{escape(n['host'])}</td><td>{escape(n['phase'])}</td><td><pre>{escape(n['message'])}</pre></td></tr>"
            for n in notes[-30:]
        )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
