"""Fixtures for the lab's infrastructure tests (marker `lab`).

`lab_a3` brings up the a3-1p1d lab (two Atlas 800 A3 stand-ins: prefill-0, decode-0) once
per test session with `lab/labctl up`, and takes it down at the end. The tests skip, with
the reason, where the lab cannot run (not root, Docker Engine or debootstrap missing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LABCTL = REPO / "lab" / "labctl"
STATE = REPO / "lab" / ".state"
TOPOLOGY = "a3-1p1d"


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the lab needs root (Docker, debootstrap)"
    for tool in ("docker", "dockerd", "debootstrap", "docker-registry", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (see .ci/run for the lab's packages)"
    return None


def labctl(*args: str, check: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run lab/labctl with this Python; assert success unless check=False."""
    proc = subprocess.run([sys.executable, str(LABCTL), *args], capture_output=True,
                          text=True, timeout=timeout, check=False)
    if check:
        output = f"{proc.stdout}\n{proc.stderr}"
        assert proc.returncode == 0, f"labctl {' '.join(args)} failed:\n{output}"
    return proc


class Lab:
    """A running lab topology: its lab.json plus helpers to run things on its nodes."""

    def __init__(self, topology: str):
        self.topology = topology
        self.state = STATE / topology
        self.data = json.loads((self.state / "lab.json").read_text())
        self.nodes = self.data["nodes"]

    def ssh_cmd(self, host: str, known_hosts: Path | None = None) -> list[str]:
        """ssh to a node as the toolkit would: lab key, lab known_hosts, checking on."""
        return ["ssh", "-i", str(self.state / "id_ed25519"),
                "-o", f"UserKnownHostsFile={known_hosts or self.state / 'known_hosts'}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=5", "-o", "ControlMaster=no",
                f"root@{self.nodes[host]['mgmt_ip']}"]

    def ssh(self, host: str, command: str, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*self.ssh_cmd(host), command], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def hccn(self, host: str, device: int, *args: str) -> subprocess.CompletedProcess:
        """hccn_tool -i DEVICE ARGS on a node, at the real path, over ssh."""
        tool = "/usr/local/Ascend/driver/tools/hccn_tool"
        return self.ssh(host, " ".join([tool, "-i", str(device), *args]))


# What a successful site.yml left serving, per topology, in this test session: the
# fingerprint of every container of every node (id, image, state, start time, restarts).
# A module that finds the same fingerprint (nothing restarted, stopped or replaced since)
# starts from that deployment instead of running site.yml again; a module that changes
# the deployment runs site.yml at its end (leave_serving) and records the new one.
_LEFT_SERVING: dict[str, str] = {}


def containers_fingerprint(topology: str) -> str | None:
    """Every container of every node of a running lab, or None if a node does not answer."""
    lab = Lab(topology)
    command = ("docker ps -aq --no-trunc | xargs -r docker inspect --format "
               "'{{.Name}} {{.Id}} {{.Image}} {{.State.Status}} {{.State.StartedAt}} {{.RestartCount}}'; "
               "docker images --no-trunc --format '{{.Repository}}:{{.Tag}} {{.ID}}'")
    with ThreadPoolExecutor(max_workers=len(lab.nodes)) as pool:
        procs = dict(zip(lab.nodes, pool.map(lambda host: lab.ssh(host, command, timeout=60), lab.nodes), strict=True))
    if any(proc.returncode != 0 for proc in procs.values()):
        return None
    return "\n".join(f"{host}: {line}" for host, proc in sorted(procs.items())
                     for line in sorted(proc.stdout.splitlines()))


def serving(topology: str, *extra: str) -> None:
    """The lab of the topology up (labctl up) and serving what site.yml deploys (with extra
    arguments): site.yml runs unless this session's last successful run left exactly the
    containers that run now."""
    from tests.conftest import run_site  # (tests.conftest imports nothing from here)

    labctl("up", topology)
    recorded = _LEFT_SERVING.pop(topology, None)
    if recorded is not None and recorded == containers_fingerprint(topology):
        _LEFT_SERVING[topology] = recorded
        return
    run_site(topology, *extra, check=True)
    record_serving(topology)


def leave_serving(topology: str, *extra: str) -> None:
    """At a module's end: site.yml again (whatever the tests changed), and the deployment it
    left recorded for the next module; nothing recorded if it failed."""
    from tests.conftest import run_site

    _LEFT_SERVING.pop(topology, None)
    if run_site(topology, *extra, check=False).returncode == 0:
        record_serving(topology)


def record_serving(topology: str) -> None:
    """What runs now is what a successful site.yml left (called right after one)."""
    _LEFT_SERVING[topology] = containers_fingerprint(topology) or ""


@pytest.fixture(scope="session")
def lab_a3() -> Lab:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    # --no-engine: the engine image is built and tested elsewhere (tests/lab/test_engine*).
    labctl("up", TOPOLOGY, "--no-engine")
    try:
        yield Lab(TOPOLOGY)
    finally:
        labctl("down", TOPOLOGY, check=False)
