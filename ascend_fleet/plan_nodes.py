"""Plan step 2, the nodes: each host's role, the recipe, and each engine node's basics.

Input is the checked ``Inventory`` (step 1). ``assign_roles`` decides who serves in which
role, ``choose_recipe`` loads the one recipe the hosts name, ``plan_nodes`` gives each
engine host its hardware, profile, addresses, NIC and instance, and the address checks
make sure no two inventory names are the same machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .plan_inventory import (
    ROLE_GROUPS,
    SAFE_NAME,
    Inventory,
    Report,
    _address_problem,
    _is_ip,
)
from .recipes import DEFAULT_RECIPE, RecipeError, container_settings, load_recipe


@dataclass
class Roles:
    """Who serves in which role: the output of ``assign_roles``."""

    role_of: dict[str, str]  # engine host -> single / prefill / decode (inventory order)
    members: dict[str, list[str]]  # role group -> its engine hosts, in group order
    pd: bool  # a prefill/decode (disaggregated) deployment
    proxy_group: list[str]  # the hosts of group proxy (a dedicated PD proxy host)

    def first_host(self, inv: Inventory) -> str | None:
        """The host whose fleet-wide values (recipe paths, topology name) are read."""
        return next(iter(self.role_of), next(iter(inv.hosts), None))


def assign_roles(inv: Inventory, rep: Report) -> Roles:
    """Step 2a. Input: the inventory. Output: ``Roles``.

    Every engine host sits in exactly one of the groups single/prefill/decode; an
    inventory is either single-node or PD (then both prefill and decode have hosts);
    inventory names written into scripts must be plain names. Hosts in no role group
    and a proxy group beside a single node are warned about.
    """
    hosts, groups = inv.hosts, inv.groups
    role_of: dict[str, str] = {}
    for host in hosts:
        roles = [g for g in ROLE_GROUPS if host in groups.get(g, [])]
        if len(roles) > 1:
            rep.error(
                f"host {host}: in groups {', '.join(roles)}; a node has exactly one role "
                "(remove it from all but one of single/prefill/decode)"
            )
        if roles:
            role_of[host] = roles[0]
    members = {g: [h for h in groups.get(g, []) if h in role_of] for g in ROLE_GROUPS}
    pd = bool(members["prefill"] or members["decode"] or "prefill" in groups or "decode" in groups)
    if pd:
        for g in ("prefill", "decode"):
            if not members[g]:
                state = "missing" if g not in groups else "empty"
                rep.error(
                    f"group {g}: {state}; a prefill/decode deployment needs at least one host "
                    f"in both 'prefill' and 'decode' (add hosts under children.{g})"
                )
        if members["single"]:
            rep.error(
                f"group single: {', '.join(members['single'])} sit beside prefill/decode groups; "
                "an inventory deploys either single-node or PD (move them to their own inventory)"
            )
    elif not members["single"]:
        rep.error(
            "group single/prefill/decode: none has hosts; expected a 'single' group (one node "
            "serves alone) or 'prefill' + 'decode' groups (PD disaggregation)"
        )
    proxy_group = [h for h in groups.get("proxy", []) if h in hosts]
    for host in hosts:
        if host not in role_of and host not in proxy_group:
            rep.warn(f"host {host}: in no role group (single/prefill/decode); nothing is deployed there")
    if proxy_group and not pd:
        rep.warn(f"group proxy: {', '.join(proxy_group)} ignored; a single-node deployment has no PD proxy")
    for host in [*role_of, *(h for h in proxy_group if h not in role_of)]:
        if not SAFE_NAME.fullmatch(host):
            rep.error(
                f"host {host!r}: the inventory name is written into the host's scripts; expected "
                "letters, digits, '.', '_' or '-' (at most 63, no spaces or shell characters): rename it"
            )
    return Roles(role_of=role_of, members=members, pd=pd, proxy_group=proxy_group)


def choose_recipe(inv: Inventory, roles: Roles, rep: Report) -> dict[str, Any] | None:
    """Step 2b. Input: the inventory and roles. Output: the loaded recipe, or None.

    All engine hosts must name the same ``fleet_recipe`` (default: the tutorial's); it is
    looked up in ``fleet_recipe_paths`` and the built-in recipes. None (with the error
    reported) when it cannot be loaded.
    """
    recipe_ids = {inv.var(h, "fleet_recipe", DEFAULT_RECIPE) for h in roles.role_of}
    if len(recipe_ids) > 1:
        rep.error(f"fleet_recipe: hosts disagree ({', '.join(sorted(recipe_ids))}); set it once in all.vars")
    recipe_id = sorted(recipe_ids)[0] if recipe_ids else DEFAULT_RECIPE
    any_host = roles.first_host(inv)
    try:
        return load_recipe(recipe_id, inv.var(any_host, "fleet_recipe_paths", []) if any_host else [])
    except RecipeError as exc:
        rep.error(f"fleet_recipe: {exc}")
        return None


def plan_container(recipe: dict[str, Any], rep: Report) -> dict[str, Any]:
    """Step 2c. Input: the recipe. Output: the engine containers' settings (privileged + reason).

    A recipe that runs the engines privileged is warned about, naming serve_privileged.
    """
    try:
        container = container_settings(recipe)
    except RecipeError as exc:
        rep.error(f"fleet_recipe: {exc}")
        container = {"privileged": False, "reason": ""}
    if container["privileged"]:
        rep.warn(
            f"recipe {recipe['id']}: the engine containers run privileged (docker run --privileged=true): "
            f"{container['reason']}; set serve_privileged: false to run them without"
        )
    return container


def _check_address(host: str, label: str, value: Any, allow_ph: bool, whose: str, rep: Report) -> None:
    problem = _address_problem(str(value), allow_ph)
    if problem:
        rep.error(f"host {host}: {label} = {value!r} is {problem}; set {label} for {host} {whose}")


def plan_nodes(inv: Inventory, roles: Roles, recipe: dict[str, Any], rep: Report) -> dict[str, dict[str, Any]]:
    """Step 2d. Input: inventory, roles, recipe. Output: engine host -> its node entry.

    A node entry holds host, role, hw_kind, profile, device_count, hardware, node_ip,
    connect_address, nic_name, instance ("role:name") and instance_name. Checked here:
    the addresses (no placeholder in deploy mode; the node address an IP), the hardware
    kind and profile against the recipe, the NIC name when rendering, fleet_instance on
    PD hosts. A host with a bad kind, profile or instance gets no entry.
    """
    nodes: dict[str, dict[str, Any]] = {}
    for host, role in roles.role_of.items():
        allow_ph = inv.var(host, "fleet_allow_placeholder_addresses", inv.mode == "render")
        conn = inv.var(host, "ansible_host", host)
        node_ip = inv.var(host, "fleet_node_ip", conn)
        checks = [("ansible_host", conn)]
        if inv.is_set(host, "fleet_node_ip"):
            checks.append(("fleet_node_ip", node_ip))
        for label, value in checks:
            _check_address(host, label, value, allow_ph, "in the inventory to the node's real address", rep)
        if not _address_problem(str(node_ip), True) and not _is_ip(str(node_ip)):
            rep.error(
                f"host {host}: node address {node_ip!r} is a hostname; HCCL_IF_IP and the DP "
                f"master address need an IP: set fleet_node_ip for {host}"
            )

        hw = inv.var(host, "fleet_hw_kind")
        if hw not in recipe["hardware"]:
            rep.error(
                f"host {host}: fleet_hw_kind = {hw!r}; expected one of "
                f"{', '.join(sorted(recipe['hardware']))} (a2: Atlas 800 A2, 8 devices; "
                "a3: Atlas 800 A3, 16 devices)"
            )
            continue
        profile_name = inv.var(host, "fleet_profile", f"{hw}-{role}")
        profile = recipe["profiles"].get(profile_name)
        if profile is None:
            rep.error(
                f"host {host}: fleet_profile = {profile_name!r} is not in recipe {recipe['id']}; "
                f"expected one of {', '.join(sorted(recipe['profiles']))}"
            )
            continue
        if profile["role"] != role:
            rep.error(
                f"host {host}: fleet_profile = {profile_name!r} is a {profile['role']} profile but "
                f"the host is in group {role}; set fleet_profile to a {role} profile"
            )
            continue
        if profile["hw"] != hw:
            rep.error(
                f"host {host}: fleet_profile = {profile_name!r} is written for {profile['hw']} "
                f"but fleet_hw_kind = {hw!r}; fix one of them"
            )
            continue
        nic = inv.var(host, "fleet_nic_name")
        if nic is None and inv.mode == "render":
            rep.error(f"host {host}: fleet_nic_name is not set; rendering needs the NIC name of {node_ip}")
        instance = inv.var(host, "fleet_instance", host if role == "single" else None)
        if instance is None:
            rep.error(
                f"host {host}: fleet_instance is not set; every {role} host names the instance "
                "it belongs to (nodes of one DP group share a name)"
            )
            continue
        nodes[host] = {
            "host": host,
            "role": role,
            "hw_kind": hw,
            "profile": profile_name,
            "device_count": recipe["hardware"][hw]["devices"],
            # hbm_gb / driver_min / firmware_min: checked by preflight on the node
            "hardware": dict(recipe["hardware"][hw]),
            "node_ip": str(node_ip),
            "connect_address": str(conn),
            "nic_name": nic,
            "instance": f"{role}:{instance}",
            "instance_name": str(instance),
        }
    return nodes


def dedicated_proxy_hosts(roles: Roles) -> list[str]:
    """The proxy-group hosts that run no engine (PD only): they host proxy.sh alone."""
    return [h for h in roles.proxy_group if h not in roles.role_of] if roles.pd else []


def check_proxy_host_addresses(inv: Inventory, roles: Roles, rep: Report) -> None:
    """Step 2e. Input: inventory and roles. Output: none (errors on ``rep``).

    A dedicated proxy host's addresses are checked like an engine node's: no placeholder
    in deploy mode, and the address the proxy binds is an IP.
    """
    for host in dedicated_proxy_hosts(roles):
        allow_ph = inv.var(host, "fleet_allow_placeholder_addresses", inv.mode == "render")
        conn = str(inv.var(host, "ansible_host", host))
        node_ip = str(inv.var(host, "fleet_node_ip", conn))
        for label, value in [("ansible_host", conn)] + (
            [("fleet_node_ip", node_ip)] if inv.is_set(host, "fleet_node_ip") else []
        ):
            _check_address(
                host, label, value, allow_ph, "(the PD proxy host) in the inventory to its real address", rep
            )
        if not _address_problem(node_ip, True) and not _is_ip(node_ip):
            rep.error(
                f"host {host}: proxy address {node_ip!r} is a hostname; the proxy binds an IP: "
                f"set fleet_node_ip for {host}"
            )


def host_addresses(inv: Inventory, roles: Roles) -> dict[str, list[str]]:
    """Address -> the inventory names that use it (connection address and node address)."""
    addresses: dict[str, list[str]] = {}
    for host in roles.role_of:
        conn = inv.var(host, "ansible_host", host)
        node_ip = inv.var(host, "fleet_node_ip", conn)
        addresses.setdefault(str(node_ip), []).append(host)
        if str(conn) != str(node_ip):
            addresses.setdefault(str(conn), []).append(host)
    for host in dedicated_proxy_hosts(roles):
        conn = str(inv.var(host, "ansible_host", host))
        node_ip = str(inv.var(host, "fleet_node_ip", conn))
        for addr in {conn, node_ip}:
            addresses.setdefault(addr, []).append(host)
    return addresses


def check_shared_addresses(inv: Inventory, roles: Roles, rep: Report) -> None:
    """Step 2f. Input: inventory and roles. Output: none (errors on ``rep``).

    Two inventory names with one address are one machine under two names: refused.
    """
    for addr, owners in host_addresses(inv, roles).items():
        owners = list(dict.fromkeys(owners))
        if len(owners) > 1:
            rep.error(
                f"hosts {', '.join(owners)}: share the address {addr}, the same machine under "
                f"{len(owners)} names; each node needs its own (fix ansible_host / fleet_node_ip)"
            )
