"""Write an inventory for a real fleet from a list of node addresses.

``ascend-fleet inventory`` turns "these machines, of this kind, in this layout" into an
inventory of the shipped shape (groups ``single`` or ``prefill``/``decode``, one
``fleet_instance`` per host, the recipe's profiles), then validates it with the same
``build_plan`` the playbooks run, so what it writes is what ``site.yml`` will accept.

Layouts:

- ``single``: every node serves on its own (the tutorial's section 5.1); one node only.
- ``pd``: prefill/decode disaggregated. ``prefill`` and ``decode`` say how many instances
  of how many nodes each: ``4x1`` is four one-node instances, ``2x8`` two instances of
  eight nodes (one DP group over the eight). Nodes are taken in the order given: the
  prefill instances first, then the decode instances; the first node of an instance is
  its DP master, and the first prefill node runs the PD proxy.

The nodes file has one node a line: ``ADDRESS [NAME]``; ``#`` starts a comment.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .topology import build_plan

KINDS = ("a2", "a3")
CONTEXTS = ("default", "1m")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
SHAPE_RE = re.compile(r"^([1-9][0-9]{0,3})x([1-9][0-9]{0,3})$")


class InventoryInputError(ValueError):
    """Bad input: the message names the value, what was expected and what to change."""


@dataclass(frozen=True)
class Node:
    address: str
    name: str | None
    line: int


def parse_nodes(text: str, source: str = "nodes") -> list[Node]:
    """Parse ``ADDRESS [NAME]`` lines; refuse bad addresses, names and duplicates."""
    nodes: list[Node] = []
    seen_addr: dict[str, int] = {}
    seen_name: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) > 2:
            raise InventoryInputError(f"{source}:{number}: {raw.strip()!r}: expected 'ADDRESS [NAME]'")
        address = fields[0]
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise InventoryInputError(
                f"{source}:{number}: {address!r} is not an IP address (one node a line: 'ADDRESS [NAME]')"
            ) from None
        name = fields[1] if len(fields) == 2 else None
        if name is not None and not NAME_RE.match(name):
            raise InventoryInputError(
                f"{source}:{number}: node name {name!r}: expected letters, digits, '.', '_' or '-' "
                "(at most 63, starting with a letter or digit)"
            )
        if address in seen_addr:
            raise InventoryInputError(
                f"{source}:{number}: address {address} is already given on line {seen_addr[address]}"
            )
        if name is not None and name in seen_name:
            raise InventoryInputError(f"{source}:{number}: name {name!r} is already used on line {seen_name[name]}")
        seen_addr[address] = number
        if name is not None:
            seen_name[name] = number
        nodes.append(Node(address, name, number))
    if not nodes:
        raise InventoryInputError(f"{source}: no node given (one node a line: 'ADDRESS [NAME]')")
    return nodes


def parse_shape(value: str, option: str) -> tuple[int, int]:
    """``'2x8'`` -> (2 instances, 8 nodes each)."""
    match = SHAPE_RE.match(value.strip())
    if not match:
        raise InventoryInputError(
            f"{option} {value!r}: expected INSTANCESxNODES, e.g. 4x1 (four one-node instances) or 2x8"
        )
    return int(match.group(1)), int(match.group(2))


def generate(
    nodes: list[Node],
    *,
    name: str,
    kind: str,
    layout: str,
    prefill: str | None = None,
    decode: str | None = None,
    nic: str = "enp67s0f0np0",
    context: str = "default",
) -> dict[str, Any]:
    """The inventory (a mapping ready for YAML) for ``nodes`` in ``layout``."""
    if not NAME_RE.match(name):
        raise InventoryInputError(f"--name {name!r}: expected letters, digits, '.', '_' or '-' (e.g. a2-16p2d)")
    if kind not in KINDS:
        raise InventoryInputError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    if context not in CONTEXTS:
        raise InventoryInputError(f"--context {context!r}: expected one of {', '.join(CONTEXTS)}")
    if not NAME_RE.match(nic):
        raise InventoryInputError(f"--nic {nic!r}: expected an interface name such as enp67s0f0np0")
    top_vars = {"fleet_topology": name, "fleet_hw_kind": kind, "fleet_nic_name": nic}
    if layout == "single":
        if prefill or decode:
            raise InventoryInputError("--prefill/--decode belong to --layout pd, not single")
        if context != "default":
            raise InventoryInputError("--context 1m is a PD layout (the tutorial's section 6): use --layout pd")
        if len(nodes) != 1:
            raise InventoryInputError(
                f"--layout single serves from one node; {len(nodes)} given (one inventory per single node, "
                "or --layout pd for a PD fleet)"
            )
        node = nodes[0]
        hosts = {node.name or "node-0": {"ansible_host": node.address}}
        children = {"single": {"vars": {"fleet_profile": f"{kind}-single"}, "hosts": hosts}}
        return {"all": {"vars": top_vars, "children": children}}
    if layout != "pd":
        raise InventoryInputError(f"--layout {layout!r}: expected single or pd")
    if not prefill or not decode:
        raise InventoryInputError("--layout pd needs --prefill INSTANCESxNODES and --decode INSTANCESxNODES")
    p_count, p_size = parse_shape(prefill, "--prefill")
    d_count, d_size = parse_shape(decode, "--decode")
    wanted = p_count * p_size + d_count * d_size
    if wanted != len(nodes):
        raise InventoryInputError(
            f"--prefill {prefill} --decode {decode} needs {p_count}*{p_size} + {d_count}*{d_size} = {wanted} "
            f"nodes; the nodes file gives {len(nodes)}"
        )
    middle = "-1m" if context == "1m" else ""
    queue = list(nodes)
    children: dict[str, Any] = {}
    for role, count, size in (("prefill", p_count, p_size), ("decode", d_count, d_size)):
        hosts: dict[str, Any] = {}
        index = 0
        for _instance in range(count):
            members = [queue.pop(0) for _ in range(size)]
            instance = None
            for member in members:
                host = member.name or f"{role}-{index}"
                index += 1
                instance = instance or host
                hosts[host] = {"ansible_host": member.address, "fleet_instance": instance}
        children[role] = {"vars": {"fleet_profile": f"{kind}{middle}-{role}"}, "hosts": hosts}
    names = [h for group in children.values() for h in group["hosts"]]
    clash = sorted({h for h in names if names.count(h) > 1})
    if clash:
        raise InventoryInputError(f"host name(s) {', '.join(clash)} used twice: name the nodes in the nodes file")
    return {"all": {"vars": top_vars, "children": children}}


def _flatten(inventory: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    top = inventory["all"]
    hostvars: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[str]] = {"all": [], "ungrouped": []}
    for group, body in top["children"].items():
        groups[group] = list(body["hosts"])
        for host, hvars in body["hosts"].items():
            hostvars[host] = {**top["vars"], **body["vars"], **hvars}
            groups["all"].append(host)
    return hostvars, groups


def validate(inventory: dict[str, Any], mode: str = "deploy") -> dict[str, Any]:
    """The plan of the generated inventory; errors are raised as InventoryInputError."""
    hostvars, groups = _flatten(inventory)
    plan = build_plan(hostvars, groups, mode=mode)
    if plan["errors"]:
        raise InventoryInputError("the generated inventory does not validate:\n- " + "\n- ".join(plan["errors"]))
    return plan


def render(inventory: dict[str, Any], plan: dict[str, Any], command: str) -> str:
    """YAML text with a header saying what the layout is and how it was made."""
    lines = [
        "---",
        f"# Written by: {command}",
        f"# Layout: {len(plan['instances'])} instance(s) on {len(plan['hosts'])} node(s); "
        "check it with `ascend-fleet plan` before `ansible-playbook site.yml -i` this file.",
    ]
    lines += [f"#   {_describe(inst)}" for inst in plan["instances"]]
    return "\n".join(lines) + "\n" + yaml.safe_dump(inventory, sort_keys=False, default_flow_style=False)


def _describe(inst: dict[str, Any]) -> str:
    nodes = inst["nodes"]
    over = nodes[0] if len(nodes) == 1 else f"{nodes[0]} .. {nodes[-1]} ({len(nodes)} nodes)"
    return f"{inst['name']}: {inst['role']}, DP{inst['dp_size']} x TP{inst['tp_size']} on {over}"


def write(path: Path, text: str) -> None:
    """Write atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
