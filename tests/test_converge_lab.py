"""Converge in one probe, on the a3-1p1d lab (marker ``lab``).

- A re-run of site.yml on a fleet that holds what the last completed run left probes every
  node once, says it is converged, skips preflight, NPU network, image, weights, serve and
  proxy as a whole, still verifies the answer, and changes nothing.
- A one-flag change for the decode instance only (an environment override in the decode
  group) runs every phase, names why, and restarts only the decode engine: the prefill
  engine and the proxy keep their start time. The next run is converged again.
"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import run_playbook
from tests.lab.conftest import lab_unavailable, labctl, leave_serving, serving

pytestmark = pytest.mark.lab

TOPOLOGY = "a3-1p1d"
INVENTORY = ["-i", TOPOLOGY, "-i", f"lab/.state/{TOPOLOGY}/hosts.yml"]
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
# A task of each skipped phase: none of them may run on a converged fleet.
PHASE_TASKS = ["Read the NPU facts", "Probe every device and every peer at once", "Pull the engine image",
               "Look for complete weights (completion marker)", "Render the launch scripts",
               "Create or update the engine container", "Create or update the proxy container"]


def site(*extra: str):
    return run_playbook("site.yml", *INVENTORY, *extra)


def changed(proc) -> dict[str, int]:
    return {host: int(ch) for host, _ok, ch, _u, _f in RECAP.findall(proc.stdout)}


def started(host: str, name: str) -> str:
    return labctl("ssh", TOPOLOGY, host, "docker", "inspect", "-f", "'{{.State.StartedAt}}'", name).stdout.strip()


@pytest.fixture(scope="module")
def fleet():
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    serving(TOPOLOGY)
    yield
    leave_serving(TOPOLOGY)


def test_a_rerun_on_a_converged_fleet_probes_once_and_skips_the_phases(fleet):
    site()  # whatever the lab held: this run completes and leaves its record
    again = site()
    out = again.stdout
    assert "Converged: every node (2) holds what the last completed run left" in out, out[-3000:]
    for task in PHASE_TASKS:
        assert f"TASK [{task}" not in out and f": {task}]" not in out, task
    assert "answered:" in out  # verify still sends the tutorial's request
    counts = changed(again)
    assert {"prefill-0", "decode-0"} <= set(counts) and set(counts.values()) == {0}, counts


def test_a_decode_only_flag_restarts_only_decode_then_converges_again(fleet, tmp_path):
    before = {"prefill": started("prefill-0", "vllm-ascend"), "proxy": started("prefill-0", "vllm-ascend-proxy"),
              "decode": started("decode-0", "vllm-ascend")}
    overlay = tmp_path / "decode-flag.yml"
    overlay.write_text(yaml.safe_dump({"decode": {"vars": {"fleet_env_overrides": {"ASCEND_FLEET_TEST_FLAG": "1"}}}}))
    proc = site("-i", str(overlay))
    out = proc.stdout
    assert "Running every phase: " in out and "the settings, the plan or the toolkit changed" in out, out[-3000:]
    assert started("prefill-0", "vllm-ascend") == before["prefill"]
    assert started("prefill-0", "vllm-ascend-proxy") == before["proxy"]
    assert started("decode-0", "vllm-ascend") != before["decode"]
    def flagged(host: str) -> str:
        return labctl("ssh", TOPOLOGY, host, "grep", "-rl", "ASCEND_FLEET_TEST_FLAG", "/etc/ascend-fleet",
                      check=False).stdout.strip()

    assert "/etc/ascend-fleet/run_dp_template.sh" in flagged("decode-0").split() and flagged("prefill-0") == ""
    same = site("-i", str(overlay))
    assert "Converged: every node (2)" in same.stdout and set(changed(same).values()) == {0}
