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
    """Ports in LISTEN from ``ss -Htln`` (or ``-Htlnp``) output."""
    return set(listeners(ss_output))


def listeners(ss_output: str) -> dict[int, list[int]]:
    """Port -> pids holding it, from ``ss -Htlnp`` (no pids without ``-p`` or root)."""
    out: dict[int, list[int]] = {}
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            match = re.search(r":(\d+)$", fields[3])
            if match:
                pids = out.setdefault(int(match.group(1)), [])
                for pid in re.findall(r"pid=(\d+)", line):
                    if int(pid) not in pids:
                        pids.append(int(pid))
    return out


def human_bytes(n: float) -> str:
    """1.5 GiB, 82.0 MiB: sizes as people read them."""
    return f"{n / 2**30:.1f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"


def disk_problems(host: str, disk: dict[str, Any], needs: list[dict[str, Any]]) -> list[str]:
    """Free space against what is still missing, per filesystem.

    Each need is ``{path, gib, what, var, present, have_bytes}``: ``gib`` the full size
    (``preflight_min_free_gb_*``), ``present`` true when the thing is already complete (the
    image with the pinned reference, the weights with their completion marker): nothing is
    needed for it; otherwise the bytes already there (a partial download) count towards
    ``gib``. Needs on one filesystem (same ``fs`` id, else same path) add up.
    """
    errors = []
    by_fs: dict[str, dict[str, Any]] = {}
    for need in needs or []:
        entry = disk.get(need["path"])
        if entry is None:
            errors.append(f"{host}: cannot read free space of {need['path']} (for the {need['what']})")
            continue
        free, fs = (
            (entry["free"], str(entry.get("fs", need["path"]))) if isinstance(entry, dict) else (entry, need["path"])
        )
        full = float(need["gib"]) * 2**30
        missing = 0.0 if need.get("present") else max(0.0, full - float(need.get("have_bytes") or 0))
        group = by_fs.setdefault(fs, {"free": free, "path": need["path"], "needs": []})
        group["needs"].append((need, missing, full))
    for group in by_fs.values():
        total = sum(m for _, m, _ in group["needs"])
        if group["free"] >= total:
            continue
        parts = []
        for need, missing, full in group["needs"]:
            if missing == 0:
                continue
            have = float(need.get("have_bytes") or 0)
            part = f"{human_bytes(missing)} for the {need['what']}"
            if have and not need.get("present"):
                part += f" ({human_bytes(full)} less {human_bytes(have)} already there)"
            parts.append(part + f" ({need['var']})")
        paths = sorted({n["path"] for n, _, _ in group["needs"]})
        errors.append(
            f"{host}: {' and '.join(paths)} has {human_bytes(group['free'])} free, needs "
            f"{human_bytes(total)}: {'; '.join(parts)}; free space there, or lower the variable if the "
            "real size is smaller"
        )
    return errors


def port_problems(
    host: str, plan: dict[str, Any], listening: str, owners: dict[str, Any], own: dict[str, str], engine_running: bool
) -> list[str]:
    """Ports this node must bind that something else holds, naming the holder.

    ``owners`` maps pid -> {cmd, container} (the container id from the pid's cgroup);
    ``own`` maps "engine"/"proxy" -> our container's id. A port held by our own engine
    (for an engine port) or our own proxy (for the proxy port) is fine: a re-run.
    """
    purposes = {int(k): v for k, v in (plan.get("port_purposes") or {}).items()}
    held = listeners(listening)
    errors = []
    for port in sorted(set(plan.get("bound_ports", [])) & set(held)):
        purpose = purposes.get(port, "engine port")
        ours = "proxy" if purpose.startswith("proxy") else "engine"
        pids = held[port]
        if not pids:
            if engine_running:
                continue  # no owner information: assume our running engine holds it
            errors.append(
                f"{host}: port {port} ({purpose}) is already in use by a process ss cannot name "
                f"(run ss -ltnp as root on {host}); stop it or move the port"
            )
            continue
        strangers = []
        for pid in pids:
            info = owners.get(str(pid)) or {}
            container = info.get("container") or ""
            if container and container == (own.get(ours) or None):
                continue
            who = f"pid {pid} ({' '.join((info.get('cmd') or '?').split())[:80]})"
            for name, cid in own.items():
                if container and cid and container == cid:
                    who += f", our {name} container"
            if container and "our " not in who:
                who += f", container {container[:12]}"
            strangers.append(who)
        if strangers:
            errors.append(
                f"{host}: port {port} ({purpose}) is held by {'; '.join(strangers)}; stop it, or move "
                + _port_var(purpose)
            )
    return errors


def _port_var(purpose: str) -> str:
    if purpose.startswith("proxy"):
        return "fleet_proxy_port"
    if purpose.startswith("kv"):
        return "fleet_kv_port / fleet_kv_port_base"
    if purpose.startswith("DP RPC"):
        return "fleet_dp_rpc_port"
    return "fleet_vllm_start_port (the API ports)"


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
    errors += disk_problems(host, checks.get("disk") or {}, checks.get("needs") or [])
    errors += port_problems(
        host,
        plan,
        checks.get("listening", ""),
        checks.get("owners") or {},
        checks.get("own_containers") or {},
        bool(checks.get("engine_running")),
    )
    hw = hardware_problems(host, plan, npu, checks.get("own_containers") or {})
    errors += hw["errors"]
    warnings += hw["warnings"]
    sync = checks.get("time_sync")
    if sync != "yes":
        warnings.append(
            f"{host}: clock synchronisation is {sync or 'unknown'} (timedatectl NTPSynchronized); "
            "skewed clocks make logs across nodes hard to read"
        )
    return {"errors": errors, "warnings": warnings, "nic": nic}


# ---------------------------------------------------------------------------------------
# NPU hardware: parsers of npu-smi / hccn_tool output and the decisions on them.

_HEALTH_OK = "OK"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_npu_smi_info(text: str) -> dict[str, Any]:
    """``npu-smi info`` (the summary table) as data.

    Returns ``{"version", "chips": [{card, chip, device, name, health, hbm_used_mb,
    hbm_total_mb}], "processes": [{card, chip, device, pid, name, memory_mb}]}``. A2 boards
    have one chip per NPU (``Chip`` column 0, device = NPU id); A3 boards two, with the
    logical device id in the ``Phy-ID`` column. Process rows give NPU and chip-in-NPU.
    """
    out: dict[str, Any] = {"version": None, "chips": [], "processes": []}
    match = re.search(r"Version:\s*(\S+)", text)
    out["version"] = match.group(1) if match else None
    pending = None
    in_processes = False
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = _cells(line)
        if "Process id" in line:
            in_processes = True
            continue
        if in_processes:
            if len(cells) >= 4 and re.fullmatch(r"\d+\s+\d+", cells[0]) and cells[1].isdigit():
                card, chip = (int(x) for x in cells[0].split())
                mem = re.match(r"\d+", cells[3])
                out["processes"].append(
                    {
                        "card": card,
                        "chip": chip,
                        "pid": int(cells[1]),
                        "name": cells[2],
                        "memory_mb": int(mem.group(0)) if mem else None,
                    }
                )
            continue
        if len(cells) < 3:
            continue
        head = re.fullmatch(r"(\d+)\s+(\S+)", cells[0])
        if head and not head.group(2).isdigit() and re.fullmatch(r"[A-Za-z]+", cells[1] or "-"):
            pending = {"card": int(head.group(1)), "name": head.group(2), "health": cells[1]}
            continue
        chip = re.fullmatch(r"(\d+)(?:\s+(\d+))?", cells[0])
        if pending and chip and re.match(r"[0-9A-Fa-f]{4}:", cells[1]):
            hbm = re.findall(r"(\d+)\s*/\s*(\d+)", cells[2])
            used, total = (int(hbm[-1][0]), int(hbm[-1][1])) if hbm else (None, None)
            phy = chip.group(2)
            out["chips"].append(
                {
                    **pending,
                    "chip": int(chip.group(1)),
                    "phy_id": int(phy) if phy is not None else None,
                    "hbm_used_mb": used,
                    "hbm_total_mb": total,
                }
            )
            pending = None
    per_card: dict[int, int] = {}
    for c in out["chips"]:
        per_card[c["card"]] = per_card.get(c["card"], 0) + 1
    chips_per_card = max(per_card.values(), default=1)
    for c in out["chips"]:
        c["device"] = c["phy_id"] if c["phy_id"] is not None else c["card"] * chips_per_card + c["chip"]
    by_pos = {(c["card"], c["chip"]): c["device"] for c in out["chips"]}
    for p in out["processes"]:
        p["device"] = by_pos.get((p["card"], p["chip"]), p["card"] * chips_per_card + p["chip"])
    return out


def parse_colon_fields(text: str) -> dict[str, str]:
    """``Name : value`` lines (npu-smi info -t board / spod-info / health) as a dict."""
    out = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            if key.strip():
                out[key.strip()] = value.strip()
    return out


def version_key(version: str) -> list[tuple[int, int]]:
    """Order Ascend versions: 25.2.0 < 25.5.rc1 < 25.5.0 < 25.5.1; 7.7.0.6.236 by parts."""
    key = []
    for part in re.split(r"[.\-]", str(version).strip().lower()):
        if part.isdigit():
            key.append((1, int(part)))
        elif (m := re.fullmatch(r"(?:rc|t|b|alpha|beta)(\d*)", part)) is not None:
            key.append((0, int(m.group(1) or 0)))
        elif (m := re.match(r"(\d+)", part)) is not None:
            key.append((1, int(m.group(1))))
        else:
            key.append((0, 0))
    return key


def version_at_least(found: str, minimum: str) -> bool:
    a, b = version_key(found), version_key(minimum)
    width = max(len(a), len(b))
    return a + [(1, 0)] * (width - len(a)) >= b + [(1, 0)] * (width - len(b))


def _fw_range(compatible: str | None) -> tuple[str, str] | None:
    """``[7.0.0,7.7.99]`` (version.info compatible_version_fw) as (low, high)."""
    match = re.fullmatch(r"\[\s*([^,\]]+)\s*,\s*([^\]]+)\s*\]", (compatible or "").strip())
    return (match.group(1), match.group(2)) if match else None


def hccn_field(text: str | None, pattern: str) -> str | None:
    match = re.search(pattern, text or "")
    return match.group(1).strip() if match else None


def _in_subnet(address: str, ip: str, netmask: str) -> bool:
    import ipaddress

    try:
        net = ipaddress.ip_network(f"{ip}/{netmask}", strict=False)
        return ipaddress.ip_address(address) in net
    except ValueError:
        return False


def hardware_problems(
    host: str, plan: dict[str, Any], npu: dict[str, Any], own: dict[str, str] | None = None
) -> dict[str, list[str]]:
    """Driver/firmware, HBM, health, busy devices and the per-device network settings.

    ``npu`` is the facts script's report (raw outputs in ``smi_info``, ``boards``,
    ``devices[].lldp/netdetect/gateway``); ``plan["hardware"]`` the recipe's hardware
    block for this node's kind (``hbm_gb``, ``driver_min``, ``firmware_min``).
    """
    errors: list[str] = []
    warnings: list[str] = []
    hw = plan.get("hardware") or {}
    own_ids = {v for v in (own or {}).values() if v}
    kind = plan.get("hw_kind")

    driver = npu.get("driver_version")
    if hw.get("driver_min") and driver and not version_at_least(driver, hw["driver_min"]):
        errors.append(
            f"{host}: NPU driver {driver} (/usr/local/Ascend/driver/version.info) is older than "
            f"{hw['driver_min']}, the minimum for this recipe on {kind}; fix: install Ascend HDK "
            f"driver >= {hw['driver_min']} (and matching firmware), then reboot"
        )
    fw_range = _fw_range(npu.get("driver_compatible_fw"))
    for card, raw in sorted((npu.get("boards") or {}).items(), key=lambda kv: int(kv[0])):
        firmware = parse_colon_fields(raw or "").get("Firmware Version")
        if not firmware:
            errors.append(f"{host}: NPU {card}: npu-smi info -t board -i {card} reports no firmware version")
            continue
        if hw.get("firmware_min") and not version_at_least(firmware, hw["firmware_min"]):
            errors.append(
                f"{host}: NPU {card}: firmware {firmware} is older than {hw['firmware_min']}, the "
                f"minimum for this recipe on {kind}; fix: upgrade the NPU firmware (Ascend HDK) on {host}"
            )
        elif fw_range and not (version_at_least(firmware, fw_range[0]) and version_at_least(fw_range[1], firmware)):
            errors.append(
                f"{host}: NPU {card}: firmware {firmware} is outside the range the driver {driver} "
                f"supports ({fw_range[0]}..{fw_range[1]}, compatible_version_fw in version.info); "
                "fix: install the firmware of the same Ascend HDK release as the driver"
            )

    smi = parse_npu_smi_info(npu.get("smi_info") or "")
    need_mb = int(float(hw["hbm_gb"]) * 1024) if hw.get("hbm_gb") else None
    for chip in smi["chips"]:
        where = f"{host}: device {chip['device']} (NPU {chip['card']} chip {chip['chip']}, {chip['name']})"
        health = chip["health"]
        if health != _HEALTH_OK:
            text = (
                f"{where}: npu-smi health is {health}, expected OK; fix: read "
                f"`npu-smi info -t health -i {chip['card']} -c {chip['chip']}` for the error code, "
                f"clear it or reset the chip (npu-smi set -t reset -i {chip['card']} -c {chip['chip']}); "
                "replace the card if it persists"
            )
            (warnings if health == "Warning" else errors).append(text)
        if need_mb and chip["hbm_total_mb"] is not None and chip["hbm_total_mb"] < need_mb * 0.98:
            errors.append(
                f"{where}: {chip['hbm_total_mb']} MB HBM, the recipe needs {hw['hbm_gb']} GB per "
                f"device ({hw.get('name', kind)}); fix: deploy on nodes with {hw['hbm_gb']} GB "
                "devices, or choose a recipe/profile sized for this card"
            )
    owners = npu.get("process_owners") or {}
    for proc in smi["processes"]:
        info = owners.get(str(proc["pid"])) or {}
        if info.get("container") and info["container"] in own_ids:
            continue  # our own engine on a re-run
        cmd = " ".join((info.get("cmd") or proc["name"]).split())[:80]
        errors.append(
            f"{host}: device {proc['device']} (NPU {proc['card']} chip {proc['chip']}) is busy: pid "
            f"{proc['pid']} ({cmd}) holds {proc['memory_mb']} MB; fix: stop that process "
            f"(kill {proc['pid']}"
            + (f", or docker stop {info['container'][:12]}" if info.get("container") else "")
            + ") before deploying"
        )

    for dev in npu.get("devices", []):
        d = dev["id"]
        # A link that is DOWN sends no LLDP either: the NPU-network phase names it in its
        # table (node x device x peer), so no second, vaguer message here.
        link_down = dev.get("link") not in (None, "UP")
        if "lldp" in dev and not link_down and not hccn_field(dev.get("lldp"), r"Ifname:\s*(\S+)"):
            errors.append(
                f"{host}: device {d}: hccn_tool -i {d} -lldp -g shows no switch port "
                f"({(dev.get('lldp') or 'no output').strip().splitlines()[0][:100]}); fix: check the "
                "device's optical module and cable and that LLDP is enabled on the switch port"
            )
        if "netdetect" in dev:
            detect = hccn_field(dev.get("netdetect"), r"netdetect address\s*:\s*(\d+\.\d+\.\d+\.\d+)")
            if not detect:
                errors.append(
                    f"{host}: device {d}: no netdetect address (hccn_tool -i {d} -netdetect -g), so "
                    f"net_health cannot be measured; fix: hccn_tool -i {d} -netdetect -s address "
                    "<the switch gateway of this device's subnet>"
                )
            elif dev.get("conf_netdetect") and dev["conf_netdetect"] != detect:
                errors.append(
                    f"{host}: device {d}: netdetect address {detect} but /etc/hccn.conf has "
                    f"netdetect_{d}={dev['conf_netdetect']}; fix: make them agree "
                    f"(hccn_tool -i {d} -netdetect -s address {dev['conf_netdetect']})"
                )
        if "gateway" in dev:
            gateway = hccn_field(dev.get("gateway"), r"gateway\s*:\s*(\d+\.\d+\.\d+\.\d+)")
            mask = dev.get("conf_netmask") or "255.255.255.0"
            if not gateway:
                errors.append(
                    f"{host}: device {d}: no gateway (hccn_tool -i {d} -gateway -g); cross-subnet RoCE "
                    f"traffic has no route; fix: hccn_tool -i {d} -gateway -s gateway <gateway of "
                    "the device subnet>"
                )
            elif dev.get("ip") and not _in_subnet(gateway, dev["ip"], mask):
                errors.append(
                    f"{host}: device {d}: gateway {gateway} is not in the device's subnet "
                    f"{dev['ip']}/{mask}; fix: hccn_tool -i {d} -gateway -s gateway <an address in "
                    "that subnet>"
                )
    return {"errors": errors, "warnings": warnings}


def superpod_of(npu: dict[str, Any]) -> dict[str, Any]:
    """Super pod ids an A3 node reports (npu-smi info -t spod-info), per device."""
    ids = {}
    for dev, raw in (npu.get("spod") or {}).items():
        value = parse_colon_fields(raw or "").get("Super Pod ID")
        ids[int(dev)] = value
    return ids


def superpod_problems(plan: dict[str, Any], npu_by_host: dict[str, Any]) -> dict[str, list[str]]:
    """A3 nodes of one PD pair must sit in one super pod (HCCS / hccs_ping across them).

    Errors: an A3 node whose spod-info cannot be read, or whose devices disagree. Warning
    (said, not refused): the A3 nodes of prefill and decode are in different super pods.
    """
    errors: list[str] = []
    warnings: list[str] = []
    pods: dict[str, str] = {}
    for host, entry in sorted(plan.get("hosts", {}).items()):
        if entry.get("hw_kind") != "a3" or host not in npu_by_host:
            continue
        ids = superpod_of(npu_by_host[host] or {})
        missing = sorted(d for d, v in ids.items() if v in (None, ""))
        if not ids or missing:
            errors.append(
                f"{host}: npu-smi info -t spod-info gives no Super Pod ID"
                + (f" for devices {', '.join(map(str, missing))}" if missing else "")
                + "; fix: update the NPU driver/firmware so spod-info works (A3 super pod)"
            )
            continue
        values = sorted(set(ids.values()))
        if len(values) > 1:
            errors.append(
                f"{host}: devices report different super pods ({', '.join(values)}); fix: check the "
                "super pod configuration of this server"
            )
            continue
        pods[host] = values[0]
    roles = {h: e.get("role") for h, e in plan.get("hosts", {}).items()}
    if {roles[h] for h in pods} >= {"prefill", "decode"} and len(set(pods.values())) > 1:
        listing = ", ".join(f"{h} in super pod {p}" for h, p in sorted(pods.items()))
        warnings.append(
            f"the A3 nodes of this prefill/decode pair are not in one super pod ({listing}); KV "
            "transfer between them goes over RoCE, not HCCS, and hccs_ping probes across super "
            "pods fail: put P and D in one super pod for the tutorial's numbers"
        )
    return {"errors": errors, "warnings": warnings}


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
