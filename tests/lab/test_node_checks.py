"""Node checks on the lab (marker ``lab``): what preflight sees on a real Atlas node.

- NPU faults injected with `labctl npu` (health, HBM of a 910B4, a busy device, old driver
  and firmware, lldp, netdetect, gateway) and a stranger on the engine's port: preflight
  names node, device (or port and pid) and the fix, and no container is started.
- A3: a prefill/decode pair in two super pods is said (npu-smi spod-info), busy chip 1 of
  an NPU is named by its logical device id.
- Re-runs on a small disk: with the lab's realistic sizes and size-limited filesystems
  (`labctl up --cache-size/--docker-size`), the first run is refused naming node, path,
  free and needed; once image and weights are in place the same disk passes.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import REPO, run_playbook, run_site
from tests.lab.conftest import Lab, lab_unavailable, labctl

pytestmark = pytest.mark.lab
A2 = "a2-single"


def preflight(topology: str) -> subprocess.CompletedProcess:
    """validate + preflight against a lab (the first two phases of site.yml)."""
    state = REPO / "lab" / ".state" / topology
    return run_playbook(
        "playbooks/validate.yml",
        "playbooks/preflight.yml",
        "-i",
        topology,
        "-i",
        str(state / "hosts.yml"),
        check=False,
        env={"ANSIBLE_CACHE_PLUGIN_CONNECTION": str(state / "facts")},
    )


def text(proc: subprocess.CompletedProcess) -> str:
    """The play output as one line: the callback folds long messages and doubles quotes."""
    return re.sub(r"\s+", " ", proc.stdout).replace("''", "'")


def containers(lab: Lab, host: str) -> list[str]:
    proc = lab.ssh(host, "docker ps -a --format '{{.Names}}'")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def containers_by_id(lab: Lab, host: str) -> list[str]:
    """Every container on the node with its id and start time (a new or restarted one differs)."""
    proc = lab.ssh(host, "docker ps -aq | xargs -r docker inspect --format '{{.Id}} {{.State.StartedAt}}'")
    assert proc.returncode == 0, proc.stderr
    return sorted(proc.stdout.split("\n"))


@pytest.fixture(scope="module")
def small_a2():
    """a2-single with a 76 MiB weights cache and a 450 MiB Docker data root (tmpfs)."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    labctl("down", A2)
    labctl("up", A2, "--cache-size", "76m", "--docker-size", "450m")
    try:
        yield Lab(A2)
    finally:
        labctl("down", A2, check=False)


def test_npu_faults_named_with_device_and_fix(small_a2):
    lab = small_a2
    for args in (
        ["health", "Alarm", "--device", "1"],
        ["busy", "--device", "2"],
        ["lldp", "--device", "3"],
        ["netdetect", "--device", "4"],
        ["gateway", "10.99.0.1", "--device", "5"],
        ["chip", "910B4"],
        ["firmware", "7.5.0.1.129"],
        ["driver", "24.1.rc2"],
    ):
        labctl("npu", A2, "node-0", *args)
    stranger = lab.ssh(
        "node-0", "setsid python3 -m http.server 8900 >/dev/null 2>&1 < /dev/null & echo $!; sleep 1"
    ).stdout.strip()
    try:
        proc = preflight(A2)
    finally:
        lab.ssh("node-0", f"kill {stranger}")
        labctl("npu", A2, "node-0", "clear")
    out = text(proc)
    assert proc.returncode != 0
    busy_pid = re.search(r"device 2 \(NPU 2 chip 0\) is busy: pid (\d+) \(python3 -c", out)
    assert busy_pid, out[-4000:]
    for expected in (
        "node-0: device 1 (NPU 1 chip 0, 910B4): npu-smi health is Alarm, expected OK; fix:",
        f"fix: stop that process (kill {busy_pid.group(1)}) before deploying",
        "node-0: device 3: hccn_tool -i 3 -lldp -g shows no switch port",
        "node-0: device 4: no netdetect address (hccn_tool -i 4 -netdetect -g)",
        "fix: hccn_tool -i 4 -netdetect -s address",
        "node-0: device 5: gateway 10.99.0.1 is not in the device's subnet",
        "node-0: device 0 (NPU 0 chip 0, 910B4): 32768 MB HBM, the recipe needs 64 GB per device",
        "node-0: NPU 0: firmware 7.5.0.1.129 is older than 7.8.0",
        "node-0: NPU driver 24.1.rc2 (/usr/local/Ascend/driver/version.info) is older than 25.5.0",
        f"node-0: port 8900 (API port of DP rank 0) is held by pid {stranger} (python3 -m http.server 8900)",
    ):
        assert expected in out, f"{expected!r} not in:\n{out[-5000:]}"
    # only the faulty devices are named
    assert not re.search(r"node-0: device [67](: | \(NPU [67] chip 0\) is busy| \(NPU . chip 0, 910B4\): npu-smi)", out)
    assert containers(lab, "node-0") == []
    # the switches are off again: the node passes (disk aside, checked below with room)
    out = text(preflight(A2))
    assert "npu-smi health" not in out and "is busy" not in out and "node-0: device" not in out


def test_rerun_on_small_disk_counts_only_what_is_missing(small_a2):
    lab = small_a2
    state = REPO / "lab" / ".state" / A2
    overlay = (state / "hosts.yml").read_text()
    # realistic needs for what the lab stores (64 MiB weights, ~215 MB image), not 1 GiB
    assert "preflight_min_free_gb_weights: 0.08" in overlay and "preflight_min_free_gb_image: 0.5" in overlay
    first = run_site(A2)
    out = text(first)
    assert first.returncode != 0
    assert re.search(r"node-0: /root/\.cache has 7\d\.\d MiB free, needs 81\.9 MiB: 81\.9 MiB for the weights", out), (
        out[-4000:]
    )
    assert re.search(
        r"node-0: /var/lib/docker has 4\d\d\.\d MiB free, needs 512\.0 MiB: 512\.0 MiB for the engine image", out
    )
    assert containers(lab, "node-0") == []
    # put image and weights in place (their own phases), then the same small disk passes
    run_playbook(
        "playbooks/validate.yml",
        "playbooks/image.yml",
        "playbooks/weights.yml",
        "-i",
        A2,
        "-i",
        str(state / "hosts.yml"),
        env={"ANSIBLE_CACHE_PLUGIN_CONNECTION": str(state / "facts")},
    )
    second = run_site(A2)
    assert second.returncode == 0, second.stdout[-4000:]
    assert "node-0: preflight passed" in second.stdout
    # and again with the engine up: its own ports and devices are not blamed
    third = run_site(A2)
    assert third.returncode == 0, third.stdout[-4000:]
    assert "node-0: preflight passed" in third.stdout


def test_a3_pair_in_two_super_pods_and_busy_chip(lab_a3):
    # The shared a3-1p1d lab may already serve (other modules leave it deployed): what
    # matters is that this run starts nothing, so compare the containers before and after.
    before = {host: containers_by_id(lab_a3, host) for host in ("prefill-0", "decode-0")}
    labctl("npu", "a3-1p1d", "decode-0", "superpod", "7")
    labctl("npu", "a3-1p1d", "prefill-0", "busy", "--device", "3")
    try:
        proc = preflight("a3-1p1d")
    finally:
        labctl("npu", "a3-1p1d", "decode-0", "clear")
        labctl("npu", "a3-1p1d", "prefill-0", "clear")
    out = text(proc)
    assert proc.returncode != 0
    assert (
        "WARNING the A3 nodes of this prefill/decode pair are not in one super pod "
        "(decode-0 in super pod 7, prefill-0 in super pod 0)" in out
    ), out[-4000:]
    assert re.search(r"prefill-0: device 3 \(NPU 1 chip 1\) is busy: pid \d+ \(python3 -c", out), out[-4000:]
    assert "decode-0: device" not in out
    assert {host: containers_by_id(lab_a3, host) for host in before} == before
