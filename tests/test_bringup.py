"""Bring-up failure modes on the lab (marker ``lab``): what users hit on real clusters.

- One node's fabric link is down: site.yml fails in the NPU-network phase, naming that
  node and device, and no engine container was started anywhere.
- The hub drops the connection mid-file: the run still ends with verified weights (the
  real modelscope client resumes) and a working endpoint.
- Without a shared cache the other nodes copy the verified weights from the downloader.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import pytest

from tests.conftest import REPO, run_site
from tests.lab.conftest import Lab, lab_unavailable, labctl

pytestmark = pytest.mark.lab
TOPOLOGY = "a3-1p1d"
HUB = "http://198.18.0.1:8081"


def site(*extra: str, check: bool = False) -> subprocess.CompletedProcess:
    return run_site(TOPOLOGY, *extra, check=check)


def hub(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(REPO / "lab" / "hub" / "faults.py"), "--hub", HUB, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return json.loads(proc.stdout)


def containers(lab: Lab, host: str) -> list[str]:
    proc = lab.ssh(host, "docker ps -a --format '{{.Names}}'")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.fixture(scope="module")
def fresh_lab():
    """A freshly created a3-1p1d lab: no containers, empty shared weights cache."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    labctl("down", TOPOLOGY)
    labctl("up", TOPOLOGY)
    lab = Lab(TOPOLOGY)
    try:
        yield lab
    finally:
        labctl("link", "up", TOPOLOGY, "decode-0", check=False)
        hub("clear")


def test_fabric_link_down_stops_before_any_container(fresh_lab):
    labctl("link", "down", TOPOLOGY, "decode-0", "--device", "3")
    try:
        proc = site()
    finally:
        labctl("link", "up", TOPOLOGY, "decode-0", "--device", "3")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "NPU network check failed" in out and "no container was started" in out
    # the table names the node and the device: its own link, and the peer's probes to it
    assert re.search(r"decode-0\s+3\s+-\s+link\s+DOWN\s+UP", out), out[-3000:]
    assert re.search(r"prefill-0\s+3\s+decode-0/3 \(\S+\)\s+hccs_ping\s+3 packets transmitted, 0 received", out), out[
        -3000:
    ]
    assert not re.search(r"decode-0\s+4\s", out), "a healthy device was reported"
    assert "PLAY [Pull the engine image" not in out
    for host in ("prefill-0", "decode-0"):
        assert containers(fresh_lab, host) == []


def test_hub_drop_mid_file_still_ends_with_verified_weights(fresh_lab):
    hub("reset")
    hub("drop", "--times", "1")
    proc = site(check=True)
    out = proc.stdout
    assert "answered:" in out and "failed=0" in out
    entries = hub("log")["requests"]
    dropped = [e for e in entries if e.get("dropped")]
    resumed = [e for e in entries if (e.get("range") or "").startswith("bytes=") and e["range"] != "bytes=0-"]
    assert dropped, "the hub dropped no connection"
    assert resumed, "the client did not resume with a Range request"
    assert all(e["status"] in (200, 206) for e in resumed)
    for host in ("prefill-0", "decode-0"):
        assert verify_weights(fresh_lab, host)["status"] == "complete"


def verify_weights(lab: Lab, host: str) -> dict:
    """Run the weights helper's full verification (sizes and sha256 against the hub) on a node."""
    tool = (REPO / "plugins" / "module_utils" / "fleet_weights.py").read_text()
    model = "/root/.cache/modelscope/hub/models/vllm-ascend/DeepSeek-V4-Flash-w8a8-mtp"
    proc = subprocess.run(
        [
            *lab.ssh_cmd(host),
            "python3",
            "-",
            "verify",
            "--dir",
            model,
            "--endpoint",
            HUB,
            "--model",
            "Eco-Tech/DeepSeek-V4-Flash-w8a8-mtp",
        ],
        input=tool,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_private_caches_get_one_download_and_peer_copies(fresh_lab):
    labctl("down", TOPOLOGY)
    labctl("up", TOPOLOGY, "--private-cache")
    try:
        lab = Lab(TOPOLOGY)
        hub("reset")
        proc = site("-e", '{"weights_shared_cache": false}', check=True)
        assert "answered:" in proc.stdout
        shards = Counter(e["file"] for e in hub("log")["requests"] if (e.get("file") or "").endswith(".safetensors"))
        assert shards and set(shards.values()) == {1}, f"each shard once from the hub, got {shards}"
        for host in ("prefill-0", "decode-0"):
            assert verify_weights(lab, host)["status"] == "complete"
        # a second run finds complete weights everywhere: nothing is fetched again
        hub("reset")
        again = site("-e", '{"weights_shared_cache": false}', check=True)
        assert re.search(r"prefill-0\s*:\s*ok=\d+\s+changed=0", again.stdout)
        assert not [e for e in hub("log")["requests"] if e.get("file")]
    finally:
        labctl("down", TOPOLOGY)
        labctl("up", TOPOLOGY)
