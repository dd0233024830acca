"""The lab's infrastructure: nodes, NPU stand-ins, fabric faults, ssh, registry, teardown.

Each test asserts what the toolkit will rely on, by parsing the same outputs the real
Atlas tools print (see docs in vllm-ascend's "Verify Multi-Node Communication").
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request

import pytest
import yaml

from .conftest import REPO, STATE, Lab, lab_unavailable, labctl

pytestmark = pytest.mark.lab

HCCN_TOOL = "/usr/local/Ascend/driver/tools/hccn_tool"
PING_SUMMARY = re.compile(
    r"^(\d+) packets transmitted, (\d+) received, ([\d.]+)% packet loss$", re.M)
# A fabric address no device owns (inside the a3-1p1d fabric subnet, past the devices).
NOBODY = 200


def ping_summary(text: str) -> tuple[int, int, float]:
    match = PING_SUMMARY.search(text)
    assert match, f"no ping summary in:\n{text}"
    return int(match[1]), int(match[2]), float(match[3])


def field(text: str, name: str) -> str:
    """Value of a 'name:value' / 'name: value' line of hccn_tool output."""
    match = re.search(rf"^{re.escape(name)}:\s*(\S+)", text, re.M)
    assert match, f"no {name!r} in:\n{text}"
    return match[1]


# ---------------------------------------------------------------------------------------
# Teardown first: its own one-node topology, before the shared a3-1p1d lab exists.


def docker_ids(*args: str) -> list[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True,
                          check=True).stdout.split()


def test_down_removes_everything_it_created():
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    topology = "a2-single"
    labctl("up", topology, "--no-engine")
    label = f"label=io.ascend-fleet.lab.topology={topology}"
    assert docker_ids("ps", "-q", "--filter", label), "up created no running node"
    assert (STATE / topology / "hosts.yml").exists()

    labctl("down", topology)
    assert docker_ids("ps", "-aq", "--filter", label) == []
    assert docker_ids("network", "ls", "-q", "--filter", label) == []
    assert docker_ids("volume", "ls", "-q", "--filter", label) == []
    assert not (STATE / topology).exists()
    others = [p for p in STATE.glob("*/lab.json") if not p.parent.name.startswith("_")]
    if not others:
        # Nothing else is up: the shared part (registry, networks, state) is gone too.
        assert docker_ids("network", "ls", "-q", "--filter", "label=io.ascend-fleet.lab") == []
        assert docker_ids("ps", "-aq", "--filter", "label=io.ascend-fleet.lab") == []
        assert not (STATE / "_lab").exists()


# ---------------------------------------------------------------------------------------
# Nodes and NPU stand-ins


def test_up_again_is_a_no_op(lab_a3: Lab):
    def started():
        return {h: json.loads(subprocess.run(
            ["docker", "inspect", n["container"]], capture_output=True, text=True,
            check=True).stdout)[0]["State"]["StartedAt"] for h, n in lab_a3.nodes.items()}

    before = started()
    labctl("up", lab_a3.topology, "--no-engine")
    assert started() == before


def test_npu_devices_and_driver_files(lab_a3: Lab):
    out = lab_a3.ssh("decode-0", "stat -c '%F %n' /dev/davinci* /dev/devmm_svm /dev/hisi_hdc; "
                     "ls /usr/local/dcmi /usr/local/Ascend/driver/lib64; "
                     "cat /usr/local/Ascend/driver/version.info /etc/ascend_install.info")
    assert out.returncode == 0, out.stderr
    devices = re.findall(r"^character special file /dev/davinci(\d+)$", out.stdout, re.M)
    assert sorted(map(int, devices)) == list(range(16))
    assert "character special file /dev/davinci_manager" in out.stdout
    assert "character special file /dev/devmm_svm" in out.stdout
    assert re.search(r"^Version=\d+\.\d+", out.stdout, re.M)
    assert "Driver_Install_Status=complete" in out.stdout


def test_inner_docker_accepts_the_tutorial_devices_and_mounts(lab_a3: Lab):
    # A tiny image made from the node's own dash and libc, then the tutorial's flags.
    script = (
        "tar -C / -ch usr/bin/dash usr/bin/cat lib64/ld-linux-x86-64.so.2 "
        "usr/lib/x86_64-linux-gnu/libc.so.6 | docker import - lab-mini:1 >/dev/null && "
        "docker run --rm --net=host --device /dev/davinci0 --device /dev/davinci15 "
        "--device /dev/davinci_manager --device /dev/devmm_svm --device /dev/hisi_hdc "
        "-v /usr/local/dcmi:/usr/local/dcmi "
        f"-v {HCCN_TOOL}:{HCCN_TOOL} "
        "-v /usr/local/bin/npu-smi:/usr/local/bin/npu-smi "
        "-v /usr/local/Ascend/driver/lib64/:/usr/local/Ascend/driver/lib64/ "
        "-v /usr/local/Ascend/driver/version.info:/usr/local/Ascend/driver/version.info "
        "-v /etc/ascend_install.info:/etc/ascend_install.info "
        "-v /etc/hccn.conf:/etc/hccn.conf "
        "lab-mini:1 /usr/bin/dash -c "
        f"'test -c /dev/davinci15 && test -f {HCCN_TOOL} && /usr/bin/cat /etc/hccn.conf'"
    )
    out = lab_a3.ssh("prefill-0", script)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"address_15={lab_a3.nodes['prefill-0']['device_ips'][15]}" in out.stdout


def test_npu_smi_info_table_a3(lab_a3: Lab):
    out = lab_a3.ssh("prefill-0", "npu-smi info")
    assert out.returncode == 0, out.stderr
    # NPU rows: "| 3     Ascend910  | OK ..."; chip rows: "| 1     7   | 0000:..."
    npus = re.findall(r"^\| (\d+)\s+Ascend910\s+\| OK", out.stdout, re.M)
    chips = re.findall(r"^\| ([01])\s+(\d+)\s+\| [0-9A-F]{4}:", out.stdout, re.M)
    assert len(npus) == 16 and sorted(set(map(int, npus))) == list(range(8))
    assert sorted(int(phy) for _, phy in chips) == list(range(16))
    spod = lab_a3.ssh("decode-0", "npu-smi info -t spod-info -i 7 -c 1")
    assert spod.returncode == 0, spod.stderr
    assert re.search(r"^\s+SDID\s+: \d+$", spod.stdout, re.M)
    assert re.search(r"^\s+Super Pod ID\s+: \d+$", spod.stdout, re.M)


def test_hccn_conf_matches_devices(lab_a3: Lab):
    out = lab_a3.ssh("prefill-0", "cat /etc/hccn.conf")
    conf = dict(line.split("=", 1) for line in out.stdout.split())
    for dev in range(16):
        assert conf[f"address_{dev}"] == lab_a3.nodes["prefill-0"]["device_ips"][dev]
        for key in ("netmask", "netdetect", "gateway", "send_arp_status"):
            assert f"{key}_{dev}" in conf


# ---------------------------------------------------------------------------------------
# hccn_tool answers


def test_hccn_tool_healthy_node(lab_a3: Lab):
    host = "prefill-0"
    loop = "; ".join(f"{HCCN_TOOL} -i {d} {c} -g" for d in range(16)
                     for c in ("-link", "-net_health", "-ip", "-tls"))
    out = lab_a3.ssh(host, loop)
    assert out.returncode == 0, out.stderr
    assert re.findall(r"^link status: (\w+)$", out.stdout, re.M) == ["UP"] * 16
    assert re.findall(r"^net health status: (\w+)$", out.stdout, re.M) == ["Success"] * 16
    assert re.findall(r"^ipaddr:(\S+)$", out.stdout, re.M) == lab_a3.nodes[host]["device_ips"]
    assert re.findall(r"tls switch\[(\d)\]", out.stdout) == ["0"] * 16
    lldp = lab_a3.hccn(host, 5, "-lldp", "-g")
    assert lldp.returncode == 0 and re.search(r"Ifname: \S+", lldp.stdout)
    vnic = lab_a3.hccn(host, 5, "-vnic", "-g")
    assert field(vnic.stdout, "vnic ipaddr") == lab_a3.nodes[host]["vnic_ips"][5]


def test_hccn_tool_ping_and_hccs_ping_peer(lab_a3: Lab):
    peer = lab_a3.nodes["decode-0"]
    out = lab_a3.hccn("prefill-0", 3, "-ping", "-g", "address", peer["device_ips"][3])
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith(f"device 3 PING {peer['device_ips'][3]}")
    assert len(re.findall(r"^recv seq=\d+,time=[\d.]+ms$", out.stdout, re.M)) == 3
    assert ping_summary(out.stdout) == (3, 3, 0.0)
    hccs = lab_a3.hccn("prefill-0", 3, "-hccs_ping", "-g", "address", peer["vnic_ips"][3])
    assert hccs.returncode == 0 and "This pkt ping success" in hccs.stdout


def test_hccn_tool_ping_failure_shape(lab_a3: Lab):
    subnet = lab_a3.data["networks"]["fabric"]["subnet"]
    nobody = subnet.rsplit(".", 2)[0] + f".{int(subnet.split('.')[2])}.{NOBODY}"
    out = lab_a3.hccn("prefill-0", 0, "-ping", "-g", "address", nobody, "pkt", "2")
    assert out.returncode != 0
    assert len(re.findall(r"^recv time out seq=\d+$", out.stdout, re.M)) == 2
    assert ping_summary(out.stdout) == (2, 0, 100.0)


def test_hccn_tool_errors_like_the_real_tool(lab_a3: Lab):
    bad_dev = lab_a3.hccn("prefill-0", 16, "-link", "-g")
    assert bad_dev.returncode != 0 and "invalid" in bad_dev.stderr
    bad_cmd = lab_a3.hccn("prefill-0", 0, "-nosuchcmd", "-g")
    assert bad_cmd.returncode != 0 and "not supported" in bad_cmd.stderr
    # A device without any address: none on the device (its address removed, as by a
    # link fault) and none preset in /etc/hccn.conf. Both are restored afterwards.
    out = lab_a3.ssh("prefill-0", "cp /etc/hccn.conf /tmp/h && sed -i '/^address_2=/d' "
                     f"/etc/hccn.conf && /lab/link down 2 && {HCCN_TOOL} -i 2 -ip -g; rc=$?; "
                     "/lab/link up 2; cat /tmp/h > /etc/hccn.conf; exit $rc")
    assert out.returncode != 0
    assert "Get ipconf failed, because no ip was preset there!" in out.stdout


# ---------------------------------------------------------------------------------------
# Faults


def test_link_down_up_whole_node(lab_a3: Lab):
    target = lab_a3.nodes["decode-0"]["device_ips"][0]
    labctl("link", "down", lab_a3.topology, "decode-0")
    try:
        links = lab_a3.ssh("decode-0", "; ".join(
            f"{HCCN_TOOL} -i {d} -link -g" for d in range(16)))
        assert re.findall(r"^link status: (\w+)$", links.stdout, re.M) == ["DOWN"] * 16
        health = lab_a3.hccn("decode-0", 0, "-net_health", "-g")
        assert field(health.stdout, "net health status") == "Fault"
        ping = lab_a3.hccn("prefill-0", 0, "-ping", "-g", "address", target, "pkt", "2")
        assert ping.returncode != 0 and ping_summary(ping.stdout)[1] == 0
    finally:
        labctl("link", "up", lab_a3.topology, "decode-0")
    assert field(lab_a3.hccn("decode-0", 0, "-link", "-g").stdout, "link status") == "UP"
    ping = lab_a3.hccn("prefill-0", 0, "-ping", "-g", "address", target)
    assert ping.returncode == 0 and ping_summary(ping.stdout)[1] == 3


def test_link_down_one_device(lab_a3: Lab):
    decode = lab_a3.nodes["decode-0"]
    labctl("link", "down", lab_a3.topology, "decode-0", "--device", "4")
    try:
        assert field(lab_a3.hccn("decode-0", 4, "-link", "-g").stdout, "link status") == "DOWN"
        assert field(lab_a3.hccn("decode-0", 5, "-link", "-g").stdout, "link status") == "UP"
        down = lab_a3.hccn("prefill-0", 4, "-ping", "-g", "address", decode["device_ips"][4],
                           "pkt", "2")
        assert down.returncode != 0 and ping_summary(down.stdout)[1] == 0
        # The faulty device cannot send either.
        out = lab_a3.hccn("decode-0", 4, "-ping", "-g", "address",
                          lab_a3.nodes["prefill-0"]["device_ips"][4], "pkt", "1")
        assert out.returncode != 0
        up = lab_a3.hccn("prefill-0", 5, "-ping", "-g", "address", decode["device_ips"][5])
        assert up.returncode == 0 and ping_summary(up.stdout)[1] == 3
    finally:
        labctl("link", "up", lab_a3.topology, "decode-0", "--device", "4")
    assert field(lab_a3.hccn("decode-0", 4, "-link", "-g").stdout, "link status") == "UP"
    back = lab_a3.hccn("prefill-0", 4, "-ping", "-g", "address", decode["device_ips"][4])
    assert back.returncode == 0


def test_stopped_node_is_unreachable(lab_a3: Lab):
    labctl("node", "stop", lab_a3.topology, "decode-0")
    try:
        out = lab_a3.ssh("decode-0", "true", timeout=60)
        assert out.returncode == 255  # ssh's own failure: no connection
        ping = lab_a3.hccn("prefill-0", 1, "-ping", "-g", "address",
                           lab_a3.nodes["decode-0"]["device_ips"][1], "pkt", "1")
        assert ping.returncode != 0
    finally:
        labctl("node", "start", lab_a3.topology, "decode-0")
    # Back with the same host key, addresses and device links.
    assert lab_a3.ssh("decode-0", "true").returncode == 0
    assert field(lab_a3.hccn("decode-0", 9, "-link", "-g").stdout, "link status") == "UP"


# ---------------------------------------------------------------------------------------
# ssh, inventory overlay, registry


def test_ssh_checks_host_keys(lab_a3: Lab, tmp_path):
    assert lab_a3.ssh("prefill-0", "true").returncode == 0
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    proc = subprocess.run([*lab_a3.ssh_cmd("prefill-0", known_hosts=empty), "true"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 255 and "Host key verification failed" in proc.stderr


def test_inventory_overlay_works_with_ansible(lab_a3: Lab):
    overlay = yaml.safe_load((lab_a3.state / "hosts.yml").read_text())
    shipped = yaml.safe_load((REPO / "inventories" / lab_a3.topology / "hosts.yml").read_text())
    shipped_hosts = {h for g in shipped["all"]["children"].values() for h in g["hosts"]}
    assert set(overlay["all"]["hosts"]) == shipped_hosts
    assert overlay["all"]["vars"]["image_registry_mirror"] == "198.18.0.1:5000"
    for hvars in overlay["all"]["hosts"].values():
        assert "StrictHostKeyChecking" not in hvars["ansible_ssh_common_args"]
    ansible = REPO / ".venv" / "bin" / "ansible"
    if not ansible.exists():
        pytest.skip("ansible not installed in .venv")
    proc = subprocess.run(
        [str(ansible), "all", "-i", f"inventories/{lab_a3.topology}",
         "-i", str(lab_a3.state / "hosts.yml"), "-m", "ansible.builtin.command",
         "-a", "cat /sys/class/net/{{ fleet_nic_name }}/address"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
        env={"PATH": "/usr/bin:/bin", "ANSIBLE_NOCOLOR": "1", "HOME": str(REPO / ".venv")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("CHANGED") == len(shipped_hosts)


def test_registry_serves_v2_and_can_stop(lab_a3: Lab):
    url = "http://198.18.0.1:5000/v2/"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    # From a node, as the inner dockerd will pull.
    code = lab_a3.ssh("decode-0", f"curl -s -o /dev/null -w '%{{http_code}}' {url}")
    assert code.stdout == "200"
    labctl("registry", "stop")
    try:
        code = lab_a3.ssh("decode-0", f"curl -s -o /dev/null -w '%{{http_code}}' {url}")
        assert code.stdout == "000"
    finally:
        labctl("registry", "start")
    with opener.open(url, timeout=10) as resp:
        assert resp.status == 200
