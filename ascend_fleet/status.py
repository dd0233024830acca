"""The fleet's status report (status.yml): every host's record into one verdict and a table.

``fleet_report`` decides the service state (up, degraded, down) and the problems from the
per-host records (module fleet_status_probe, or the unreachable record); ``status_table``
renders the report for people (lines of at most 80 characters).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

NOT_PROBED = {
    "host": None, "reachable": None, "error": "not probed (the host failed earlier)", "role": None,
    "instance": None, "node_ip": None, "engine": None, "proxy": None, "proxy_health": None,
    "ranks": [], "ports": None,
}


def fleet_report(plan: dict[str, Any], statuses: dict[str, Any], play_hosts: list[str],
                 now: datetime | None = None) -> dict[str, Any]:
    """statuses: host -> its record (None or absent: not probed). Hosts in plan order
    (instances as planned), then the others sorted."""
    planned = [n for inst in plan["instances"] for n in inst["nodes"] if n in play_hosts]
    hosts = planned + sorted(h for h in play_hosts if h not in planned)
    records = {h: statuses.get(h) or dict(NOT_PROBED) for h in hosts}
    problems: list[str] = []
    ranks = healthy = 0
    for h in hosts:
        s = records[h]
        if s["reachable"] is False:
            problems.append(f"{h} unreachable")
        elif s["reachable"] is None:
            problems.append(f"{h} not probed")
        for c in (s["engine"], s["proxy"]):
            if c and s["reachable"] and c["state"] != "running":
                problems.append(f"{h} {c['name']} {c['state']}")
        ph = s["proxy_health"]
        if ph and ph["healthy"] is False and (s["proxy"] or {}).get("state") == "running":
            problems.append(f"{h} proxy /healthcheck not answering")
        ranks += len(plan["hosts"].get(h, {}).get("ranks") or [])
        healthy += sum(1 for r in s["ranks"] if r["healthy"] is True)
        refused = [str(r["api_port"]) for r in s["ranks"] if r.get("api_key_accepted") is False]
        if refused:
            problems.append(f"{h} ranks on ports {', '.join(refused)} refuse the API key (fleet_api_key)")
    if healthy < ranks:
        problems.append(f"{ranks - healthy} of {ranks} ranks not healthy")
    service = "up" if not problems else ("down" if healthy == 0 else "degraded")
    entry = plan["entrypoint"]
    return {
        "generated_utc": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "topology": plan["topology"],
        "recipe": plan["recipe"],
        "entrypoint": {
            "host": entry["host"],
            "url": f"http://{entry['address']}:{entry['port']}",
            "model": plan["hosts"].get(entry["host"], {}).get("served_name"),
        },
        "service": service,
        "problems": problems,
        "summary": {
            "hosts": len(hosts),
            "ranks": ranks,
            "healthy_ranks": healthy,
            "unreachable": [h for h in hosts if records[h]["reachable"] is False],
        },
        "order": hosts,
        "hosts": records,
    }


def _cell(value: Any) -> str:
    return "-" if value in (None, "") else str(value)


def status_table(report: dict[str, Any], path: str) -> str:
    """The report as a table, then what is wrong, the images, the verdict and the report path."""
    fmt = "%-12s %-8s %-12s %-6s %-8s %-8s %-7s %s"
    lines = [fmt % ("HOST", "ROLE", "INSTANCE", "REACH", "ENGINE", "HEALTHY", "PORTS", "PROXY")]
    for h in report["order"]:
        s = report["hosts"][h]
        ranks = s["ranks"] or []
        reach = "yes" if s["reachable"] else ("NO" if s["reachable"] is False else "?")
        up = sum(1 for r in ranks if r["healthy"] is True) if s["reachable"] else "?"
        ports = s["ports"]
        proxy = "-"
        if s["proxy"]:
            proxy = s["proxy"]["state"]
            if s["proxy"]["state"] == "running":
                ok = s["proxy_health"]["healthy"]
                proxy += " ok" if ok else (" FAILING" if ok is False else "")
        lines.append(fmt % (
            h, _cell(s["role"]), _cell(s["instance"]), reach,
            s["engine"]["state"] if s["engine"] else "-",
            f"{up}/{len(ranks)}" if ranks else "-",
            f"{len(ports['listening'])}/{len(ports['planned'])}" if ports and ports["listening"] is not None else "-",
            proxy,
        ))
    for h in report["order"]:
        s = report["hosts"][h]
        running = bool(s["engine"]) and s["engine"]["state"] == "running"
        if s["reachable"] is False:
            error = str(s["error"])
            lines.append(f"{h} unreachable: {error if len(error) <= 120 else error[:117] + '...'}")
        bad = [str(r["api_port"]) for r in s["ranks"] or [] if r["healthy"] is False]
        if bad and running:
            lines.append(f"{h}: ranks not healthy on ports {', '.join(bad)}")
        if s["ports"] and s["ports"]["missing"] and running:
            lines.append(f"{h}: planned ports not listening: {', '.join(map(str, s['ports']['missing']))}")
    images = sorted({s["engine"]["image"] for s in report["hosts"].values() if s["engine"] and s["engine"]["image"]})
    lines += [f"image {image}" for image in images]
    summary = report["summary"]
    lines.append(f"service {report['service'].upper()}: {summary['healthy_ranks']}/{summary['ranks']} ranks healthy, "
                 f"entry point {report['entrypoint']['url']}")
    lines += [f"  - {p}" for p in report["problems"]]
    lines.append(f"report: {path}")
    return "\n".join(lines)
