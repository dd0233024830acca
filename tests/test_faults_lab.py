"""Faults on the a3-1p1d lab (marker `lab`): each is injected into a deployed service, the
toolkit must name it, and a re-run must heal it.

One deployment for the module (site.yml once); each test leaves the service healthy for
the next. The lab stays up at the end (tests/test_ops.py shares it).

- rank crash during start: `labctl engine set crash_rank=decode-0:5` makes DP rank 5 of the
  decode instance die while it loads the model (the other 15 ranks of its DP group and the
  container keep waiting, as with vLLM). The serve wait must stop at once, naming the node,
  the rank, the container state and the log tail, not wait for serve_health_timeout_s
  (left at its default 3600 s here, so only the detector can end the wait in time).
- rank crash while serving: one decode rank killed; status says degraded and names the
  instance; site.yml brings it back.
- proxy dies: the PD proxy container killed; status names it; site.yml starts the proxy
  and leaves the engines alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_playbook
from tests.lab.conftest import STATE, lab_unavailable, labctl

pytestmark = pytest.mark.lab

TOPOLOGY = "a3-1p1d"
INVENTORY = ["-i", TOPOLOGY, "-i", f"lab/.state/{TOPOLOGY}/hosts.yml"]
ENGINE, PROXY = "vllm-ascend", "vllm-ascend-proxy"
CRASH_RANK = 5  # a decode rank (DP16 on decode-0), not the DP master


def playbook(name: str, *extra: str, check: bool = True):
    return run_playbook(name, *INVENTORY, *extra, check=check)


def status(tmp_path: Path) -> dict:
    report = tmp_path / "status.json"
    playbook("playbooks/status.yml", "-e", f"ops_status_file={report}")
    return json.loads(report.read_text())


def started_at(host: str, name: str) -> str:
    return labctl("ssh", TOPOLOGY, host, "docker", "inspect", "-f", "'{{.State.Status}} {{.State.StartedAt}}'",
                  name).stdout.strip()


@pytest.fixture(scope="module")
def fleet():
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    labctl("up", TOPOLOGY)  # with the engine image: the service runs
    labctl("engine", "clear", TOPOLOGY)
    # The image phase pulls only a missing tag: a lab left up from before has an older
    # engine image on its nodes. Pull the registry's (site.yml then recreates the engines).
    overlay = yaml.safe_load((STATE / TOPOLOGY / "hosts.yml").read_text())
    mirror = overlay["all"]["vars"]["image_registry_mirror"]
    for host in ("prefill-0", "decode-0"):
        labctl("ssh", TOPOLOGY, host, "docker", "pull", "-q", f"{mirror}/ascend/vllm-ascend:v0.21.0rc1-a3")
    playbook("site.yml")
    yield
    labctl("engine", "clear", TOPOLOGY, check=False)
    playbook("site.yml", check=False)  # leave the shared lab serving


def test_rank_crash_during_start_fails_fast_naming_node_rank_and_log(fleet, tmp_path):
    labctl("engine", "set", TOPOLOGY, f"crash_rank=decode-0:{CRASH_RANK}")
    try:
        proc = playbook("playbooks/restart.yml", "-e", "ops_restart_instances=decode-0", check=False)
    finally:
        labctl("engine", "clear", TOPOLOGY)
    out = proc.stdout + proc.stderr
    after = {h: started_at(h, ENGINE) for h in ("prefill-0", "decode-0")}
    healed = playbook("site.yml", check=False)  # before asserting: the next tests need a service
    assert proc.returncode != 0, out[-3000:]
    # The detector ended the wait (the timeout is 3600 s): node, rank, state, log tail.
    named = rf"decode-0 DP rank {CRASH_RANK} \(port \d+\): rank process (exited|not running)"
    assert re.search(named, out), out[-4000:]
    assert "container vllm-ascend did not become healthy (instance decode-0)" in out
    assert "container vllm-ascend state: running; stopped: True" in out
    assert "Last 50 log lines:" in out and "Error lines of the log" in out
    assert "lab switch crash_rank" in out and "error code 507035" in out
    assert "timed out: serve_health_timeout_s" not in out
    # Nothing left starting forever: the failed instance's engine is stopped; prefill untouched.
    assert after["decode-0"].startswith("exited ")
    assert after["prefill-0"].startswith("running ")
    # The re-run converges to the healthy service.
    assert healed.returncode == 0, healed.stdout[-3000:]
    assert "answered:" in healed.stdout
    report = status(tmp_path)
    assert report["service"] == "up", report["problems"]


def test_rank_crash_while_serving_is_degraded_then_site_heals(fleet, tmp_path):
    # Kill one decode rank: its DP group goes down with it (as vLLM's does).
    labctl("ssh", TOPOLOGY, "decode-0", "docker", "exec", ENGINE, "pkill", "-f",
           f"'data-parallel-rank {CRASH_RANK} '")
    report = status(tmp_path)
    assert report["service"] in ("degraded", "down")
    assert report["service"] == "degraded", report  # prefill still serves
    assert any("decode-0" in p for p in report["problems"]), report["problems"]
    healed = playbook("site.yml")
    assert "answered:" in healed.stdout
    assert status(tmp_path)["service"] == "up"


def test_proxy_dies_status_names_it_and_site_restarts_only_the_proxy(fleet, tmp_path):
    engines = {h: started_at(h, ENGINE) for h in ("prefill-0", "decode-0")}
    labctl("ssh", TOPOLOGY, "prefill-0", "docker", "kill", PROXY)
    report = status(tmp_path)
    assert report["service"] != "up"
    assert any("proxy" in p for p in report["problems"]), report["problems"]
    healed = playbook("site.yml")
    assert "answered:" in healed.stdout
    assert started_at("prefill-0", PROXY).startswith("running ")
    assert {h: started_at(h, ENGINE) for h in engines} == engines  # engines not restarted
    assert status(tmp_path)["service"] == "up"
