"""No secret escapes a real bring-up (a2-single lab, one bring-up for the module).

The run uses a hub that requires a token (our own lab hub instance on the management
gateway, throttled so the download lasts seconds), a registry that requires a login
(``labctl registry-auth``, :5001) and a service API key. While site.yml runs, every process
command line on the node and on this machine is sampled; afterwards the play output, every
file the run wrote on the node and here, and ``docker inspect`` are searched for the three
secrets. The only place a secret may be is the root-only API key file the launch scripts read.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_playbook, run_site
from tests.lab.conftest import REPO, Lab, lab_unavailable, labctl
from tests.lab.test_hub import HUB, MODEL, faults

pytestmark = pytest.mark.lab

TOPOLOGY = "a2-single"
GATEWAY = "198.18.0.1"
TOKEN = "ms-hubtoken-5c1f9e0d7a3b4e21"
API_KEY = "sk-service-8e2d4c6a1f3b5d7e"
REG_USER, REG_PASS = "fleetpull", "reg-pass-3b9d1f7e5a2c"
SECRETS = (TOKEN, API_KEY, REG_PASS)
KEY_FILE = "/etc/ascend-fleet/secrets/api-key"


class GatewayHub:
    """Our own lab hub on the management gateway (the shared one keeps its settings)."""

    def __init__(self, root: Path) -> None:
        port_file = root / "port"
        self.proc = subprocess.Popen(
            [sys.executable, str(HUB / "server.py"), "--host", GATEWAY, "--port", "0", "--root",
             str(root / "repo"), "--model", MODEL, "--size-mb", "24", "--port-file", str(port_file)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.proc.stdout.readline()
        assert port_file.exists(), "hub did not start"
        self.url = f"http://{GATEWAY}:{port_file.read_text().strip()}"
        self.faults = faults

    def set(self, **switches) -> None:
        self.faults.set_faults(self.url, **switches)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    labctl("up", TOPOLOGY)
    hub = None
    try:
        proc = subprocess.run([sys.executable, str(REPO / "lab" / "labctl"), "registry-auth", "start", REG_USER],
                              input=REG_PASS + "\n", capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        hub = GatewayHub(tmp_path_factory.mktemp("secret-hub"))
        yield Lab(TOPOLOGY), hub
    finally:
        if hub:
            hub.stop()
        labctl("registry-auth", "stop", check=False)
        labctl("down", TOPOLOGY, check=False)


def extra_vars(tmp: Path, hub: GatewayHub, token: str) -> Path:
    """The secrets go in a 0600 vars file (-e @file), never on ansible-playbook's argv."""
    path = tmp / "secrets.yml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump({
            "weights_hub_endpoint": hub.url, "weights_token": token, "fleet_api_key": API_KEY,
            "image_registry_mirror": f"{GATEWAY}:5001", "image_registry_username": REG_USER,
            "image_registry_password": REG_PASS,
        }, fh)
    return path


class Sampler:
    """Every process command line on the node (docker exec ps) and here, sampled repeatedly."""

    def __init__(self, container: str) -> None:
        self.container, self.lines, self.rounds = container, set(), 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.done.is_set():
            node = subprocess.run(["docker", "exec", self.container, "sh", "-c",
                                   'for f in /proc/[0-9]*/cmdline; do tr "\\0" " " < "$f"; echo; done 2>/dev/null'],
                                  capture_output=True, text=True, check=False).stdout
            self.lines.update(node.splitlines())
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    with contextlib.suppress(OSError):  # the process ended meanwhile
                        self.lines.add((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            self.rounds += 1
            time.sleep(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def grep_node(lab: Lab, container: str, marker: str) -> list[str]:
    """Files written on the node since the marker that hold a secret (with their modes)."""
    pattern = " ".join(f"-e {s}" for s in SECRETS)
    script = (
        f"find / \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -type f -newer {marker} -print0"
        f" | xargs -0 -r grep -lF {pattern} 2>/dev/null | while read -r f; do stat -c '%a %U %n' \"$f\"; done"
    )
    return subprocess.run(["docker", "exec", container, "sh", "-c", script], capture_output=True, text=True,
                          check=False, timeout=600).stdout.splitlines()


def test_no_secret_anywhere_after_a_bring_up_with_token_login_and_api_key(lab, tmp_path):
    lab_, hub = lab
    hub.set(token=TOKEN, throttle_mbps=4)  # 24 MB at 4 MB/s: the download lasts seconds
    container = next(iter(lab_.nodes.values()))["container"]
    subprocess.run(["docker", "exec", container, "touch", "/run/secret-test-marker"], check=True)
    here = tmp_path / "here-marker"
    here.touch()
    time.sleep(1.1)  # mtime granularity: files written from now on are newer than the markers
    evars = extra_vars(tmp_path, hub, TOKEN)
    with Sampler(container) as sampler:
        proc = run_site(TOPOLOGY, "-e", f"@{evars}")
    evars.unlink()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    # the download happened with the token, the image came through the login
    assert any("modelscope" in line and "download" in line for line in sampler.lines), sampler.rounds
    log = hub.faults.call(hub.url, "/_lab/log")["requests"]
    assert [r for r in log if r["file"]] and 401 not in [r["status"] for r in log]
    images = subprocess.run(["docker", "exec", container, "docker", "images", "--format", "{{.Repository}}"],
                            capture_output=True, text=True, check=True).stdout
    assert f"{GATEWAY}:5001/" in images
    # 1. the play output and every command line seen
    for secret in SECRETS:
        assert secret not in output
        assert not [line for line in sampler.lines if secret in line]
    # 2. files on the node: only the root-only key file holds a secret
    assert grep_node(lab_, container, "/run/secret-test-marker") == [f"600 root {KEY_FILE}"]
    mode = subprocess.run(["docker", "exec", container, "stat", "-c", "%a %U", os.path.dirname(KEY_FILE)],
                          capture_output=True, text=True, check=True).stdout.split()
    assert mode == ["700", "root"]
    # the registry login did not stay behind
    config = subprocess.run(["docker", "exec", container, "cat", "/root/.docker/config.json"],
                            capture_output=True, text=True, check=False).stdout
    assert "5001" not in config
    # 3. docker inspect of every container on the node
    inspect = subprocess.run(["docker", "exec", container, "sh", "-c", "docker inspect $(docker ps -aq)"],
                             capture_output=True, text=True, check=True).stdout
    assert "vllm-ascend" in inspect and not [s for s in SECRETS if s in inspect]
    # 4. files written here (controller): state, caches, temporary files, lab logs
    roots = [REPO / "lab" / ".state", REPO / ".fact_cache", Path.home() / ".ansible", Path("/tmp")]
    found = subprocess.run(
        ["sh", "-c", " ".join(["find", *map(str, roots), "-type", "f", "-newer", str(here), "-print0", "2>/dev/null",
                               "|", "xargs", "-0", "-r", "grep", "-lF", *[f"-e {s}" for s in SECRETS],
                               "2>/dev/null"])],
        capture_output=True, text=True, check=False).stdout.split()
    assert found == []
    # 5. the service requires the key (as vLLM does) and verify sent it
    ip = lab_.nodes[next(iter(lab_.nodes))]["mgmt_ip"]
    probe = ("import sys,urllib.request as u\n"
             "r=u.Request(sys.argv[1]); k=sys.stdin.read().strip()\n"
             "k and r.add_header('Authorization','Bearer '+k)\n"
             "try: print(u.urlopen(r,timeout=10).status)\n"
             "except Exception as e: print(getattr(e,'code',-1))\n")
    def status(path, key=""):
        return subprocess.run(["docker", "exec", "-i", container, "python3", "-c", probe, f"http://{ip}:8900{path}"],
                              input=key, capture_output=True, text=True, check=False).stdout.strip()
    assert status("/v1/models") == "401"
    assert status("/v1/models", API_KEY) == "200"
    assert status("/health") == "200"
    assert "Endpoint http://" in output and "answered" in output


def test_status_sends_the_api_key_and_names_a_refused_one(lab, tmp_path):
    """status.yml asks every rank's /v1/models with the key (on stdin, never on a command line)."""
    state = REPO / "lab" / ".state" / TOPOLOGY

    def status(key: str) -> tuple[dict, str]:
        evars = tmp_path / "key.yml"
        fd = os.open(evars, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump({"fleet_api_key": key}, fh)
        report = tmp_path / "status.json"
        proc = run_playbook("playbooks/status.yml", "-i", TOPOLOGY, "-i", str(state / "hosts.yml"),
                            "-e", f"@{evars}", "-e", f"ops_status_file={report}", check=False,
                            env={"ANSIBLE_CACHE_PLUGIN_CONNECTION": str(state / "facts")})
        evars.unlink()
        assert proc.returncode == 0, proc.stdout[-4000:]
        return json.loads(report.read_text()), proc.stdout + proc.stderr

    good, output = status(API_KEY)
    ranks = [r for h in good["hosts"].values() for r in h["ranks"]]
    assert ranks and all(r["api_key_accepted"] is True and r["healthy"] for r in ranks), ranks
    assert good["service"] == "up" and API_KEY not in output
    wrong = "sk-wrong-" + API_KEY
    bad, output = status(wrong)
    assert bad["service"] != "up"
    assert [p for p in bad["problems"] if "refuse the API key (fleet_api_key)" in p], bad["problems"]
    assert wrong not in output and API_KEY not in output


def test_wrong_hub_token_says_401_names_the_variable_and_prints_no_token(lab, tmp_path):
    lab_, hub = lab
    hub.set(token=TOKEN)
    container = next(iter(lab_.nodes.values()))["container"]
    # make the weights incomplete so the download runs again
    subprocess.run(["docker", "exec", container, "sh", "-c",
                    "rm -f /root/.cache/modelscope/hub/models/*/*/.ascend-fleet-complete.json"], check=True)
    wrong = "wrong-" + TOKEN
    evars = extra_vars(tmp_path, hub, wrong)
    proc = run_site(TOPOLOGY, "-e", f"@{evars}")
    evars.unlink()
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "401" in output and "weights_token" in output, output[-4000:]
    assert wrong not in output and TOKEN not in output
    assert "censored" not in output.split("Report the download")[-1][:2000]
