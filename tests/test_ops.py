"""Operations playbooks on the a3-1p1d lab (marker `lab`): status, stop, restart,
collect-logs and destroy against a deployed service, and site.yml bringing it back.

The tests run in file order on one deployment (module fixture): each leaves the service
as the next one expects, and the last one restores it. The lab stays up at the end (other
tests share it); the fixture's teardown re-runs site.yml so it is left serving.
"""

from __future__ import annotations

import json
import re
import stat
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_playbook
from tests.lab.conftest import Lab, lab_unavailable, labctl, leave_serving, serving

pytestmark = pytest.mark.lab

TOPOLOGY = "a3-1p1d"
INVENTORY = ["-i", TOPOLOGY, "-i", f"lab/.state/{TOPOLOGY}/hosts.yml"]
HOSTS = ["prefill-0", "decode-0"]
RANKS = {"prefill-0": 4, "decode-0": 16}  # DP4 x TP4 prefill, DP16 x TP1 decode
DEVICES = 16  # A3 nodes
ENGINE, PROXY = "vllm-ascend", "vllm-ascend-proxy"
FILES_DIR = "/etc/ascend-fleet"
MODEL_DIR = "/root/.cache/modelscope/hub/models/vllm-ascend/DeepSeek-V4-Flash-w8a8-mtp"
MARKER = f"{MODEL_DIR}/.ascend-fleet-complete.json"
# A lab management address no node uses: a node moved there is unreachable.
NOWHERE = "198.18.15.250"

RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def playbook(name: str, *extra: str, check: bool = True):
    return run_playbook(f"playbooks/{name}", *INVENTORY, *extra, check=check)


def recap(proc) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    found = {
        host: {"ok": int(ok), "changed": int(ch), "unreachable": int(un), "failed": int(fa)}
        for host, ok, ch, un, fa in RECAP.findall(proc.stdout)
    }
    assert set(found) >= set(HOSTS), f"no PLAY RECAP for every host:\n{proc.stdout[-3000:]}"
    return found


def status(tmp_path: Path, *extra: str, name: str = "status.json") -> dict:
    """Run status.yml, return its JSON report (and check the file is 0644)."""
    report = tmp_path / name
    proc = playbook("status.yml", "-e", f"ops_status_file={report}", *extra)
    assert stat.S_IMODE(report.stat().st_mode) == 0o644
    data = json.loads(report.read_text())
    data["_stdout"] = proc.stdout
    return data


def containers(host: str) -> str:
    """Every container of a node, one "NAME STATE ID" line each (docker ps -a, through labctl)."""
    return labctl("ssh", TOPOLOGY, host, "docker ps -a --no-trunc --format '{{.Names}} {{.State}} {{.ID}}'").stdout


def docker_ps_a(host: str) -> list[str]:
    """`lab/labctl ssh a3-1p1d HOST docker ps -a`: the lines after the header."""
    lines = labctl("ssh", TOPOLOGY, host, "docker", "ps", "-a").stdout.splitlines()
    assert lines and lines[0].startswith("CONTAINER ID"), lines
    return lines[1:]


def timestamp(value: str) -> datetime:
    """A Docker time (RFC 3339, nanoseconds) as a datetime (microseconds)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", value)
    assert match, value
    return datetime.fromisoformat(f"{match[1]}.{(match[2] or '0')[:6].ljust(6, '0')}+00:00")


def node_has(host: str, test: str) -> bool:
    return labctl("ssh", TOPOLOGY, host, "test", test, check=False).returncode == 0


def chat(entrypoint: dict) -> dict:
    """The tutorial's request to the entry point (over the lab network)."""
    body = {
        "model": entrypoint["model"],
        "messages": [{"role": "user", "content": "Who are you?"}],
        "max_tokens": 32,
        "temperature": 0,
    }
    request = urllib.request.Request(
        f"{entrypoint['url']}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        assert resp.status == 200
        return json.load(resp)


@pytest.fixture(scope="module")
def fleet():
    """The a3-1p1d lab with the service deployed by site.yml."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    serving(TOPOLOGY)  # with the engine image: the service runs
    yield Lab(TOPOLOGY)
    # Leave the shared lab serving, whatever happened above (never taken down here).
    leave_serving(TOPOLOGY)


def assert_all_healthy(report: dict) -> None:
    assert report["service"] == "up", report["problems"]
    assert report["problems"] == []
    assert report["summary"]["ranks"] == sum(RANKS.values())
    assert report["summary"]["healthy_ranks"] == sum(RANKS.values())
    for host in HOSTS:
        entry = report["hosts"][host]
        assert entry["reachable"] is True
        assert entry["engine"]["name"] == ENGINE
        assert entry["engine"]["state"] == "running"
        assert entry["engine"]["image"].endswith("/ascend/vllm-ascend:v0.21.0rc1-a3")
        assert len(entry["ranks"]) == RANKS[host]
        assert all(r["healthy"] is True and r["http_status"] == 200 for r in entry["ranks"]), entry["ranks"]
        api_ports = {r["api_port"] for r in entry["ranks"]}
        assert api_ports <= set(entry["ports"]["listening"])
    proxy = report["hosts"]["prefill-0"]
    assert proxy["proxy"]["state"] == "running"
    assert proxy["proxy_health"]["healthy"] is True
    assert report["hosts"]["decode-0"]["proxy"] is None


def test_status_reports_every_rank_healthy(fleet, tmp_path):
    report = status(tmp_path)
    assert_all_healthy(report)
    assert report["topology"] == TOPOLOGY
    assert report["entrypoint"]["url"] == f"http://{fleet.nodes['prefill-0']['mgmt_ip']}:1999"
    table = report["_stdout"]
    assert re.search(r"prefill-0\s+prefill\s+prefill-0\s+yes\s+running\s+4/4\b", table)
    assert re.search(r"decode-0\s+decode\s+decode-0\s+yes\s+running\s+16/16\b", table)
    assert "service UP: 20/20 ranks healthy" in table

    # Read-only: the same report under --check.
    checked = status(tmp_path, "--check", name="checked.json")
    assert_all_healthy(checked)


def test_status_reports_an_unreachable_node(fleet, tmp_path):
    overlay = tmp_path / "nowhere.yml"
    overlay.write_text(yaml.safe_dump({"all": {"hosts": {"decode-0": {"ansible_host": NOWHERE}}}}))
    report = status(tmp_path, "-i", str(overlay))
    decode = report["hosts"]["decode-0"]
    assert decode["reachable"] is False
    assert NOWHERE in decode["error"]
    assert decode["engine"]["state"] == "unknown"
    assert all(r["healthy"] is None for r in decode["ranks"])
    assert report["summary"]["unreachable"] == ["decode-0"]
    assert report["service"] == "degraded"
    assert "decode-0 unreachable" in report["problems"]
    # The reachable node is still probed in full.
    prefill = report["hosts"]["prefill-0"]
    assert prefill["reachable"] is True
    assert all(r["healthy"] for r in prefill["ranks"])
    assert re.search(r"decode-0\s+decode\s+decode-0\s+NO\s+unknown", report["_stdout"])


def test_stop_then_status_stopped_and_second_stop_changes_nothing(fleet, tmp_path):
    first = recap(playbook("stop.yml"))
    assert first["prefill-0"]["changed"] == 2  # proxy and engine
    assert first["decode-0"]["changed"] == 1

    report = status(tmp_path)
    assert report["service"] == "down"
    assert report["summary"]["healthy_ranks"] == 0
    for host in HOSTS:
        entry = report["hosts"][host]
        assert entry["engine"]["state"] == "stopped"
        assert all(r["healthy"] is False for r in entry["ranks"])
    assert report["hosts"]["prefill-0"]["proxy"]["state"] == "stopped"
    # Stopped, not removed.
    assert re.search(rf"^{PROXY} exited ", containers("prefill-0"), re.M)
    for host in HOSTS:
        assert re.search(rf"^{ENGINE} exited ", containers(host), re.M)

    second = recap(playbook("stop.yml"))
    assert all(counts["changed"] == 0 and counts["failed"] == 0 for counts in second.values()), second


def test_site_brings_the_service_back(fleet, tmp_path):
    run_playbook("site.yml", *INVENTORY)  # ends with the verify phase (a real request)
    assert_all_healthy(status(tmp_path))


def test_restart_one_instance_at_a_time_and_endpoint_answers(fleet, tmp_path):
    before = status(tmp_path, name="before.json")
    assert_all_healthy(before)

    proc = playbook("restart.yml")
    assert "answered:" in proc.stdout  # restart.yml ends with the verify phase

    after = status(tmp_path, name="after.json")
    assert_all_healthy(after)
    answer = chat(after["entrypoint"])  # and the endpoint answers afterwards
    assert answer["choices"][0]["message"]["content"]
    started = {h: timestamp(after["hosts"][h]["engine"]["started_at"]) for h in HOSTS}
    for host in HOSTS:
        assert started[host] > timestamp(before["hosts"][host]["engine"]["started_at"]), f"{host} was not restarted"
    # One instance at a time: decode-0 was stopped only after prefill-0 was started again
    # (and had become healthy: the play waits in between).
    assert timestamp(after["hosts"]["decode-0"]["engine"]["finished_at"]) > started["prefill-0"]


def test_collect_logs_per_host(fleet, tmp_path):
    playbook("collect-logs.yml", "-e", f"ops_logs_dir={tmp_path}")
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1 and re.fullmatch(r"\d{8}T\d{6}Z", runs[0].name), runs
    for host in HOSTS:
        out = runs[0] / host
        assert (out / "docker" / f"{ENGINE}.log").stat().st_size > 0
        assert json.loads((out / "docker" / f"{ENGINE}.state.json").read_text())["state"] == "running"
        assert json.loads((out / "files" / "plan.json").read_text())["host"] == host
        assert (out / "files" / "launch.sh").is_file()
        assert "npu-smi" in (out / "npu-smi-info.txt").read_text()
        assert re.search(rf"^{ENGINE}\t", (out / "containers.txt").read_text(), re.M)
        for device in range(DEVICES):
            text = (out / "hccn" / f"device-{device}.txt").read_text()
            for query in ("-link -g", "-net_health -g", "-ip -g", "-tls -g"):
                assert f"-i {device} {query}  (exit 0)" in text, text
            assert "link status: UP" in text
        manifest = json.loads((out / "manifest.json").read_text())
        assert len(manifest["commands"]) >= 2 + 4 * DEVICES
        # Nothing left behind on the node.
        assert "ascend-fleet-logs." not in labctl("ssh", TOPOLOGY, host, "ls", "/tmp").stdout
    proxy_dir = runs[0] / "prefill-0"
    assert (proxy_dir / "docker" / f"{PROXY}.log").stat().st_size > 0
    assert (proxy_dir / "files" / "proxy.sh").is_file()
    assert not (runs[0] / "decode-0" / "docker" / f"{PROXY}.log").exists()


def test_destroy_without_confirmation_refuses_and_touches_nothing(fleet):
    before = {host: containers(host) for host in HOSTS}
    proc = playbook("destroy.yml", check=False)
    assert proc.returncode != 0
    assert "Nothing was touched" in proc.stdout
    assert "-e ops_destroy_confirm=yes" in proc.stdout
    counts = recap(proc)
    assert all(c["changed"] == 0 for c in counts.values()), counts
    for host in HOSTS:
        assert containers(host) == before[host]
        assert re.search(rf"^{ENGINE} running ", before[host], re.M)
        assert node_has(host, f"-f {FILES_DIR}/plan.json")
    # A wrong value is refused the same way, and so is a confirmed run with a bad weights switch.
    wrong = playbook("destroy.yml", "-e", "ops_destroy_confirm=true", check=False)
    assert wrong.returncode != 0 and "Nothing was touched" in wrong.stdout
    unclear = playbook("destroy.yml", "-e", "ops_destroy_confirm=yes", "-e", "ops_destroy_weights=maybe", check=False)
    assert unclear.returncode != 0
    assert "ops_destroy_weights = maybe: expected true or false. Nothing was touched." in unclear.stdout
    assert {host: containers(host) for host in HOSTS} == before


def test_destroy_with_confirmation_keeps_the_weights(fleet, tmp_path):
    playbook("destroy.yml", "-e", "ops_destroy_confirm=yes")
    for host in HOSTS:
        assert docker_ps_a(host) == [], f"{host} still has containers"
        assert not node_has(host, f"-e {FILES_DIR}")
        assert node_has(host, f"-f {MARKER}"), f"{host}: weights were removed"

    report = status(tmp_path)
    assert report["service"] == "down"
    for host in HOSTS:
        assert report["hosts"][host]["engine"]["state"] == "absent"
    assert report["hosts"]["prefill-0"]["proxy"]["state"] == "absent"

    # collect-logs still works with nothing deployed.
    logs = tmp_path / "logs"
    playbook("collect-logs.yml", "-e", f"ops_logs_dir={logs}")
    (run,) = logs.iterdir()
    for host in HOSTS:
        manifest = json.loads((run / host / "manifest.json").read_text())
        assert manifest["containers"][ENGINE] == "absent"
        assert manifest["files"] is None
        assert (run / host / "hccn" / "device-0.txt").is_file()

    # A second destroy has nothing left to do.
    again = recap(playbook("destroy.yml", "-e", "ops_destroy_confirm=yes"))
    assert all(c["changed"] == 0 for c in again.values()), again


def test_site_restores_after_destroy(fleet, tmp_path):
    proc = run_playbook("site.yml", *INVENTORY)
    assert "answered:" in proc.stdout
    assert_all_healthy(status(tmp_path))


def test_destroy_weights_then_site_downloads_them_again(fleet, tmp_path):
    playbook("destroy.yml", "-e", "ops_destroy_confirm=yes", "-e", "ops_destroy_weights=true")
    for host in HOSTS:
        assert docker_ps_a(host) == []
        assert not node_has(host, f"-e {MODEL_DIR}")
        assert node_has(host, "-d /root/.cache")  # only the model directory goes
    run_playbook("site.yml", *INVENTORY)
    for host in HOSTS:
        assert node_has(host, f"-f {MARKER}")
    assert_all_healthy(status(tmp_path))
