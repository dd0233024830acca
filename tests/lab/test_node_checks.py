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

import json
import re
import subprocess
import urllib.request

import pytest

from tests.conftest import REPO, run_playbook, run_site
from tests.lab.conftest import Lab, lab_unavailable, labctl

pytestmark = pytest.mark.lab
A2 = "a2-single"


def preflight(topology: str) -> subprocess.CompletedProcess:
    """validate + preflight against a lab (the first two phases of site.yml)."""
    state = REPO / "lab" / ".state" / topology
    return run_playbook(
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
        "playbooks/phases/image.yml",
        "playbooks/phases/weights.yml",
        "-i",
        A2,
        "-i",
        str(state / "hosts.yml"),
        env={"ANSIBLE_CACHE_PLUGIN_CONNECTION": str(state / "facts")},
    )
    second = run_site(A2)
    assert second.returncode == 0, second.stdout[-4000:]
    assert "node-0: preflight passed" in second.stdout
    # and again with the engine up: its own ports and devices are not blamed (every phase:
    # a converged fleet would skip preflight)
    third = run_site(A2, "-e", "converge_fast=false")
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


def test_weights_lock_wait_then_disk_full_during_download_then_resumes(small_a2):
    """The weights phase on the small cache (its own playbook: the space was there at
    preflight, another process filled it since): a download of another run holding the
    weights lock is waited for a bounded time with progress lines, then named; the cache
    filling up mid-download is said as disk full with no corrupt file left; once space is
    freed the re-run completes."""
    lab = small_a2
    state = REPO / "lab" / ".state" / A2
    marker = lab.ssh("node-0", "find /root/.cache -name .ascend-fleet-complete.json -print -quit").stdout.strip()
    model_dir = marker.rsplit("/", 1)[0]
    assert model_dir.startswith("/root/.cache/"), model_dir
    model = json.loads(lab.ssh("node-0", f"cat {model_dir}/.ascend-fleet-complete.json").stdout)["model"]

    def weights(*extra: str) -> subprocess.CompletedProcess:
        return run_playbook("playbooks/validate.yml", "playbooks/phases/image.yml", "playbooks/phases/weights.yml",
                            "-i", A2, "-i",
                            str(state / "hosts.yml"), *extra, check=False,
                            env={"ANSIBLE_CACHE_PLUGIN_CONNECTION": str(state / "facts")})

    listing_url = (f"http://198.18.0.1:8081/api/v1/models/{model}/repo/files?Revision=master&Recursive=True")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(listing_url, timeout=30) as resp:
        hub = {f["Path"]: f for f in json.load(resp)["Data"]["Files"] if f.get("Type") != "tree"}
    lab.ssh("node-0", f"rm -rf {model_dir}")
    # Another download of this cache holds the weights lock (the toolkit's own helper).
    tool = (REPO / "plugins" / "module_utils" / "fleet_weights.py").read_text()
    subprocess.run([*lab.ssh_cmd("node-0"), "cat > /root/other-weights-tool.py"], input=tool, text=True, check=True)
    holder = lab.ssh("node-0", "setsid python3 /root/other-weights-tool.py ensure --dir /root/other-model "
                               "--endpoint http://198.18.0.1:8081 --model " + model + " --lock "
                               "/root/.cache/.ascend-fleet-weights.lock -- sleep 600 >/dev/null 2>&1 < /dev/null "
                               "& echo $!; sleep 2").stdout.strip()
    try:
        waited = weights("-e", "weights_lock_wait_s=6", "-e", "weights_lock_poll_s=2")
    finally:
        lab.ssh("node-0", f"kill {holder}; pkill -f 'sleep 600'; rm -rf /root/other-weights-tool.py /root/other-model")
    out = text(waited)
    assert waited.returncode != 0
    assert "FAILED - RETRYING: [node-0]: Wait while another download holds the weights lock" in out, out[-4000:]
    assert re.search(rf"node-0: weights lock /root/\.cache/\.ascend-fleet-weights\.lock is held by pid {holder} "
                     rf"on \S+ \(download of {re.escape(model)}\) since [\d-]+ [\d:]+ UTC; still held after 6 s "
                     r"\(weights_lock_wait_s\)", out), out[-4000:]
    # The cache fills up (another process) and the download hits it.
    free = int(lab.ssh("node-0", "df --output=avail -B1 /root/.cache | tail -1").stdout)
    lab.ssh("node-0", f"head -c {free - 24 * 2**20} /dev/zero > /root/.cache/filler")
    try:
        full = weights()
        present = lab.ssh("node-0", f"cd {model_dir} 2>/dev/null && find . -type f ! -name '.*' -printf '%P\\n' "
                                    "| xargs -r sha256sum").stdout
    finally:
        lab.ssh("node-0", "rm -f /root/.cache/filler")
    out = text(full)
    assert full.returncode != 0
    assert "disk full" in out and "node-0" in out, out[-4000:]
    # No corrupt file where a good one is expected: a file under a listed name is the hub's;
    # the client's partial download (NAME.incomplete) is kept to resume from.
    for line in present.splitlines():
        digest, rel = line.split(maxsplit=1)
        if rel.endswith(".incomplete"):
            assert rel.removesuffix(".incomplete") in hub, rel
            continue
        assert rel in hub and hub[rel].get("Sha256") in (None, digest), f"{rel} left corrupt after the disk filled"
    # Space freed: the re-run completes and verifies.
    again = weights()
    assert again.returncode == 0, text(again)[-4000:]
    assert lab.ssh("node-0", f"test -f {model_dir}/.ascend-fleet-complete.json").returncode == 0
    assert lab.ssh("node-0", f"find {model_dir} -name '*.incomplete'").stdout.strip() == ""
