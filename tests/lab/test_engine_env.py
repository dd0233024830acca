"""The engine container on the a3-1p1d lab (marker `lab`): started like the tutorial's shell,
driver mounts read-only, CANN logs kept across restarts and collected.

One deployment for the module (site.yml); the lab stays up for the other lab tests.
"""

from __future__ import annotations

import json
import shlex

import pytest

from tests.conftest import run_playbook
from tests.lab.conftest import lab_unavailable, labctl, leave_serving, serving

pytestmark = pytest.mark.lab

TOPOLOGY = "a3-1p1d"
INVENTORY = ["-i", TOPOLOGY, "-i", f"lab/.state/{TOPOLOGY}/hosts.yml"]
HOSTS = ["prefill-0", "decode-0"]
ENGINE = "vllm-ascend"
LOG_DIR = "/var/log/ascend-fleet/ascend"
READ_ONLY = [
    "/usr/local/dcmi", "/usr/local/Ascend/driver/tools/hccn_tool", "/usr/local/bin/npu-smi",
    "/usr/local/Ascend/driver/lib64", "/usr/local/Ascend/driver/version.info",
    "/etc/ascend_install.info", "/etc/hccn.conf", "/etc/ascend-fleet",
]
# Differ by nature between an interactive shell and a process started by a script.
VOLATILE = {"PWD", "OLDPWD", "SHLVL", "_", "HOSTNAME", "TERM"}


def node(host: str, command: str, check: bool = True):
    return labctl("ssh", TOPOLOGY, host, command, check=check)


def environ(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split("\0") if "=" in item)


@pytest.fixture(scope="module")
def fleet():
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    serving(TOPOLOGY)
    yield
    leave_serving(TOPOLOGY)  # leave the shared lab serving


@pytest.mark.parametrize("host", HOSTS)
def test_engine_environment_is_the_tutorial_shells(fleet, host):
    """The launcher (what the tutorial types in its shell) sees the environment of
    `docker run -it IMAGE bash` in the same image: the image's ~/.bashrc applied."""
    image = node(host, f"docker inspect -f '{{{{.Config.Image}}}}' {ENGINE}").stdout.strip()
    pid = node(host, f"docker exec {ENGINE} pgrep -o -f launch_online_dp.py").stdout.strip()
    ours = environ(node(host, f"docker exec {ENGINE} cat /proc/{pid}/environ").stdout)
    shell = environ(node(host, f"docker run --rm --net=host {shlex.quote(image)} bash -ic 'env -0'").stdout)
    assert shell["LD_LIBRARY_PATH"].endswith(":/usr/local/lib"), shell  # the image's ~/.bashrc
    assert "libjemalloc.so.2" in shell["LD_PRELOAD"]
    same = {k: v for k, v in shell.items() if k not in VOLATILE}
    assert {k: ours.get(k) for k in same} == same
    assert set(ours) - set(shell) - VOLATILE == set(), "variables only the engine has"


def test_pd_rank_without_the_bashrc_fails_like_mooncake(fleet):
    """The old start (`bash launch.sh`: no ~/.bashrc) cannot load Mooncake on a PD rank."""
    image = node("decode-0", f"docker inspect -f '{{{{.Config.Image}}}}' {ENGINE}").stdout.strip()
    kv = json.dumps({"kv_connector": "MooncakeHybridConnector", "kv_role": "kv_consumer",
                     "kv_port": "30100", "engine_id": "1",
                     "kv_connector_extra_config": {"prefill": {"dp_size": 1, "tp_size": 1},
                                                   "decode": {"dp_size": 1, "tp_size": 1}}})
    proc = node("decode-0", f"docker run --rm {shlex.quote(image)} vllm serve /nowhere --port 18999 "
                f"--kv-transfer-config {shlex.quote(kv)}", check=False)
    assert proc.returncode != 0
    assert "ImportError: ascend_transport.so: cannot open shared object file" in proc.stdout + proc.stderr


@pytest.mark.parametrize("host", HOSTS)
def test_driver_tools_and_hccn_conf_are_read_only(fleet, host):
    mounts = json.loads(node(host, f"docker inspect -f '{{{{json .Mounts}}}}' {ENGINE}").stdout)
    rw = {m["Destination"].rstrip("/"): m["RW"] for m in mounts}
    for path in READ_ONLY:
        assert rw[path] is False, (path, rw)
    assert rw["/root/.cache"] is True  # the weights cache stays writable
    assert rw["/root/ascend"] is True  # CANN writes its logs there
    for target in ("/etc/hccn.conf", "/usr/local/Ascend/driver/version.info"):
        proc = node(host, f"docker exec {ENGINE} sh -c 'echo x >> {target}'", check=False)
        assert proc.returncode != 0 and "Read-only file system" in proc.stderr, proc
    proc = node(host, f"docker exec {ENGINE} touch /usr/local/Ascend/driver/lib64/new-file", check=False)
    assert proc.returncode != 0 and "Read-only file system" in proc.stderr, proc


def plogs(host: str, pattern: str) -> list[str]:
    out = node(host, f"find {LOG_DIR} -path '{LOG_DIR}/{pattern}/debug/plog/*.log'").stdout
    return sorted(out.split())


def test_cann_logs_survive_a_restart_and_are_collected(fleet, tmp_path):
    host = "decode-0"
    before = plogs(host, "log")
    assert before, "the engine start wrote no plog under ~/ascend/log"
    run_playbook("playbooks/restart.yml", *INVENTORY)
    aside = node(host, f"ls -1d {LOG_DIR}/log.*").stdout.split()
    assert aside, "no log.<time> directory after the restart"
    newest = aside[-1]
    kept = sorted(node(host, f"find {newest}/debug/plog -name '*.log'").stdout.split())
    assert [p.rsplit("/", 1)[1] for p in kept] == [p.rsplit("/", 1)[1] for p in before]
    after = plogs(host, "log")
    assert after and not set(after) & set(before), "this start's logs are new files"

    run_playbook("playbooks/collect-logs.yml", *INVENTORY, "-e", f"ops_logs_dir={tmp_path}")
    (run,) = list(tmp_path.iterdir())
    got = run / host / "ascend"
    assert {p.name for p in (got / "log" / "debug" / "plog").iterdir()} == {p.rsplit("/", 1)[1] for p in after}
    old = got / newest.rsplit("/", 1)[1] / "debug" / "plog"
    assert {p.name for p in old.iterdir()} == {p.rsplit("/", 1)[1] for p in before}
    manifest = json.loads((run / host / "manifest.json").read_text())
    assert manifest["ascend_logs"]["entries"][0] == "log"
