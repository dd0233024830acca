"""Plan step 4, ranks and ports: each engine host's DP ranks, their devices and ports.

Input is one host's node entry and its instance (step 3). ``plan_ranks`` gives every
local DP rank its global rank, its ASCEND_RT_VISIBLE_DEVICES, its API port and (P/D) the
kv side-channel ports it binds; ``host_ports`` lists every port the host binds with its
purpose, and ``check_ports`` refuses clashes between them.
"""

from __future__ import annotations

from typing import Any

from .plan_inventory import Inventory, Report, _is_int


def vllm_start_port(inv: Inventory, host: str, recipe: dict[str, Any]) -> int:
    """The API port of a P/D host's first local rank (the next ranks count up from it)."""
    return inv.var(host, "fleet_vllm_start_port", recipe["launcher"]["vllm_start_port"])


def single_api_port(inv: Inventory, host: str, recipe: dict[str, Any]) -> int:
    """The API port of a single-node engine."""
    return inv.var(host, "fleet_api_port", recipe["single"]["port"])


def is_plannable(node: dict[str, Any], inst: dict[str, Any] | None) -> bool:
    """Whether a host's ranks can be computed: its instance exists and every size is an integer."""
    if inst is None or "dp_size_local" not in node:
        return False
    return all(_is_int(x) for x in (inst["tp_size"], node["dp_size_local"], node["dp_rank_start"], inst["dp_size"]))


def plan_ranks(
    inv: Inventory, host: str, node: dict[str, Any], inst: dict[str, Any], recipe: dict[str, Any], rep: Report
) -> list[dict[str, Any]]:
    """Step 4a. Input: one host's node entry and instance (``is_plannable``). Output: its ranks.

    Each rank: local index, dp_rank (dp_rank_start + local), devices (tp_size consecutive
    device ids per rank, or the host's fleet_visible_devices entry), api_port
    (fleet_vllm_start_port + local) and, on P/D, kv_ports (kv_port + dp_rank x tp_size
    + 0..tp_size-1). A single node has one rank on fleet_api_port seeing all devices.
    fleet_visible_devices is checked: one entry per local rank, tp_size ids each, every
    id on the node and used once.
    """
    tp, local, start = inst["tp_size"], node["dp_size_local"], node["dp_rank_start"]
    devices_override = inv.var(host, "fleet_visible_devices")
    if node["role"] == "single":
        all_devs = (
            ",".join(str(e) for e in devices_override)
            if devices_override is not None
            else ",".join(str(d) for d in range(tp * local))
        )
        ranks = [{"local": 0, "dp_rank": 0, "api_port": single_api_port(inv, host, recipe), "devices": all_devs}]
    else:
        first_port = vllm_start_port(inv, host, recipe)
        ranks = []
        for i in range(local):
            if devices_override is not None:
                devs = str(devices_override[i]) if i < len(devices_override) else ""
            else:
                devs = ",".join(str(d) for d in range(i * tp, (i + 1) * tp))
            ranks.append(
                {
                    "local": i,
                    "dp_rank": start + i,
                    "devices": devs,
                    "api_port": first_port + i,
                    "kv_ports": (
                        [inst["kv_port"] + (start + i) * tp + t for t in range(tp)]
                        if _is_int(inst.get("kv_port"))
                        else []
                    ),
                }
            )
    if devices_override is not None:
        check_visible_devices(host, devices_override, node, tp, local, rep)
    return ranks


def check_visible_devices(
    host: str, devices: list[Any], node: dict[str, Any], tp: int, local: int, rep: Report
) -> None:
    """Step 4b. Input: a host's fleet_visible_devices. Output: none (errors on ``rep``).

    One entry per local DP rank, each tp_size comma-separated device ids that exist on
    the node's hardware kind, no id twice.
    """
    if len(devices) != local:
        rep.error(
            f"host {host}: fleet_visible_devices has {len(devices)} entries; expected one per local DP rank ({local})"
        )
    used: set[int] = set()
    for entry in devices:
        ids = [x for x in str(entry).split(",") if x != ""]
        if not all(x.isdigit() for x in ids) or len(ids) != tp:
            rep.error(
                f"host {host}: fleet_visible_devices entry {entry!r}; expected {tp} "
                "comma-separated device ids (tp_size)"
            )
            continue
        for x in map(int, ids):
            if x >= node["device_count"] or x in used:
                rep.error(
                    f"host {host}: device {x} in fleet_visible_devices is "
                    f"{'used twice' if x in used else 'not on this node'} "
                    f"({node['hw_kind']}: 0..{node['device_count'] - 1})"
                )
            used.add(x)


def host_ports(
    host: str, node: dict[str, Any], inst: dict[str, Any], ranks: list[dict[str, Any]], proxy: dict[str, Any] | None
) -> list[tuple[int, str]]:
    """Step 4c. Input: a host's node entry, instance, ranks and the proxy. Output: (port, purpose) list.

    Every port the host binds: each rank's API port and kv side-channel ports, the DP
    RPC port on a P/D master, the proxy port on the proxy host.
    """
    ports: list[tuple[int, str]] = []
    for r in ranks:
        ports.append((r["api_port"], f"API port of DP rank {r['dp_rank']}"))
        for p in r.get("kv_ports", []):
            ports.append((p, f"kv side-channel port of DP rank {r['dp_rank']}"))
    if node["role"] != "single" and host == inst["master"]:
        ports.append((inst["dp_rpc_port"], "DP RPC port (fleet_dp_rpc_port)"))
    if proxy and host == proxy["host"]:
        ports.append((proxy["port"], "proxy port (fleet_proxy_port)"))
    return ports


def check_ports(host: str, ports: list[tuple[int, str]], rep: Report) -> dict[int, str]:
    """Step 4d. Input: one host's (port, purpose) list. Output: port -> purpose.

    Every port is 1..65535 and bound for one purpose only; clashes are reported (the
    first three, and how many more) naming the variables that move each range.
    """
    by_port: dict[int, str] = {}
    clashes: list[str] = []
    for port, purpose in ports:
        if not _is_int(port) or not 0 < port < 65536:
            rep.error(f"host {host}: {purpose} = {port!r}; expected a port number 1..65535")
            continue
        if port in by_port:
            clashes.append(f"port {port} is both the {by_port[port]} and the {purpose}")
        by_port[port] = purpose
    if clashes:
        more = f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else ""
        rep.error(
            f"host {host}: {len(clashes)} port clash{'es' if len(clashes) > 1 else ''}: "
            + "; ".join(clashes[:3])
            + more
            + "; move one range (fleet_vllm_start_port, "
            "fleet_kv_port / fleet_kv_port_base, fleet_dp_rpc_port, fleet_proxy_port)"
        )
    return by_port
