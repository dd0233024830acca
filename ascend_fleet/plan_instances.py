"""Plan step 3, the instances: DP groups of nodes, their ranks, master, kv identity, proxy.

Input is the node entries of step 2. ``group_instances`` gathers the nodes of each
instance (one DP group), ``plan_instances`` gives every instance its TP/DP sizes, each
node its DP rank range, the DP master and RPC port, and each P/D instance its engine_id
and kv_port; ``kv_side_sizes`` is what kv_connector_extra_config must say, and
``plan_proxy`` places the PD proxy.
"""

from __future__ import annotations

from typing import Any

from .plan_inventory import INSTANCE_VARS, Inventory, Report, _address_problem, _is_int, _plain
from .plan_nodes import Roles


def group_instances(roles: Roles, nodes: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Step 3a. Input: roles and node entries. Output: instance key -> its hosts.

    Keys are "role:name"; instances are ordered prefill, decode, single, each in the
    order its first host appears in the role group; hosts keep their group order (the
    order DP ranks are given out in). Hosts without a node entry are left out.
    """
    nodes_of: dict[str, list[str]] = {}
    for role in ("prefill", "decode", "single"):
        for host in roles.members[role]:
            if host in nodes:
                nodes_of.setdefault(nodes[host]["instance"], []).append(host)
    return nodes_of


def check_instance_agreement(
    inv: Inventory, nodes: dict[str, dict[str, Any]], nodes_of: dict[str, list[str]], rep: Report
) -> None:
    """Step 3b. Input: inventory, node entries, instances. Output: none (errors on ``rep``).

    The hosts of one instance run one hardware kind and agree on every instance-level
    variable (INSTANCE_VARS: engine id, kv port, DP/TP sizes, DP address and RPC port...).
    """
    for key, hosts in nodes_of.items():
        kinds = {h: nodes[h]["hw_kind"] for h in hosts}
        if len(set(kinds.values())) > 1:
            rep.error(
                f"instance {key.split(':', 1)[1]}: mixes hardware kinds in one DP group ("
                + ", ".join(f"{h} {k}" for h, k in kinds.items())
                + "); a DP group runs on one kind: fix fleet_hw_kind or split the instance (fleet_instance)"
            )
        for name in INSTANCE_VARS:
            seen = {repr(_plain(inv.hosts[h].get(name))) for h in hosts}
            if len(seen) > 1:
                rep.error(
                    f"instance {key.split(':', 1)[1]}: {name} differs between its hosts "
                    f"({', '.join(sorted(seen)).replace('None', 'unset')}); set it once for the whole "
                    "instance (e.g. as a group variable), not on some of its hosts"
                )


def assign_dp_ranks(
    inv: Inventory, inst: dict[str, Any], nodes: dict[str, dict[str, Any]], profile: dict[str, Any], rep: Report
) -> None:
    """Step 3c. Input: one instance (name, nodes, tp_size), the node entries, its profile.

    Output: each node entry gets dp_size_local and dp_rank_start (nodes in inventory
    order; a node's start defaults to the running sum), the instance gets dp_size
    (default: the sum of the nodes' local sizes). Checked: TP x local ranks fit the
    node's devices, and the ranks cover [0, dp_size) exactly once.
    """
    tp = inst["tp_size"]
    cursor = 0
    covered: dict[int, str] = {}
    for host in inst["nodes"]:
        local = inv.var(host, "fleet_dp_size_local", profile["dp_size_local"])
        start = inv.var(host, "fleet_dp_rank_start", cursor)
        nodes[host]["dp_size_local"] = local
        nodes[host]["dp_rank_start"] = start
        cursor = start + local
        devices = nodes[host]["device_count"]
        if _is_int(tp) and _is_int(local) and tp * local > devices:
            rep.error(
                f"host {host}: tp_size {tp} x dp_size_local {local} = {tp * local} devices, "
                f"but an {nodes[host]['hw_kind']} node has {devices}; lower fleet_tp_size or "
                "fleet_dp_size_local"
            )
        if _is_int(start) and _is_int(local):
            for rank in range(start, start + local):
                if rank in covered:
                    rep.error(
                        f"instance {inst['name']}: DP rank {rank} on both {covered[rank]} and "
                        f"{host}; fix fleet_dp_rank_start / fleet_dp_size_local"
                    )
                covered[rank] = host
    first = inst["nodes"][0]
    dp_size = inv.var(first, "fleet_dp_size", sum(nodes[h]["dp_size_local"] for h in inst["nodes"]))
    inst["dp_size"] = dp_size
    missing = sorted(set(range(dp_size)) - set(covered)) if _is_int(dp_size) else []
    extra = sorted(r for r in covered if not _is_int(dp_size) or r >= dp_size or r < 0)
    if missing or extra:
        rep.error(
            f"instance {inst['name']}: DP ranks must cover [0, {dp_size}) exactly once; "
            f"missing {missing or 'none'}, outside {extra or 'none'} (nodes: "
            + ", ".join(f"{h} {nodes[h]['dp_rank_start']}..+{nodes[h]['dp_size_local']}" for h in inst["nodes"])
            + "); fix fleet_dp_size / fleet_dp_rank_start / fleet_dp_size_local"
        )


def choose_dp_master(
    inv: Inventory, inst: dict[str, Any], nodes: dict[str, dict[str, Any]], recipe: dict[str, Any], rep: Report
) -> None:
    """Step 3d. Input: one instance with its ranks assigned. Output: master, dp_address, dp_rpc_port.

    The master is the node holding DP rank 0 (else the first node); the DP address
    defaults to the master's node address and the RPC port to the recipe's launcher port.
    """
    first = inst["nodes"][0]
    master = next((h for h in inst["nodes"] if nodes[h]["dp_rank_start"] == 0), first)
    inst["master"] = master
    inst["dp_address"] = inv.var(first, "fleet_dp_address", nodes[master]["node_ip"])
    problem = inv.is_set(first, "fleet_dp_address") and _address_problem(str(inst["dp_address"]), inv.mode == "render")
    if problem:
        rep.error(f"instance {inst['name']}: fleet_dp_address = {inst['dp_address']!r} is {problem}")
    inst["dp_rpc_port"] = inv.var(first, "fleet_dp_rpc_port", recipe["launcher"]["dp_rpc_port"])


def assign_kv_identity(
    inv: Inventory, inst: dict[str, Any], earlier: list[dict[str, Any]], recipe: dict[str, Any], rep: Report
) -> None:
    """Step 3e. Input: one P/D instance and the instances planned before it.

    Output: engine_id (default: its index among the P/D instances), kv_port (default:
    kv port_base + engine_id x port_stride) and kv_port_range (first and last side-channel
    port of its dp_size x tp_size ranks). Both must be unique across instances.
    """
    first = inst["nodes"][0]
    kv = recipe["kv"]
    pd_index = sum(1 for i in earlier if i["role"] in ("prefill", "decode"))
    engine_id = inv.var(first, "fleet_engine_id", pd_index)
    same = [i for i in earlier if "engine_id" in i and i["engine_id"] == engine_id]
    if same:
        rep.error(
            f"instance {inst['name']}: engine_id {engine_id} is also used by instance "
            f"{same[-1]['name']}; every P/D instance needs its own (fleet_engine_id)"
        )
    inst["engine_id"] = engine_id
    base = inv.var(first, "fleet_kv_port_base", kv["port_base"])
    stride = inv.var(first, "fleet_kv_port_stride", kv["port_stride"])
    inst["kv_port"] = inv.var(first, "fleet_kv_port", base + engine_id * stride if _is_int(engine_id) else base)
    dp_size, tp = inst["dp_size"], inst["tp_size"]
    if _is_int(dp_size) and _is_int(tp):
        inst["kv_port_range"] = [inst["kv_port"], inst["kv_port"] + dp_size * tp - 1]
    other = next((i for i in earlier if i.get("kv_port") == inst["kv_port"]), None)
    if other is not None:
        rep.error(
            f"instance {inst['name']}: kv_port {inst['kv_port']} is also the kv_port of instance "
            f"{other['name']}; the tutorial: the kv_port must be unique for each P instance "
            "(fleet_kv_port, or fleet_engine_id with fleet_kv_port_base/stride)"
        )


def plan_instances(
    inv: Inventory,
    recipe: dict[str, Any],
    nodes: dict[str, dict[str, Any]],
    nodes_of: dict[str, list[str]],
    rep: Report,
) -> list[dict[str, Any]]:
    """Step 3f. Input: inventory, recipe, node entries, instances (``group_instances``).

    Output: the instances in order, each with name, key, role, nodes, tp_size, profile,
    kv_role, dp_size, master, dp_address, dp_rpc_port (+ engine_id, kv_port,
    kv_port_range on P/D). Fills dp_size_local and dp_rank_start into the node entries.
    """
    instances: list[dict[str, Any]] = []
    for key, hosts in nodes_of.items():
        first = hosts[0]
        role = nodes[first]["role"]
        profile = recipe["profiles"][nodes[first]["profile"]]
        inst: dict[str, Any] = {
            "name": nodes[first]["instance_name"],
            "key": key,
            "role": role,
            "nodes": hosts,
            "tp_size": inv.var(first, "fleet_tp_size", profile["tp_size"]),
            "profile": profile["name"],
            "kv_role": profile.get("kv_role"),
        }
        assign_dp_ranks(inv, inst, nodes, profile, rep)
        choose_dp_master(inv, inst, nodes, recipe, rep)
        if role in ("prefill", "decode"):
            assign_kv_identity(inv, inst, instances, recipe, rep)
        instances.append(inst)
    return instances


def kv_side_sizes(instances: list[dict[str, Any]], rep: Report) -> dict[str, dict[str, int] | None]:
    """Step 3g. Input: the instances. Output: {"prefill": {dp_size, tp_size}, "decode": ...}.

    The real sizes kv_connector_extra_config must state (None for a side with no
    instance); all instances of one side must share one DP x TP shape.
    """
    side_sizes: dict[str, dict[str, int]] = {}
    for role in ("prefill", "decode"):
        sizes = {(i["dp_size"], i["tp_size"]) for i in instances if i["role"] == role}
        if len(sizes) > 1:
            rep.error(
                f"group {role}: its instances differ in size ({sorted(sizes)}); the kv connector "
                f"describes one {role} shape: make every {role} instance the same DP x TP"
            )
        if sizes:
            dp, tp = sorted(sizes)[0]
            side_sizes[role] = {"dp_size": dp, "tp_size": tp}
    return {"prefill": side_sizes.get("prefill"), "decode": side_sizes.get("decode")}


def plan_proxy(
    inv: Inventory,
    roles: Roles,
    nodes: dict[str, dict[str, Any]],
    instances: list[dict[str, Any]],
    recipe: dict[str, Any],
    rep: Report,
) -> dict[str, Any] | None:
    """Step 3h. Input: inventory, roles, nodes, instances, recipe. Output: the PD proxy, or None.

    None for a single-node deployment or when errors were found so far. The proxy runs
    on the host of group proxy (exactly one), else on the first prefill instance's
    master; its prefill/decode lists are filled once every host's ranks are known.
    """
    if not roles.pd or rep.errors:
        return None
    proxy_hosts = roles.proxy_group
    prefills = [i for i in instances if i["role"] == "prefill"]
    proxy_host = proxy_hosts[0] if proxy_hosts else prefills[0]["master"]
    if len(proxy_hosts) > 1:
        rep.error(f"group proxy: {len(proxy_hosts)} hosts ({', '.join(proxy_hosts)}); expected one")
    proxy_ip = (
        nodes[proxy_host]["node_ip"]
        if proxy_host in nodes
        else str(inv.var(proxy_host, "fleet_node_ip", inv.var(proxy_host, "ansible_host", proxy_host)))
    )
    return {
        "host": proxy_host,
        "address": proxy_ip,
        "port": inv.var(proxy_host, "fleet_proxy_port", recipe["proxy"]["port"]),
        "script": recipe["proxy"]["script"],
        "python": recipe["launcher"]["python"],
        "prefill": [],
        "decode": [],
    }
