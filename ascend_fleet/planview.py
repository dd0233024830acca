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
    node_w, node_h, gap, pad = 230, 64, 14, 16
    columns: dict[str, list[dict[str, Any]]] = {"prefill": [], "decode": [], "single": []}
    for inst in plan["instances"]:
        columns[inst["role"]].append(inst)
    cols = [c for c in ("prefill", "decode", "single") if columns[c]]
    col_w = node_w + 2 * pad
    top = 110 if plan.get("proxy") else 50
    heights = []
    for c in cols:
        heights.append(sum(len(i["nodes"]) * (node_h + gap) + 44 + gap for i in columns[c]))
    width = max(len(cols) * (col_w + 40) + 40, 420)
    height = top + max(heights or [0]) + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="20" y="24" font-size="16" font-weight="bold">'
        f"{escape(str(plan.get('topology') or 'plan'))}: {escape(str(plan.get('recipe')))}</text>",
    ]
    anchors: list[tuple[float, float]] = []
    for ci, c in enumerate(cols):
        x = 40 + ci * (col_w + 40)
        y = top
        out.append(f'<text x="{x}" y="{y - 8}" font-weight="bold">{c}</text>')
        for inst in columns[c]:
            box_h = len(inst["nodes"]) * (node_h + gap) + 44
            label = f"{inst['name']}: DP{inst['dp_size']} x TP{inst['tp_size']}"
            if "engine_id" in inst:
                label += f", engine {inst['engine_id']}, kv {inst['kv_port']}"
            out.append(
                f'<rect x="{x}" y="{y}" width="{col_w}" height="{box_h}" rx="8" fill="{COLORS[c]}" stroke="#334155"/>'
            )
            out.append(f'<text x="{x + pad}" y="{y + 20}" font-weight="bold">{escape(label)}</text>')
            anchors.append((x + col_w / 2, y))
            ny = y + 32
            for host in inst["nodes"]:
                h = plan["hosts"].get(host)
                if not h:
                    continue
                ranks = [r["dp_rank"] for r in h["ranks"]]
                master = " (DP master)" if h["is_dp_master"] and c != "single" else ""
                out.append(
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
                    out.append(f'<text x="{x + pad + 8}" y="{ny + 18 + li * 16}">{escape(text)}</text>')
                ny += node_h + gap
            y += box_h + gap
    proxy = plan.get("proxy")
    if proxy:
        px, py, pw = width / 2 - 150, 40, 300
        out.append(
            f'<rect x="{px}" y="{py}" width="{pw}" height="40" rx="8" fill="{COLORS["proxy"]}" stroke="#334155"/>'
        )
        label = f"proxy {proxy['address']}:{proxy['port']} on {proxy['host']}"
        out.append(f'<text x="{px + 12}" y="{py + 24}">{escape(label)}</text>')
        for ax, ay in anchors:
            out.append(
                f'<line x1="{width / 2}" y1="{py + 40}" x2="{ax}" y2="{ay}" stroke="#475569" stroke-dasharray="4 3"/>'
            )
    out.append("</svg>")
    return "\n".join(out) + "\n"
