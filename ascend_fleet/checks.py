"""Node checks: turn what the nodes report into precise problems (node, device, found, expected).

Pure functions over plain data (the NPU local facts, network facts, command outputs), so
they are unit-tested without hardware; the preflight and npu_network roles call them as
filters.
"""

from __future__ import annotations

import re
from typing import Any


def node_nic(net: dict[str, Any], address: str) -> str | None:
    """The interface that carries ``address`` (primary or secondary IPv4), from Ansible facts."""
    for name in net.get("interfaces", []):
        iface = net.get(name.replace("-", "_").replace(".", "_")) or net.get(name) or {}
        addrs = [iface.get("ipv4", {}).get("address")]
        addrs += [a.get("address") for a in iface.get("ipv4_secondaries", [])]
        if address in addrs:
            return iface.get("device", name)
    return None


def listening_ports(ss_output: str) -> set[int]:
    """Ports in LISTEN from ``ss -Htln`` output."""
    ports: set[int] = set()
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            match = re.search(r":(\d+)$", fields[3])
            if match:
                ports.add(int(match.group(1)))
    return ports


def preflight_problems(
    host: str,
    plan: dict[str, Any],
    npu: dict[str, Any] | None,
    net: dict[str, Any],
    checks: dict[str, Any],
) -> dict[str, list[str]]:
    """Everything wrong with one node before deploying, as ``{"errors": [...], "warnings": [...]}``.

    ``checks`` carries the command results: docker (rc, version), disk (path -> free bytes),
    needs (list of {path, gib, what, var}), listening (ss output), engine_running (bool), time_sync
    (string or None), configured_nic (fleet_nic_name or None).
    """
    errors: list[str] = []
    warnings: list[str] = []
    if checks.get("docker_rc") != 0:
        errors.append(
            f"{host}: Docker Engine is not running (docker info rc {checks.get('docker_rc')}: "
            f"{str(checks.get('docker_out', ''))[:160]}); expected a running engine (start docker)"
        )
    if not npu or not npu.get("present"):
        errors.append(
            f"{host}: NPU tools missing (npu-smi / hccn_tool); expected the Ascend driver installed "
            "under /usr/local/Ascend (is this an Atlas node?)"
        )
        return {"errors": errors, "warnings": warnings, "nic": node_nic(net, plan["node_ip"])}
    want = plan["device_count"]
    if npu.get("device_count") != want:
        errors.append(
            f"{host}: {npu.get('device_count')} NPU devices (/dev/davinci*), expected {want} for "
            f"fleet_hw_kind {plan['hw_kind']}; fix fleet_hw_kind or the node's driver"
        )
    if npu.get("kind") and npu["kind"] != plan["hw_kind"]:
        errors.append(
            f"{host}: npu-smi reports chip {npu.get('chip')} ({npu['kind']}), but fleet_hw_kind is "
            f"{plan['hw_kind']}; set fleet_hw_kind: {npu['kind']} for {host}"
        )
    for problem in npu.get("problems", []):
        warnings.append(f"{host}: {problem}")
    if not npu.get("hccn_conf"):
        errors.append(
            f"{host}: /etc/hccn.conf missing; expected address_N/netmask_N for every device "
            "(Mooncake and HCCL read it: configure the device IPs with hccn_tool)"
        )
    else:
        for dev in npu.get("devices", []):
            if dev.get("conf_ip") is None:
                errors.append(f"{host}: device {dev['id']}: no address_{dev['id']} in /etc/hccn.conf")
            elif dev.get("ip") is None:
                errors.append(
                    f"{host}: device {dev['id']}: hccn_tool -i {dev['id']} -ip -g reports no address; "
                    f"expected {dev['conf_ip']} (from /etc/hccn.conf)"
                )
            elif dev["ip"] != dev["conf_ip"]:
                errors.append(
                    f"{host}: device {dev['id']}: /etc/hccn.conf address_{dev['id']}={dev['conf_ip']} "
                    f"but hccn_tool -ip -g says {dev['ip']} (a stale entry: KV transfers fail or "
                    "crawl); make them agree and restart"
                )
    nic = node_nic(net, plan["node_ip"])
    configured = checks.get("configured_nic")
    if nic is None:
        errors.append(
            f"{host}: node address {plan['node_ip']} is on none of its NICs "
            f"({', '.join(net.get('interfaces', []))}); fix ansible_host / fleet_node_ip"
        )
    elif configured and configured != nic:
        errors.append(
            f"{host}: fleet_nic_name is {configured} but {plan['node_ip']} is on {nic}; "
            f"set fleet_nic_name: {nic} (or remove it to derive it)"
        )
    for need in checks.get("needs") or []:
        free = (checks.get("disk") or {}).get(need["path"])
        if free is None:
            errors.append(f"{host}: cannot read free space of {need['path']}")
        elif free < need["gib"] * 2**30:
            errors.append(
                f"{host}: {need['path']} has {free / 2**30:.1f} GiB free, needs {need['gib']} GiB "
                f"for the {need['what']}; free space, or lower {need['var']}"
            )
    if not checks.get("engine_running"):
        busy = sorted(set(plan.get("bound_ports", [])) & listening_ports(checks.get("listening", "")))
        if busy:
            errors.append(
                f"{host}: ports {', '.join(map(str, busy))} are already in use; the engine binds "
                f"{', '.join(map(str, plan.get('bound_ports', [])))} (stop what holds them, or move "
                "fleet_vllm_start_port / fleet_kv_port_base / fleet_proxy_port)"
            )
    sync = checks.get("time_sync")
    if sync != "yes":
        warnings.append(
            f"{host}: clock synchronisation is {sync or 'unknown'} (timedatectl NTPSynchronized); "
            "skewed clocks make logs across nodes hard to read"
        )
    return {"errors": errors, "warnings": warnings, "nic": nic}


def tls_problems(npu_by_host: dict[str, dict[str, Any]]) -> list[str]:
    """The TLS switch must be the same on every device of every node."""
    seen: dict[str, list[str]] = {}
    for host, npu in sorted(npu_by_host.items()):
        for dev in (npu or {}).get("devices", []):
            seen.setdefault(str(dev.get("tls_switch")), []).append(f"{host}/{dev['id']}")
    if len(seen) <= 1:
        return []
    majority = max(seen, key=lambda k: len(seen[k]))
    odd = [f"{where} has {value}" for value, places in seen.items() if value != majority for where in places]
    return [
        f"TLS switch differs between devices: most are {majority}, but {', '.join(odd[:12])}"
        + (f" (and {len(odd) - 12} more)" if len(odd) > 12 else "")
        + "; set one value everywhere (hccn_tool -i N -tls -s enable 0|1)"
    ]


def peers_of(plan: dict[str, Any], host: str) -> list[str]:
    """Nodes ``host`` exchanges traffic with: P<->D, and the other members of its DP group."""
    me = plan["hosts"][host]
    out = []
    for other, entry in plan["hosts"].items():
        if other == host:
            continue
        same_group = entry["instance"] == me["instance"] and entry["role"] == me["role"]
        cross = {me["role"], entry["role"]} == {"prefill", "decode"}
        if same_group or cross:
            out.append(other)
    return out


def mesh_targets(plan: dict[str, Any], host: str, npu_by_host: dict[str, Any]) -> list[dict[str, Any]]:
    """Probes ``host`` runs: each local device to the same-index device of every peer.

    A2 pings the peer's device IP (-ping); A3 pings the peer's virtual NPU IP (-hccs_ping).
    """
    me = plan["hosts"][host]
    probes = []
    for peer in peers_of(plan, host):
        peer_devices = {d["id"]: d for d in (npu_by_host.get(peer) or {}).get("devices", [])}
        for dev in range(me["device_count"]):
            target = peer_devices.get(dev) or {}
            if me["hw_kind"] == "a3":
                address, method = target.get("vnic_ip") or target.get("conf_ip"), "hccs_ping"
            else:
                address, method = target.get("conf_ip"), "ping"
            probes.append({"device": dev, "peer": peer, "peer_device": dev, "address": address, "method": method})
    return probes


def link_problems(host: str, npu: dict[str, Any], health: dict[str, str]) -> list[dict[str, Any]]:
    """Rows for the failure table: a device whose link is not UP or whose health is not Success."""
    rows = []
    for dev in (npu or {}).get("devices", []):
        if dev.get("link") != "UP":
            rows.append(
                {
                    "node": host,
                    "device": dev["id"],
                    "peer": "-",
                    "check": "link",
                    "found": dev.get("link") or "unknown",
                    "expected": "UP",
                }
            )
        found = health.get(str(dev["id"]))
        if found is not None and found != "Success":
            rows.append(
                {
                    "node": host,
                    "device": dev["id"],
                    "peer": "-",
                    "check": "net_health",
                    "found": found,
                    "expected": "Success",
                }
            )
    return rows


def probe_problems(host: str, probes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the failure table: the peer probes of ``host`` that got no answer."""
    return [
        {
            "node": host,
            "device": p["device"],
            "peer": f"{p['peer']}/{p['peer_device']} ({p.get('address')})",
            "check": p["method"],
            "found": p.get("summary", "no answer"),
            "expected": "reply",
        }
        for p in probes
        if not p.get("ok")
    ]


def failure_table(rows: list[dict[str, Any]]) -> str:
    """One table for every failed check: node x device x peer."""
    if not rows:
        return ""
    cols = ["node", "device", "peer", "check", "found", "expected"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    line = "  ".join(c.ljust(widths[c]) for c in cols)
    out = [line, "  ".join("-" * widths[c] for c in cols)]
    for r in sorted(rows, key=lambda r: (r["node"], int(r["device"]), str(r["peer"]))):
        out.append("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
    return "\n".join(out)
