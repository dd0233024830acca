"""What a node holds now, read in one call, and the record of the last completed run.

``observe`` reads, all at once: our containers (state, start time, image), the launch files'
checksums, whether the weights are complete, the NPU and fabric state (driver version,
/etc/hccn.conf, every device's address and link, npu-smi health) and every rank's and the
proxy's health. ``write_record`` keeps it (without the health) with the run's input digest,
in a root-only file written atomically. The decision is made on the controller
(ascend_fleet/converge.py).

Standard library and the other fleet module_utils only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.ascend.fleet.plugins.module_utils.fleet_node import (
    HCCN_CONF,
    HCCN_TOOL,
    NPU_SMI,
    VERSION_INFO,
    field,
    run,
    weights_state,
)
from ansible_collections.ascend.fleet.plugins.module_utils.fleet_status import (
    container_state,
    docker_inspect,
    http_status,
)

RECORD_VERSION = 1


def sha1_of(path):
    try:
        with open(path, "rb") as fh:
            return hashlib.sha1(fh.read()).hexdigest()  # a checksum, as the stat module's
    except OSError:
        return None


def container(name):
    state = container_state(name, docker_inspect(name, timeout=30))
    return {k: state.get(k) for k in ("state", "status", "started_at", "image")}


def device(dev, a3):
    _, ip_out = run([HCCN_TOOL, "-i", str(dev), "-ip", "-g"])
    _, link_out = run([HCCN_TOOL, "-i", str(dev), "-link", "-g"])
    row = {"ip": field(ip_out, r"ipaddr:\s*(\S+)"), "link": field(link_out, r"link status:\s*(\S+)")}
    if a3:
        _, vnic_out = run([HCCN_TOOL, "-i", str(dev), "-vnic", "-g"])
        row["vnic_ip"] = field(vnic_out, r"(?:vnic ipaddr|ipaddr):\s*(\S+)")
    return row


def npu_state(pool):
    """Driver version, /etc/hccn.conf, every device's address and link, the chips' health."""
    devices = sorted(int(m.group(1)) for d in os.listdir("/dev") if (m := re.fullmatch(r"davinci(\d+)", d)))
    rc, smi = run([NPU_SMI, "info"]) if os.path.exists(NPU_SMI) else (127, "")
    a3 = "Ascend910" in smi or "910_93" in smi
    # chip rows of the summary table: "| 0     910B3    | OK    | ..." -> health per NPU
    health = re.findall(r"(?m)^\|\s*\d+\s+[A-Za-z0-9_]+\s*\|\s*([A-Za-z]+)\s*\|", smi) if rc == 0 else None
    version = None
    with contextlib.suppress(OSError), open(VERSION_INFO, encoding="utf-8") as fh:
        version = field(fh.read(), r"(?m)^Version=(.*)$")
    rows = {}
    if os.path.exists(HCCN_TOOL):
        futures = {dev: pool.submit(device, dev, a3) for dev in devices}
        rows = {str(dev): fut.result() for dev, fut in futures.items()}
    return {
        "driver_version": version,
        "hccn_conf_sha1": sha1_of(HCCN_CONF),
        "health": health,
        "devices": rows,
    }


def observe(containers, files, weights, urls, timeout=5.0, optional=()):
    """The node's state now: observed (what a record keeps) and health (URL -> HTTP status).
    An optional container (one that runs on some node only, as the image cache) is part of
    the state only where it exists."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        c_fut = {name: pool.submit(container, name) for name in [*containers, *optional]}
        h_fut = {url: pool.submit(http_status, url, timeout, "") for url in urls}
        f_fut = {path: pool.submit(sha1_of, path) for path in files}
        w_fut = pool.submit(weights_state, weights["dir"], weights["model"], weights["revision"]) if weights else None
        npu = npu_state(pool)
        found = {name: fut.result() for name, fut in c_fut.items()}
        observed = {
            "containers": {name: c for name, c in found.items() if name in containers or c["state"] != "absent"},
            "files": {path: fut.result() for path, fut in f_fut.items()},
            "weights": w_fut.result()["present"] if w_fut else None,
            "npu": npu,
        }
        health = {url: fut.result() for url, fut in h_fut.items()}
    return observed, health


def read_record(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _kept(observed):
    # what a record keeps of a container: not the human status text (it holds the uptime)
    out = dict(observed)
    out["containers"] = {
        name: {k: v for k, v in c.items() if k != "status"} for name, c in observed["containers"].items()
    }
    return out


def write_record(path, inputs, observed, check_mode=False):
    """Keep the record (root only, written atomically); changed when its content differs."""
    record = {"version": RECORD_VERSION, "inputs": inputs, "observed": _kept(observed)}
    old = read_record(path)
    if old is not None:
        old.pop("recorded_at", None)
    if old == json.loads(json.dumps(record)):
        return False
    if check_mode:
        return True
    record["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".converged-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh, sort_keys=True, indent=1)
            fh.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True
