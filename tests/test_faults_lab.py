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
- two operators: a second site.yml while one runs is refused at once by the run lock,
  naming user, controller and the first run's pid; the first ends healthy, no lock left.
  A stale lock (its run gone, or too old) is broken with a warning; a live one only with
  run_lock_break=true.
- node lost mid-start, then down before the run: decode-0 powered off while its engine
  starts (the stand-in made to start slowly), the wait names it as soon as a round does
  not come back; with the node still off, site.yml stops in preflight naming it
  unreachable and starts nothing; powered on, site.yml converges.
- registry down: the decode node lacks the image and the registry is stopped; the image
  phase names node and registry after its bounded retries, no engine is started.
- stale /etc/hccn.conf: one address_N changed on decode-0; preflight names node, device
  and both addresses, nothing is started.
Every failed run here also shows the failure summary (phase, node, what to do) and leaves
no run lock behind.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, ansible_bin, run_playbook
from tests.lab.conftest import STATE, lab_unavailable, labctl, leave_serving, serving

pytestmark = pytest.mark.lab

TOPOLOGY = "a3-1p1d"
INVENTORY = ["-i", TOPOLOGY, "-i", f"lab/.state/{TOPOLOGY}/hosts.yml"]
ENGINE, PROXY = "vllm-ascend", "vllm-ascend-proxy"
CRASH_RANK = 5  # a decode rank (DP16 on decode-0), not the DP master
LOCK = "/var/lib/ascend-fleet/run.lock"  # run_lock_path, on the fleet's first node
IMAGE = "ascend/vllm-ascend:v0.21.0rc1-a3"


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
    serving(TOPOLOGY)
    yield
    labctl("engine", "clear", TOPOLOGY, check=False)
    leave_serving(TOPOLOGY)  # leave the shared lab serving


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


def ssh(host: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
    return labctl("ssh", TOPOLOGY, host, command, check=check)


def lock_record() -> dict | None:
    text = ssh("prefill-0", f"cat {LOCK} 2>/dev/null || true").stdout.strip()
    return json.loads(text) if text else None


def flat(proc: subprocess.CompletedProcess) -> str:
    """The play output as one line: the callback folds long messages and doubles quotes."""
    return re.sub(r"\s+", " ", proc.stdout + proc.stderr).replace("''", "'")


def start_playbook(name: str, log: Path, *extra: str, inventory: list[str] = INVENTORY) -> subprocess.Popen:
    """A playbook in the background (another operator's run), its output into log."""
    with log.open("w") as fh:
        return subprocess.Popen([ansible_bin("ansible-playbook"), name, *inventory, *extra], cwd=REPO,
                                stdout=fh, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"})


def wait_until(what: str, ready, proc: subprocess.Popen, log: Path, bound: int = 300):
    """Poll ready() (at most bound times, a second apart) while proc runs."""
    for _ in range(bound):
        if ready():
            return
        assert proc.poll() is None, f"the run ended before {what}:\n{log.read_text()[-3000:]}"
        time.sleep(1)
    raise AssertionError(f"never saw {what}:\n{log.read_text()[-3000:]}")


def assert_summary(out: str, phase: str, node: str, says: str):
    """The failure summary after a failed run: phase, node, what it says, what to do."""
    summary = out.split("FAILURE SUMMARY", 1)[-1]
    assert "FAILURE SUMMARY" in out, out[-3000:]
    assert f"- phase '{phase}', node {node}: " in summary, summary[:2000]
    assert says in summary and "What to do: " in summary, summary[:2000]


def test_two_operators_second_refused_at_once_first_unaffected(fleet, tmp_path):
    log = tmp_path / "first.log"
    first = start_playbook("site.yml", log)
    try:
        wait_until("the first run's lock", lambda: lock_record() is not None, first, log)
        record = lock_record()
        second = playbook("site.yml", check=False)
        still_running = first.poll() is None
        first.wait(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    out = flat(second)
    # The lock names the first run: its user, controller and the ansible-playbook pid.
    assert record["pid"] == first.pid and record["controller"] == socket.gethostname(), record
    assert still_running, "the first run ended before the second was refused"
    assert second.returncode != 0
    assert (f"another run holds the lock of this fleet: user {getpass.getuser()} on controller "
            f"{socket.gethostname()} (pid {first.pid}), running site.yml, since ") in out, out[-3000:]
    assert f"lock file {LOCK} on prefill-0" in out and "-e run_lock_break=true" in out
    # Refused at once: no phase after the lock ran.
    assert "TASK [preflight" not in second.stdout and "PLAY [Node facts and preflight checks]" not in second.stdout
    assert_summary(out, "Take the run lock (one run at a time against a fleet)", "prefill-0", "another run holds")
    # The first run is unaffected and leaves no lock.
    first_out = log.read_text()
    assert first.returncode == 0, first_out[-3000:]
    assert "answered:" in first_out and "TASK [run_lock : Release the run lock of the fleet]" in first_out
    assert lock_record() is None
    assert status(tmp_path)["service"] == "up"


def lock_only(*extra: str) -> subprocess.CompletedProcess:
    """validate, take the lock, release it: what every entry playbook does around its work."""
    return run_playbook("playbooks/validate.yml", "playbooks/lock.yml", "playbooks/unlock.yml", *INVENTORY,
                        *extra, check=False)


def put_lock(record: dict, age: str | None = None):
    ssh("prefill-0", f"mkdir -p {Path(LOCK).parent} && echo '{json.dumps(record)}' > {LOCK}"
                     + (f" && touch -d '{age}' {LOCK}" if age else ""))


def test_stale_lock_is_broken_live_one_only_on_request(fleet):
    other = {"run": "ctl-2:4242:1", "user": "alice", "controller": "ctl-2", "pid": 4242,
             "since": int(time.time()) - 60, "playbooks": ["playbooks/restart.yml"]}
    put_lock(other)
    try:
        refused = lock_only()
        out = flat(refused)
        assert refused.returncode != 0
        assert "user alice on controller ctl-2 (pid 4242), running playbooks/restart.yml, since " in out, out[-3000:]
        assert lock_record()["run"] == other["run"]  # a refused run leaves the holder's lock alone
        broken = lock_only("-e", "run_lock_break=true")
        assert broken.returncode == 0, flat(broken)[-3000:]
        assert "breaking the run lock" in flat(broken) and "(run_lock_break=true)" in flat(broken)
        assert lock_record() is None
        # Its run gone from this controller (a pid that no longer runs): stale, broken alone.
        dead = {**other, "run": "here:1", "controller": socket.gethostname(), "pid": 2**22 + 7}  # > pid_max
        put_lock(dead)
        taken = lock_only()
        assert taken.returncode == 0, flat(taken)[-3000:]
        assert "is no longer running on this controller" in flat(taken)
        # Older than run_lock_stale_after_s: stale.
        put_lock(other, age="2 days ago")
        taken = lock_only()
        assert taken.returncode == 0 and "older than run_lock_stale_after_s (86400 s)" in flat(taken)
        assert lock_record() is None
    finally:
        ssh("prefill-0", f"rm -f {LOCK}")


def test_node_lost_mid_start_then_down_before_the_run_then_heals(fleet, tmp_path):
    log = tmp_path / "restart.log"
    # The decode engine restarts and takes long to start (600 s of stand-in start-up work):
    # decode-0 is powered off while the wait watches it.
    slow = json.dumps({"serve_extra_env": {"ASCEND_FLEET_LAB_INIT_SECONDS": "600"}})
    run = start_playbook("playbooks/restart.yml", log, "-e", "ops_restart_instances=decode-0", "-e", slow)
    try:
        wait_until("the wait for decode-0", lambda: "Wait for /health on every rank" in log.read_text(), run, log)
        labctl("node", "stop", TOPOLOGY, "decode-0")
        run.wait(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    lost = re.sub(r"\s+", " ", log.read_text()).replace("''", "'")
    try:
        assert run.returncode != 0
        healthy = r"decode-0 \(198\.18\.\d+\.\d+\): container vllm-ascend did not become healthy"
        assert re.search(healthy, lost), lost[-3000:]
        assert "node decode-0 (" in lost and "stopped answering during the wait" in lost
        assert "timed out: serve_health_timeout_s" not in lost
        # The summary names the lost node and what to do (the restart's coordinator on the
        # proxy host reports the instance's failure, so the line may be under its name).
        summary = lost.split("FAILURE SUMMARY")[1] if "FAILURE SUMMARY" in lost else ""
        assert "decode-0 stopped answering during the wait" in summary or "node decode-0 (" in summary, lost[-3000:]
        assert "What to do: power the node on or fix its network" in summary
        # Still off: the next run stops in preflight naming it, and starts nothing anywhere.
        before = containers_of("prefill-0")
        down = playbook("site.yml", check=False)
        out = flat(down)
        assert down.returncode != 0
        assert "fatal: [decode-0]: UNREACHABLE!" in out
        assert_summary(out, "Node facts and preflight checks", "decode-0", "decode-0 unreachable")
        assert "TASK [image" not in down.stdout and "TASK [serve" not in down.stdout
        assert containers_of("prefill-0") == before
        assert lock_record() is None and f"run lock {LOCK} on prefill-0 released" in out
    finally:
        labctl("node", "start", TOPOLOGY, "decode-0")
    healed = playbook("site.yml")
    assert "answered:" in healed.stdout
    assert status(tmp_path)["service"] == "up"


def containers_of(host: str) -> list[str]:
    listing = ssh(host, "docker ps -aq | xargs -r docker inspect --format '{{.Name}} {{.State.Status}} "
                        "{{.State.StartedAt}}'").stdout
    return sorted(listing.splitlines())


def test_registry_down_image_phase_names_registry_and_node(fleet, tmp_path):
    overlay = yaml.safe_load((STATE / TOPOLOGY / "hosts.yml").read_text())
    mirror = overlay["all"]["vars"]["image_registry_mirror"]
    # decode-0 lacks the image (as a new node would): the image phase must pull it.
    ssh("decode-0", f"docker rm -f {ENGINE} && docker rmi {mirror}/{IMAGE}")
    before = containers_of("prefill-0")
    labctl("registry", "stop")
    try:
        proc = playbook("site.yml", "-e", "image_pull_retries=2", "-e", "image_pull_delay=1", check=False)
    finally:
        labctl("registry", "start")
    out = flat(proc)
    assert proc.returncode != 0
    assert f"decode-0: cannot pull {mirror}/{IMAGE} from registry {mirror} after 2 attempts, 1 s apart: " in out, (
        out[-4000:])
    assert_summary(out, "Pull the engine image on every node", "decode-0", f"from registry {mirror}")
    assert "check that the registry is up and reachable from decode-0" in out
    # No engine started: none on decode-0, prefill-0's untouched.
    assert ENGINE not in ssh("decode-0", "docker ps -a --format '{{.Names}}'").stdout.split()
    assert containers_of("prefill-0") == before
    assert lock_record() is None
    healed = playbook("site.yml")
    assert "answered:" in healed.stdout
    assert status(tmp_path)["service"] == "up"


def test_stale_hccn_conf_named_by_preflight(fleet):
    device = 3
    real = ssh("decode-0", f"sed -n 's/^address_{device}=//p' /etc/hccn.conf").stdout.strip()
    stale = "198.18.66.250"
    assert real and real != stale
    before = {h: containers_of(h) for h in ("prefill-0", "decode-0")}
    # Written in place (the engine container has the file mounted).
    ssh("decode-0", "cp /etc/hccn.conf /root/hccn.conf.orig && "
                    f"sed 's/^address_{device}=.*/address_{device}={stale}/' /root/hccn.conf.orig > /etc/hccn.conf")
    try:
        proc = playbook("site.yml", check=False)
    finally:
        ssh("decode-0", "cat /root/hccn.conf.orig > /etc/hccn.conf && rm /root/hccn.conf.orig")
    out = flat(proc)
    assert proc.returncode != 0
    assert (f"decode-0: device {device}: /etc/hccn.conf address_{device}={stale} but hccn_tool -ip -g says {real}"
            in out), out[-4000:]
    assert_summary(out, "Node facts and preflight checks", "decode-0", f"address_{device}={stale}")
    assert {h: containers_of(h) for h in before} == before
    assert lock_record() is None
