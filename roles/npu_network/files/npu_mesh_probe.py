#!/usr/bin/env python3
"""Probe this node's NPU network: net health of every device and the peer probes given.

Input (JSON, as the first argument or on stdin): {"devices": [0, 1, ...], "probes": [{"device", "peer",
"peer_device", "address", "method": "ping"|"hccs_ping"}, ...], "packets": 3}
Output (JSON): {"health": {"0": "Success", ...}, "probes": [{... "ok", "summary"}]}

All probes run at once (hccn_tool answers "busy" when a device is in use: retried), so a
mesh of any size costs about one probe round on each node.
"""

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HCCN_TOOL = "/usr/local/Ascend/driver/tools/hccn_tool"


def tool(args, tries=8):
    out = ""
    for attempt in range(tries):
        try:
            proc = subprocess.run([HCCN_TOOL, *args], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return 127, str(exc)
        out = (proc.stdout + proc.stderr).strip()
        if "busy" not in out.lower():
            return proc.returncode, out
        time.sleep(0.3 * (attempt + 1))
    return 1, out


def health(dev):
    _, out = tool(["-i", str(dev), "-net_health", "-g"])
    match = re.search(r"net health status:\s*(\S+)", out)
    return str(dev), match.group(1) if match else f"unreadable: {out[:80]}"


def probe(p, packets):
    if not p.get("address"):
        return {**p, "ok": False, "summary": "peer device has no address in its /etc/hccn.conf"}
    rc, out = tool(["-i", str(p["device"]), f"-{p['method']}", "-g", "address", p["address"], "pkt", str(packets)])
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    if p["method"] == "hccs_ping":
        ok = rc == 0 and "ping success" in out
    else:
        ok = rc == 0 and bool(match) and int(match.group(2)) > 0
    summary = match.group(0) if match else (out.splitlines() or ["no output"])[-1][:120]
    return {**p, "ok": ok, "summary": summary}


def main():
    job = json.loads(sys.argv[1]) if len(sys.argv) > 1 else json.load(sys.stdin)
    probes = job.get("probes", [])
    with ThreadPoolExecutor(max_workers=max(1, min(64, len(probes) + len(job["devices"])))) as pool:
        healths = list(pool.map(health, job["devices"]))
        results = list(pool.map(lambda p: probe(p, job.get("packets", 3)), probes))
    json.dump({"health": dict(healths), "probes": results}, sys.stdout)


if __name__ == "__main__":
    main()
