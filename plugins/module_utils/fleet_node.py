#!/usr/bin/env python3
"""Read-only probes of an Atlas node, shared by the ascend.fleet modules.

Also the preflight role's facts.d script (installed as npu.fact; ``ansible_local.npu`` in
later fact gathering): run as a program it prints ``npu_facts()`` as JSON. So it imports
nothing but the standard library.

npu_facts(): chip kind (a2/a3 from npu-smi), device count (/dev/davinciN), driver version
(version.info), every device's configured address (/etc/hccn.conf) and the address the
tool reports (hccn_tool -i N -ip -g), link state, TLS switch and, on A3, the virtual NPU
address (-vnic -g). Raw outputs for the checks in ascend_fleet/checks.py (parsed on the
controller, where they are unit-tested): `npu-smi info` (health, HBM, processes),
`npu-smi info -t board -i CARD` (firmware), A3 `npu-smi info -t spod-info -i CARD -c CHIP`,
and per device `hccn_tool -lldp/-netdetect/-gateway -g`. For every process npu-smi lists,
its command line and the container it runs in (from its cgroup), so our own engine is
not reported as a stranger. Never fails: what cannot be read is reported as null plus an
entry in "problems", so preflight can say exactly what is wrong.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

HCCN_TOOL = "/usr/local/Ascend/driver/tools/hccn_tool"
NPU_SMI = "/usr/local/bin/npu-smi"
HCCN_CONF = "/etc/hccn.conf"
VERSION_INFO = "/usr/local/Ascend/driver/version.info"


def _outer_ids():
    """Container ids already in pid 1's cgroup path: the system this runs on is itself a
    container (none on a bare-metal node), so they do not mark a process as containerised."""
    try:
        with open("/proc/1/cgroup", encoding="utf-8") as fh:
            return set(re.findall(r"[0-9a-f]{64}", fh.read()))
    except OSError:
        return set()


OUTER = _outer_ids()


def run(cmd, tries=5, timeout=30):
    """Run a tool; hccn_tool answers 'busy' when another call holds the device: retry."""
    for attempt in range(tries):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return 127, str(exc)
        out = (proc.stdout + proc.stderr).strip()
        if "busy" not in out.lower() or attempt == tries - 1:
            return proc.returncode, out
        time.sleep(0.2 * (attempt + 1))
    return 1, "busy"


def capture(cmd, timeout=60):
    """(returncode, stdout, stderr) of a command; 127 when it cannot run."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


def field(text, pattern):
    match = re.search(pattern, text)
    return match.group(1).strip() if match else None


def pid_owner(pid):
    """Command line and container id (from the cgroup path) of a process."""
    info = {"cmd": None, "container": None}
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            info["cmd"] = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as fh:
            ids = re.findall(r"(?:docker[-/])?([0-9a-f]{64})", fh.read())
        ids = [i for i in ids if i not in OUTER]
        info["container"] = ids[-1] if ids else None
    except OSError:
        pass
    return info


def npu_facts():
    """The NPU facts of this node (see the module docstring)."""
    facts = {"present": os.path.exists(HCCN_TOOL) and os.path.exists(NPU_SMI), "problems": []}
    devices = sorted(
        int(m.group(1)) for d in os.listdir("/dev") if (m := re.fullmatch(r"davinci(\d+)", d))
    )
    facts["device_ids"] = devices
    facts["device_count"] = len(devices)

    rc, out = run([NPU_SMI, "info"]) if os.path.exists(NPU_SMI) else (127, "npu-smi missing")
    if rc != 0:
        facts["problems"].append(f"npu-smi info failed (rc {rc}): {out[:200]}")
    facts["smi_info"] = out if rc == 0 else None
    facts["chip"] = None
    facts["kind"] = None
    if "910B" in out:
        facts["chip"], facts["kind"] = field(out, r"\b(910B\d*)\b") or "910B", "a2"
    elif "Ascend910" in out or "910_93" in out:
        facts["chip"], facts["kind"] = "910_9391", "a3"

    facts["driver_version"] = None
    facts["driver_compatible_fw"] = None
    try:
        with open(VERSION_INFO, encoding="utf-8") as fh:
            text = fh.read()
        facts["driver_version"] = field(text, r"(?m)^Version=(.*)$")
        facts["driver_compatible_fw"] = field(text, r"(?m)^compatible_version_fw=(.*)$")
    except OSError:
        facts["problems"].append(f"{VERSION_INFO} missing")

    # Cards (NPUs) and chips per card: A2 one device per card, A3 two (npu-smi -i takes the
    # card, -c the chip; hccn_tool -i the logical device id).
    chips = 2 if facts["kind"] == "a3" else 1
    cards = (len(devices) + chips - 1) // chips
    facts["boards"] = {}
    facts["spod"] = {}
    facts["process_owners"] = {}
    if rc == 0:
        for card in range(cards):
            _, board = run([NPU_SMI, "info", "-t", "board", "-i", str(card)])
            facts["boards"][str(card)] = board
        if facts["kind"] == "a3":
            for dev in devices:
                _, spod = run([NPU_SMI, "info", "-t", "spod-info", "-i", str(dev // chips), "-c", str(dev % chips)])
                facts["spod"][str(dev)] = spod
        for pid in re.findall(r"(?m)^\|\s*\d+\s+\d+\s*\|\s*(\d+)\s*\|", out):
            facts["process_owners"][pid] = pid_owner(pid)

    conf = {}
    facts["hccn_conf"] = os.path.exists(HCCN_CONF)
    if facts["hccn_conf"]:
        with open(HCCN_CONF, encoding="utf-8") as fh:
            for line in fh:
                if "=" in line:
                    key, value = line.strip().split("=", 1)
                    conf[key.strip()] = value.strip()

    rows = []
    for dev in devices:
        row = {
            "id": dev,
            "conf_ip": conf.get(f"address_{dev}"),
            "conf_netmask": conf.get(f"netmask_{dev}"),
            "conf_netdetect": conf.get(f"netdetect_{dev}"),
        }
        if os.path.exists(HCCN_TOOL):
            _, ip_out = run([HCCN_TOOL, "-i", str(dev), "-ip", "-g"])
            row["ip"] = field(ip_out, r"ipaddr:\s*(\S+)")
            _, link_out = run([HCCN_TOOL, "-i", str(dev), "-link", "-g"])
            row["link"] = field(link_out, r"link status:\s*(\S+)")
            _, tls_out = run([HCCN_TOOL, "-i", str(dev), "-tls", "-g"])
            row["tls_switch"] = field(tls_out, r"tls switch\[(\d+)\]")
            for what in ("lldp", "netdetect", "gateway"):
                _, row[what] = run([HCCN_TOOL, "-i", str(dev), f"-{what}", "-g"])
            if facts["kind"] == "a3":
                _, vnic_out = run([HCCN_TOOL, "-i", str(dev), "-vnic", "-g"])
                row["vnic_ip"] = field(vnic_out, r"(?:vnic ipaddr|ipaddr):\s*(\S+)")
        rows.append(row)
    facts["devices"] = rows
    return facts


# ---- preflight: disk, weights, image, own containers, listening sockets -----------------

MARKER = ".ascend-fleet-complete.json"  # written by the weights role (weights_tool.py)


def disk(path):
    """Free bytes and filesystem id of the nearest existing directory of path."""
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "/"
    st = os.statvfs(probe)
    return {"free": st.f_bavail * st.f_frsize, "fs": os.stat(probe).st_dev, "probe": probe}


def weights_state(directory, model, revision):
    """Complete (the weights role's marker for this model and revision, every listed file at
    its recorded size) and the bytes already there (a partial download)."""
    have = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                have += os.lstat(os.path.join(root, name)).st_size
    complete = False
    try:
        with open(os.path.join(directory, MARKER), encoding="utf-8") as fh:
            marker = json.load(fh)
        complete = (
            marker.get("model") == model
            and marker.get("revision") == revision
            and all(
                os.path.isfile(os.path.join(directory, rel))
                and os.path.getsize(os.path.join(directory, rel)) == meta.get("size")
                for rel, meta in marker.get("files", {}).items()
            )
        )
    except (OSError, ValueError, AttributeError):
        pass
    return {"present": complete, "have_bytes": have}


def node_probe(paths, model_dir, model, revision, image, containers):
    """What preflight needs to know of a node; reads, never changes."""
    out = {"disk": {p: disk(p) for p in paths}}
    out["weights"] = weights_state(model_dir, model, revision)
    rc, _, _ = capture(["docker", "image", "inspect", "--format", "{{.Id}}", image])
    out["image"] = {"present": rc == 0}
    out["own"] = {}
    for what, name in containers.items():
        rc, cid, _ = capture(["docker", "container", "inspect", "--format", "{{.Id}}", name])
        out["own"][what] = cid.strip() if rc == 0 else ""
    rc, ss, err = capture(["ss", "-Htlnp"])
    out["ss"] = ss if rc == 0 else ""
    out["ss_error"] = "" if rc == 0 else err.strip()[:200]
    out["owners"] = {pid: pid_owner(pid) for pid in sorted(set(re.findall(r"pid=(\d+)", ss)))}
    return out


# ---- NPU network: device health and peer probes, all at once ----------------------------


def net_health(dev):
    _, out = run([HCCN_TOOL, "-i", str(dev), "-net_health", "-g"], tries=8, timeout=60)
    match = re.search(r"net health status:\s*(\S+)", out)
    return str(dev), match.group(1) if match else f"unreadable: {out[:80]}"


def peer_probe(p, packets):
    if not p.get("address"):
        return {**p, "ok": False, "summary": "peer device has no address in its /etc/hccn.conf"}
    rc, out = run([HCCN_TOOL, "-i", str(p["device"]), f"-{p['method']}", "-g", "address", p["address"],
                   "pkt", str(packets)], tries=8, timeout=60)
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    if p["method"] == "hccs_ping":
        ok = rc == 0 and "ping success" in out
    else:
        ok = rc == 0 and bool(match) and int(match.group(2)) > 0
    summary = match.group(0) if match else (out.splitlines() or ["no output"])[-1][:120]
    return {**p, "ok": ok, "summary": summary}


def mesh_probe(devices, probes, packets):
    """Net health of every device and every peer probe, in parallel (hccn_tool answers
    "busy" when a device is in use: retried), so a mesh of any size costs about one probe
    round on each node."""
    with ThreadPoolExecutor(max_workers=max(1, min(64, len(probes) + len(devices)))) as pool:
        healths = list(pool.map(net_health, devices))
        results = list(pool.map(lambda p: peer_probe(p, packets), probes))
    return {"health": dict(healths), "probes": results}


if __name__ == "__main__":
    print(json.dumps(npu_facts()))
