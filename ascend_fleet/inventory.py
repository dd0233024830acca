"""Read a YAML inventory the way Ansible merges it (all < parent group < group < host).

Used by the ``ascend-fleet`` CLI and the tests to compute a plan without Ansible; the
playbooks get the same data from Ansible's own inventory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def load_yaml_inventory(*paths: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Return (hostvars, groups) for one or more YAML inventory files (later ones win)."""
    host_layers: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    groups: dict[str, list[str]] = {"all": [], "ungrouped": []}
    order = 0

    def walk(name: str, node: dict[str, Any] | None, depth: int, parents: list[str]) -> None:
        nonlocal order
        node = node or {}
        groups.setdefault(name, [])
        gvars = node.get("vars") or {}
        for host, hvars in (node.get("hosts") or {}).items():
            for g in [*parents, name]:
                if host not in groups.setdefault(g, []):
                    groups[g].append(host)
            layers = host_layers.setdefault(host, [])
            # group vars: deeper groups win over parents; host vars win over all groups
            layers.append((depth, order, gvars))
            layers.append((1000, order, hvars or {}))
            order += 1
        for child, sub in (node.get("children") or {}).items():
            walk(child, sub, depth + 1, [*parents, name])
        # group vars also apply to hosts listed under children
        for host in list(groups[name]):
            host_layers.setdefault(host, []).append((depth, order, gvars))

    for path in paths:
        data = yaml.safe_load(Path(path).read_text()) or {}
        for name, node in data.items():
            walk(name, node, 0 if name == "all" else 1, [] if name == "all" else ["all"])
    hostvars: dict[str, dict[str, Any]] = {}
    for host, layers in host_layers.items():
        merged: dict[str, Any] = {}
        for _depth, _order, layer in sorted(layers, key=lambda x: (x[0], x[1])):
            merged.update(layer)
        hostvars[host] = merged
    for host in hostvars:
        if host not in groups["all"]:
            groups["all"].append(host)
    return hostvars, groups
