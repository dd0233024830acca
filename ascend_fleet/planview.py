"""The plan for people: a Markdown table and an SVG picture of the layout."""

from __future__ import annotations

from html import escape
from typing import Any


def _span(values: list[int]) -> str:
    if not values:
        return "-"
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def plan_rows(plan: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for host, h in plan["hosts"].items():
        ranks = [r["dp_rank"] for r in h["ranks"]]
        rows.append(
            {
                "host": host,
                "address": h["node_ip"],
                "role": h["role"] + (" + proxy" if h.get("is_proxy") else ""),
                "instance": h["instance"],
                "ranks": f"{_span(ranks)} of {h['dp_size']} (TP{h['tp_size']})",
                "devices": " ".join(r["devices"] for r in h["ranks"]),
                "api_ports": _span(h["api_ports"]),
                "kv_ports": _span(h["kv_ports"]),
                "engine_id": "-" if h["engine_id"] is None else str(h["engine_id"]),
                "dp_master": (
                    "-"
                    if h["role"] == "single"
                    else f"{h['dp_address']}:{h['dp_rpc_port']}" + (" (this)" if h["is_dp_master"] else "")
                ),
            }
        )
    return rows


def plan_table(plan: dict[str, Any]) -> str:
    """Markdown: one line per host, then the instances, the entry point and the warnings."""
    cols = [
        ("host", "host"),
        ("address", "address"),
        ("role", "role"),
        ("instance", "instance"),
        ("ranks", "DP ranks"),
        ("devices", "devices per rank"),
        ("api_ports", "API ports"),
        ("kv_ports", "kv ports"),
        ("engine_id", "engine_id"),
        ("dp_master", "DP master"),
    ]
    lines = [
        f"# Plan: {plan.get('topology') or 'inventory'} ({plan.get('recipe')})",
        "",
        "| " + " | ".join(title for _, title in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for row in plan_rows(plan):
        lines.append("| " + " | ".join(row[key] for key, _ in cols) + " |")
    lines += ["", "## Instances", ""]
    for inst in plan["instances"]:
        kv = (
            f", engine_id {inst['engine_id']}, kv ports {inst['kv_port_range'][0]}-{inst['kv_port_range'][1]}"
            if "engine_id" in inst
            else ""
        )
        lines.append(
            f"- **{inst['name']}** ({inst['role']}): DP{inst['dp_size']} x TP{inst['tp_size']} on "
            f"{', '.join(inst['nodes'])}; DP master {inst['dp_address']}:{inst['dp_rpc_port']}{kv}"
        )
    entry = plan.get("entrypoint")
    if entry:
        lines += ["", f"Entry point: http://{entry['address']}:{entry['port']}/v1/chat/completions on {entry['host']}"]
    proxy = plan.get("proxy")
    if proxy:
        lines.append(
            f"Proxy on {proxy['host']}: {len(proxy['prefill'])} prefiller and {len(proxy['decode'])} decoder entries."
        )
    if plan.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in plan["warnings"]]
    return "\n".join(lines) + "\n"


COLORS = {"prefill": "#dbeafe", "decode": "#dcfce7", "single": "#fef9c3", "proxy": "#fde68a"}


def plan_svg(plan: dict[str, Any]) -> str:
    """An SVG of the layout: proxy on top, P instances left, D instances right, nodes inside."""
    node_w, node_h, gap, pad = 280, 64, 14, 16
    columns: dict[str, list[dict[str, Any]]] = {"prefill": [], "decode": [], "single": []}
    for inst in plan["instances"]:
        columns[inst["role"]].append(inst)
    cols = [c for c in ("prefill", "decode", "single") if columns[c]]
    col_w = node_w + 2 * pad
    top = 110 if plan.get("proxy") else 50
    heights = []
    for c in cols:
        heights.append(sum(len(i["nodes"]) * (node_h + gap) + 60 + gap for i in columns[c]))
    width = max(len(cols) * (col_w + 60) + 40, 420)
    height = top + max(heights or [0]) + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="20" y="24" font-size="16" font-weight="bold">'
        f"{escape(str(plan.get('topology') or 'plan'))}: {escape(str(plan.get('recipe')))}</text>",
    ]
    bus: list[tuple[float, list[float]]] = []  # per column: x of the bus, y of each instance
    boxes: list[str] = []
    for ci, c in enumerate(cols):
        x = 60 + ci * (col_w + 60)
        y = top
        boxes.append(f'<text x="{x}" y="{y - 8}" font-weight="bold">{c}</text>')
        ticks: list[float] = []
        for inst in columns[c]:
            box_h = len(inst["nodes"]) * (node_h + gap) + 60
            title = f"{inst['name']}: DP{inst['dp_size']} x TP{inst['tp_size']}"
            sub = (
                f"engine_id {inst['engine_id']}, kv ports {inst['kv_port_range'][0]}-{inst['kv_port_range'][1]}"
                if "engine_id" in inst
                else "single node, PD in one engine"
            )
            boxes.append(
                f'<rect x="{x}" y="{y}" width="{col_w}" height="{box_h}" rx="8" fill="{COLORS[c]}" stroke="#334155"/>'
            )
            boxes.append(f'<text x="{x + pad}" y="{y + 20}" font-weight="bold">{escape(title)}</text>')
            boxes.append(f'<text x="{x + pad}" y="{y + 36}">{escape(sub)}</text>')
            ticks.append(y + 20)
            ny = y + 48
            for host in inst["nodes"]:
                h = plan["hosts"].get(host)
                if not h:
                    continue
                ranks = [r["dp_rank"] for r in h["ranks"]]
                master = " (DP master)" if h["is_dp_master"] and c != "single" else ""
                boxes.append(
                    f'<rect x="{x + pad}" y="{ny}" width="{node_w}" height="{node_h}" rx="4" '
                    f'fill="white" stroke="#64748b"/>'
                )
                lines = [
                    f"{host} {h['node_ip']}{master}",
                    f"{h['hw_kind'].upper()}: ranks {_span(ranks)}, "
                    f"devices {h['tp_size'] * len(ranks)}/{h['device_count']}",
                    f"API {_span(h['api_ports'])}" + (f", kv {_span(h['kv_ports'])}" if h["kv_ports"] else ""),
                ]
                for li, text in enumerate(lines):
                    boxes.append(f'<text x="{x + pad + 8}" y="{ny + 18 + li * 16}">{escape(text)}</text>')
                ny += node_h + gap
            y += box_h + gap
        bus.append((x - 20, ticks))
    proxy = plan.get("proxy")
    if proxy:
        px, py, pw = width / 2 - 170, 40, 340
        line = 'stroke="#475569" stroke-dasharray="4 3"'
        for bx, ticks in bus:
            out.append(f'<line x1="{width / 2}" y1="{py + 40}" x2="{bx}" y2="{top - 24}" {line}/>')
            out.append(f'<line x1="{bx}" y1="{top - 24}" x2="{bx}" y2="{ticks[-1]}" {line}/>')
            for ty in ticks:
                out.append(f'<line x1="{bx}" y1="{ty}" x2="{bx + 20}" y2="{ty}" {line}/>')
        out.append(
            f'<rect x="{px}" y="{py}" width="{pw}" height="40" rx="8" fill="{COLORS["proxy"]}" stroke="#334155"/>'
        )
        label = f"proxy {proxy['address']}:{proxy['port']} on {proxy['host']}"
        out.append(f'<text x="{px + 12}" y="{py + 24}">{escape(label)}</text>')
    out.extend(boxes)
    out.append("</svg>")
    return "\n".join(out) + "\n"
