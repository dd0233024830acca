"""An engine that fails to start: the run stops there and shows node, container and log.

On the a3-single lab the engine container is given a device list naming a device the node
does not have (as a wrong ASCEND_RT_VISIBLE_DEVICES would on real hardware): the engine
exits, serve reports the node, the container and the engine's last log lines, and the
proxy/verify phases do not run. A normal run afterwards recreates the container (its
settings changed) and verifies.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import run_site
from tests.lab.conftest import Lab, lab_unavailable, labctl

pytestmark = pytest.mark.lab
TOPOLOGY = "a3-single"


def site(*extra: str, check: bool = False) -> subprocess.CompletedProcess:
    return run_site(TOPOLOGY, *extra, check=check)


def test_failed_engine_is_reported_with_its_log_then_recovers():
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    labctl("up", TOPOLOGY)
    lab = Lab(TOPOLOGY)
    proc = site("-e", '{"serve_extra_env": {"ASCEND_RT_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,99"}}')
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "node-0 (198.18." in out and "container vllm-ascend did not become healthy" in out
    assert "exited (exit code" in out
    assert "Last 50 log lines:" in out and "davinci99 does not exist" in out
    assert "PLAY [Start the PD proxy" not in out and "answered:" not in out
    state = lab.ssh("node-0", "docker inspect -f '{{.State.Status}}' vllm-ascend")
    assert state.stdout.strip() == "exited"

    ok = site(check=True)
    assert "answered:" in ok.stdout
    state = lab.ssh("node-0", "docker inspect -f '{{.State.Status}}' vllm-ascend")
    assert state.stdout.strip() == "running"
