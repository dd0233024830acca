"""What the serve wait watches: this node's ranks and the other nodes of its instance.

``watch_spec(plan, host, container)`` is the spec the ``fleet_wait_healthy`` module
reads: a DP group spans every node of an instance, so each node's watcher also watches
the API ports of the instance's other nodes (a rank or a node lost there means the group
cannot form: no point waiting for the engine timeout).
"""

from __future__ import annotations

from typing import Any


def _ranks(entry: dict) -> list[dict[str, int]]:
    return [{"dp_rank": int(r["dp_rank"]), "api_port": int(r["api_port"])} for r in entry.get("ranks", [])]


def watch_spec(plan: dict, host: str, container: str) -> dict[str, Any]:
    hosts = plan["hosts"]
    me = hosts[host]
    peers = [
        {"node": name, "ip": entry["node_ip"], "ranks": _ranks(entry)}
        for name, entry in sorted(hosts.items())
        if name != host and entry.get("instance") == me.get("instance") and entry.get("ranks")
    ]
    return {
        "node": host,
        "ip": me["node_ip"],
        "instance": me.get("instance"),
        "container": container,
        "ranks": _ranks(me),
        "peers": peers,
    }
