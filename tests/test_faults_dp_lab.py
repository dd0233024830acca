"""A node of a multi-node DP group lost while the group starts (marker `lab`), on the
a2-4p4d lab: decode-0..3 form one decode instance, DP32 over four nodes (8 ranks each,
decode-0 the DP master).

The decode instance is restarted with a slow stand-in start (600 s of start-up work) and
decode-2, a node in the middle of the group, is powered off while the serve wait watches
it. With vLLM the other three nodes would wait for their missing peer until the engine's
timeout; the serve wait must instead:
- on decode-2 itself: name it as stopped answering during the wait;
- on decode-0, -1 and -3: name decode-2 as the peer that does not answer, and stop their
  engines (no container left starting forever);
- never fall back to serve_health_timeout_s (3600 s here);
- leave the four prefill instances as they were;
- after `labctl node start`, converge with a site.yml re-run (the DP group forms again).

The module starts from the deployment the evaluation module left on this lab (or deploys
it) and takes the lab down at the end: it is the last user of a2-4p4d before Molecule.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.conftest import run_site
from tests.lab.conftest import lab_unavailable, labctl, serving
from tests.test_faults_lab import start_playbook, wait_until

pytestmark = pytest.mark.lab

TOPOLOGY = "a2-4p4d"
INVENTORY = ["-i", TOPOLOGY, "-i", f"lab/.state/{TOPOLOGY}/hosts.yml"]
DECODE = ["decode-0", "decode-1", "decode-2", "decode-3"]
PREFILL = ["prefill-0", "prefill-1", "prefill-2", "prefill-3"]
LOST = "decode-2"
ENGINE = "vllm-ascend"


def ssh(host: str, command: str) -> subprocess.CompletedProcess:
    return labctl("ssh", TOPOLOGY, host, command)


def engine_state(host: str) -> str:
    return ssh(host, f"docker inspect -f '{{{{.State.Status}}}} {{{{.State.StartedAt}}}}' {ENGINE}").stdout.strip()


@pytest.fixture(scope="module")
def fleet():
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    serving(TOPOLOGY)
    try:
        yield
    finally:
        labctl("node", "start", TOPOLOGY, LOST, check=False)
        labctl("down", TOPOLOGY, check=False)


def test_dp_group_node_lost_mid_start_is_named_by_its_peers_then_heals(fleet, tmp_path):
    prefill_before = {h: engine_state(h) for h in PREFILL}
    log = tmp_path / "restart.log"
    slow = json.dumps({"serve_extra_env": {"ASCEND_FLEET_LAB_INIT_SECONDS": "600"}})
    run = start_playbook("playbooks/restart.yml", log, "-e", "ops_restart_instances=decode-0", "-e", slow,
                         inventory=INVENTORY)
    try:
        wait_until("the wait on the decode group", lambda: "Wait for /health on every rank" in log.read_text(),
                   run, log, bound=600)
        labctl("node", "stop", TOPOLOGY, LOST)
        run.wait(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
    out = re.sub(r"\s+", " ", log.read_text()).replace("''", "'")
    try:
        assert run.returncode != 0, out[-3000:]
        assert "timed out: serve_health_timeout_s" not in out, out[-3000:]
        # The lost node itself: its round never came back.
        assert re.search(rf"node {LOST} \(198\.18\.\d+\.\d+\) stopped answering during the wait", out), out[-4000:]
        # Its three peers: each names decode-2 as the peer that does not answer.
        for host in DECODE:
            if host == LOST:
                continue
            where = rf"{host} \(198\.18\.\d+\.\d+\): container {ENGINE} did not become healthy \(instance decode-0\)"
            assert re.search(where, out), (host, out[-4000:])
        peer_says = rf"{LOST}: node {LOST} \(198\.18\.\d+\.\d+\) does not answer for \d+ s"
        assert re.search(peer_says, out), out[-4000:]
        summary = out.split("FAILURE SUMMARY", 1)[-1]
        assert "FAILURE SUMMARY" in out and LOST in summary and "What to do: " in summary, out[-3000:]
        # No engine of the group left starting; the prefill instances untouched.
        for host in DECODE:
            if host != LOST:
                assert engine_state(host).split()[0] == "exited", host
        assert {h: engine_state(h) for h in PREFILL} == prefill_before
    finally:
        labctl("node", "start", TOPOLOGY, LOST)
    healed = run_site(TOPOLOGY)
    assert healed.returncode == 0, healed.stdout[-4000:]
    assert "answered:" in healed.stdout
    assert all(engine_state(h).split()[0] == "running" for h in DECODE)

