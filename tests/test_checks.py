"""Node checks turn node reports into precise problems: node, device, found, expected."""

from __future__ import annotations

import copy

from ascend_fleet.checks import (
    disk_problems,
    failure_table,
    hardware_problems,
    link_problems,
    listening_ports,
    mesh_targets,
    parse_npu_smi_info,
    peers_of,
    port_problems,
    preflight_problems,
    probe_problems,
    superpod_problems,
    tls_problems,
    version_at_least,
)
from ascend_fleet.inventory import load_yaml_inventory
from ascend_fleet.topology import build_plan
from tests.conftest import REPO


def plan_of(name):
    return build_plan(*load_yaml_inventory(REPO / "inventories" / name / "hosts.yml"))


def npu(kind="a2", n=8, tls="0", base="10.0.0."):
    return {
        "present": True,
        "kind": kind,
        "chip": "910B3" if kind == "a2" else "910_9391",
        "device_count": n,
        "hccn_conf": True,
        "problems": [],
        "devices": [
            {
                "id": i,
                "conf_ip": f"{base}{i + 10}",
                "ip": f"{base}{i + 10}",
                "link": "UP",
                "tls_switch": tls,
                "vnic_ip": f"10.1.0.{i + 10}",
            }
            for i in range(n)
        ],
    }


NET = {
    "interfaces": ["lo", "enp67s0f0np0"],
    "enp67s0f0np0": {"device": "enp67s0f0np0", "ipv4": {"address": "198.51.100.10"}},
}
GOOD = {
    "docker_rc": 0,
    "disk": {"/var/lib/docker": 10**12, "/root/.cache": 10**12},
    "needs": [
        {"path": "/var/lib/docker", "gib": 60, "what": "engine image", "var": "preflight_min_free_gb_image"},
        {"path": "/root/.cache", "gib": 350, "what": "weights", "var": "preflight_min_free_gb_weights"},
    ],
    "listening": "",
    "engine_running": False,
    "time_sync": "yes",
    "configured_nic": "enp67s0f0np0",
}


def entry():
    return plan_of("a2-single")["hosts"]["node-0"]


def test_healthy_node_has_no_problem():
    report = preflight_problems("node-0", entry(), npu(), NET, GOOD)
    assert report == {"errors": [], "warnings": [], "nic": "enp67s0f0np0"}


def test_stale_hccn_conf_entry_named_with_both_values():
    bad = npu()
    bad["devices"][5]["ip"] = "10.0.0.99"
    errors = preflight_problems("node-0", entry(), bad, NET, GOOD)["errors"]
    assert errors == [
        "node-0: device 5: /etc/hccn.conf address_5=10.0.0.15 but hccn_tool -ip -g says 10.0.0.99 "
        "(a stale entry: KV transfers fail or crawl); make them agree and restart"
    ]


def test_device_count_and_chip_must_match_kind():
    errors = preflight_problems("node-0", entry(), npu(kind="a3", n=16), NET, GOOD)["errors"]
    assert any("16 NPU devices" in e and "expected 8" in e for e in errors)
    assert any("chip 910_9391 (a3)" in e and "set fleet_hw_kind: a3" in e for e in errors)


def test_missing_tools_docker_and_hccn_conf():
    report = preflight_problems("node-0", entry(), {"present": False}, NET, {**GOOD, "docker_rc": 1})
    assert any("Docker Engine is not running" in e for e in report["errors"])
    assert any("NPU tools missing" in e for e in report["errors"])
    no_conf = npu()
    no_conf["hccn_conf"] = False
    assert any(
        "/etc/hccn.conf missing" in e for e in preflight_problems("node-0", entry(), no_conf, NET, GOOD)["errors"]
    )


def test_address_on_no_nic_and_wrong_nic_name():
    other = {"interfaces": ["eth0"], "eth0": {"device": "eth0", "ipv4": {"address": "10.9.9.9"}}}
    assert any("on none of its NICs" in e for e in preflight_problems("node-0", entry(), npu(), other, GOOD)["errors"])
    moved = {
        "interfaces": ["eth1"],
        "eth1": {"device": "eth1", "ipv4": {"address": "10.9.9.9"}, "ipv4_secondaries": [{"address": "198.51.100.10"}]},
    }
    report = preflight_problems("node-0", entry(), npu(), moved, GOOD)
    assert report["nic"] == "eth1"
    assert report["errors"] == [
        "node-0: fleet_nic_name is enp67s0f0np0 but 198.51.100.10 is on eth1; "
        "set fleet_nic_name: eth1 (or remove it to derive it)"
    ]


def test_disk_space_counts_only_what_is_missing():
    small = {**GOOD, "disk": {"/var/lib/docker": 10**12, "/root/.cache": 5 * 2**30}}
    errors = preflight_problems("node-0", entry(), npu(), NET, small)["errors"]
    assert errors == [
        "node-0: /root/.cache has 5.0 GiB free, needs 350.0 GiB: 350.0 GiB for the weights "
        "(preflight_min_free_gb_weights); free space there, or lower the variable if the real size is smaller"
    ]
    # weights complete (marker): nothing needed, the same small disk passes
    done = copy.deepcopy(small)
    done["needs"][1]["present"] = True
    assert preflight_problems("node-0", entry(), npu(), NET, done)["errors"] == []
    # a partial download: only the rest is needed
    partial = copy.deepcopy(small)
    partial["needs"][1]["have_bytes"] = 346 * 2**30
    assert preflight_problems("node-0", entry(), npu(), NET, partial)["errors"] == []
    partial["needs"][1]["have_bytes"] = 340 * 2**30
    (error,) = preflight_problems("node-0", entry(), npu(), NET, partial)["errors"]
    assert "needs 10.0 GiB: 10.0 GiB for the weights (350.0 GiB less 340.0 GiB already there)" in error


def test_image_present_needs_nothing_and_one_filesystem_adds_up():
    needs = copy.deepcopy(GOOD["needs"])
    one_fs = {"/var/lib/docker": {"free": 100 * 2**30, "fs": 2049}, "/root/.cache": {"free": 100 * 2**30, "fs": 2049}}
    (error,) = disk_problems("n", one_fs, needs)
    assert error.startswith("n: /root/.cache and /var/lib/docker has 100.0 GiB free, needs 410.0 GiB: 60.0 GiB for")
    needs[0]["present"] = True
    needs[1]["present"] = True
    assert disk_problems("n", one_fs, needs) == []
    needs[1]["present"] = False
    needs[1]["gib"] = "0.08"  # a decimal from the inventory (lab sizes)
    assert disk_problems("n", {**one_fs, "/root/.cache": {"free": 76 * 2**20, "fs": 7}}, needs) == [
        "n: /root/.cache has 76.0 MiB free, needs 81.9 MiB: 81.9 MiB for the weights "
        "(preflight_min_free_gb_weights); free space there, or lower the variable if the real size is smaller"
    ]
    assert disk_problems("n", {}, needs[:1]) == ["n: cannot read free space of /var/lib/docker (for the engine image)"]


SS = """LISTEN 0      4096         0.0.0.0:8900       0.0.0.0:*  users:(("vllm",pid=3100,fd=21),("vllm",pid=3101,fd=2))
LISTEN 0      128          0.0.0.0:22         0.0.0.0:*    users:(("sshd",pid=310,fd=3))
LISTEN 0      5            0.0.0.0:1999       0.0.0.0:*    users:(("nc",pid=4242,fd=3))
"""
ENGINE_ID = "a" * 64
PROXY_ID = "b" * 64


def test_ports_blame_the_process_that_holds_them():
    plan = plan_of("a3-1p1d")["hosts"]["prefill-0"]
    assert plan["port_purposes"]["1999"].startswith("proxy port")
    api = plan["api_ports"][0]
    ss = SS.replace(":8900 ", f":{api} ")
    owners = {
        "3100": {"cmd": "python3 -m vllm serve", "container": ENGINE_ID},
        "3101": {"cmd": "python3 -m vllm serve", "container": ENGINE_ID},
        "4242": {"cmd": "nc -l 1999", "container": None},
    }
    own = {"engine": ENGINE_ID, "proxy": PROXY_ID}
    errors = port_problems("prefill-0", plan, ss, owners, own, engine_running=True)
    # our engine holds its API port on a re-run: fine; a stranger holds the proxy port
    assert errors == [
        "prefill-0: port 1999 (proxy port (fleet_proxy_port)) is held by pid 4242 (nc -l 1999); "
        "stop it, or move fleet_proxy_port"
    ]
    # our proxy on the proxy port: fine; our engine on the proxy port is not
    owners["4242"] = {"cmd": "python3 proxy.py", "container": PROXY_ID}
    assert port_problems("prefill-0", plan, ss, owners, own, engine_running=True) == []
    owners["4242"] = {"cmd": "python3 x.py", "container": ENGINE_ID}
    (error,) = port_problems("prefill-0", plan, ss, owners, own, engine_running=True)
    assert "held by pid 4242 (python3 x.py), our engine container" in error
    # a stranger on an engine API port is named too, and not blamed on the proxy
    owners = {"3100": {"cmd": "python3 other.py", "container": "c" * 64}, "3101": {"cmd": "x", "container": None}}
    errors = port_problems("prefill-0", plan, ss.replace(":1999 ", ":2999 "), owners, own, engine_running=False)
    assert errors == [
        f"prefill-0: port {api} (API port of DP rank 0) is held by pid 3100 (python3 other.py), container "
        "cccccccccccc; pid 3101 (x); stop it, or move fleet_vllm_start_port (the API ports)"
    ]


def test_port_without_owner_information():
    plan = entry()
    ss = "LISTEN 0 128 0.0.0.0:8900 0.0.0.0:*\n"
    assert port_problems("node-0", plan, ss, {}, {}, engine_running=True) == []
    (error,) = port_problems("node-0", plan, ss, {}, {}, engine_running=False)
    assert "port 8900 (API port of DP rank 0) is already in use by a process ss cannot name" in error
    assert listening_ports(SS) == {8900, 22, 1999}


def test_clock_not_synchronised_is_a_warning():
    report = preflight_problems("node-0", entry(), npu(), NET, {**GOOD, "time_sync": "no"})
    assert report["errors"] == [] and "clock synchronisation is no" in report["warnings"][0]


def test_tls_must_match_everywhere():
    odd = npu()
    odd["devices"][2]["tls_switch"] = "1"
    assert tls_problems({"a": npu(), "b": npu()}) == []
    problems = tls_problems({"a": npu(), "b": odd})
    assert len(problems) == 1 and "most are 0, but b/2 has 1" in problems[0]


def test_peers_follow_pd_and_dp_groups():
    plan = plan_of("a2-4p4d")
    assert peers_of(plan, "prefill-1") == ["decode-0", "decode-1", "decode-2", "decode-3"]
    assert peers_of(plan, "decode-2") == [
        "prefill-0",
        "prefill-1",
        "prefill-2",
        "prefill-3",
        "decode-0",
        "decode-1",
        "decode-3",
    ]
    assert peers_of(plan_of("a2-single"), "node-0") == []


def test_mesh_targets_a2_ping_device_ip_a3_hccs_ping_vnic():
    plan = plan_of("a2-4p4d")
    facts = {h: npu(base=f"10.0.{i}.") for i, h in enumerate(plan["hosts"])}
    probes = mesh_targets(plan, "prefill-0", facts)
    assert len(probes) == 4 * 8
    assert probes[0] == {"device": 0, "peer": "decode-0", "peer_device": 0, "address": "10.0.4.10", "method": "ping"}
    a3 = plan_of("a3-1p1d")
    probes = mesh_targets(a3, "decode-0", {"prefill-0": npu("a3", 16), "decode-0": npu("a3", 16)})
    assert len(probes) == 16 and {p["method"] for p in probes} == {"hccs_ping"}
    assert probes[3]["address"] == "10.1.0.13"


def test_failure_table_lists_node_device_peer():
    down = copy.deepcopy(npu())
    down["devices"][3]["link"] = "DOWN"
    rows = link_problems("decode-1", down, {"3": "Fault", "4": "Success"})
    probes = [
        {
            "device": 3,
            "peer": "decode-1",
            "peer_device": 3,
            "address": "10.0.0.13",
            "method": "ping",
            "ok": False,
            "summary": "3 packets transmitted, 0 received",
        },
        {
            "device": 4,
            "peer": "decode-1",
            "peer_device": 4,
            "address": "10.0.0.14",
            "method": "ping",
            "ok": True,
            "summary": "3 packets transmitted, 3 received",
        },
    ]
    rows += probe_problems("prefill-0", probes)
    assert len(rows) == 3  # the answered probe is not a problem
    table = failure_table(rows).splitlines()
    assert table[0].split() == ["node", "device", "peer", "check", "found", "expected"]
    assert table[2].split()[:5] == ["decode-1", "3", "-", "link", "DOWN"]
    assert table[3].split()[:5] == ["decode-1", "3", "-", "net_health", "Fault"]
    assert table[4].split()[:6] == ["prefill-0", "3", "decode-1/3", "(10.0.0.13)", "ping", "3"]
    assert table[4].split()[-1] == "reply"
    assert failure_table([]) == ""


# ---- NPU hardware checks, on output samples in the real tools' formats -------------------

A2_INFO = """+------------------------------------------------------------------------------------------------+
| npu-smi 25.5.0                   Version: 25.5.0                                               |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     910B3               | OK            | 96.2        37                0    / 0             |
| 0                         | 0000:C1:00.0  | 0           0    / 0          3380 / 65536         |
+===========================+===============+====================================================+
| 1     910B3               | Alarm         | 92.8        39                0    / 0             |
| 0                         | 0000:C2:00.0  | 0           0    / 0          3381 / 65536         |
+===========================+===============+====================================================+
| 2     910B3               | OK            | 95.1        36                0    / 0             |
| 0                         | 0000:81:00.0  | 0           0    / 0          64711/ 65536         |
+===========================+===============+====================================================+
+---------------------------+---------------+----------------------------------------------------+
| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |
+===========================+===============+====================================================+
| No running processes found in NPU 0                                                            |
+===========================+===============+====================================================+
| No running processes found in NPU 1                                                            |
+===========================+===============+====================================================+
| 2       0                 | 2165089       | python3.11               | 61328                   |
+===========================+===============+====================================================+
"""

B4_INFO = """+------------------------------------------------------------------------------------------------+
| npu-smi 24.1.rc2                 Version: 24.1.rc2                                             |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     910B4               | OK            | 86.5        40                0    / 0             |
| 0                         | 0000:C1:00.0  | 0           0    / 0          2853 / 32768         |
+===========================+===============+====================================================+
"""

A3_INFO = """+------------------------------------------------------------------------------------------------+
| npu-smi 25.5.0                   Version: 25.5.0                                               |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip  Phy-ID              | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     Ascend910           | OK            | 174.3       35                0    / 0             |
| 0     0                   | 0000:9D:00.0  | 0           0    / 0          3410 / 65536         |
+------------------------------------------------------------------------------------------------+
| 0     Ascend910           | OK            | -           36                0    / 0             |
| 1     1                   | 0000:9F:00.0  | 0           0    / 0          3125 / 65536         |
+===========================+===============+====================================================+
| 1     Ascend910           | OK            | 171.0       35                0    / 0             |
| 0     2                   | 0000:99:00.0  | 0           0    / 0          3409 / 65536         |
+------------------------------------------------------------------------------------------------+
| 1     Ascend910           | Warning       | -           36                0    / 0             |
| 1     3                   | 0000:9B:00.0  | 0           0    / 0          3124 / 65536         |
+===========================+===============+====================================================+
+---------------------------+---------------+----------------------------------------------------+
| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |
+===========================+===============+====================================================+
| 1       1                 | 77001         | python                   | 58000                   |
+===========================+===============+====================================================+
"""

BOARD = """        NPU ID                         : 0
        Software Version               : 25.5.0
        Firmware Version               : 7.8.0.5.216
        Compatibility                  : OK
        Board ID                       : 0x64
        Chip Count                     : 1
"""

SPOD = """        SDID                           : {sdid}
        Super Pod Size                 : 2
        Super Pod ID                   : {pod}
        Server Index                   : 0
        Chassis ID                     : 0
        Super Pod Type                 : 0
"""


def test_npu_smi_info_parsed_a2_a3_and_processes():
    a2 = parse_npu_smi_info(A2_INFO)
    assert a2["version"] == "25.5.0"
    assert [(c["device"], c["name"], c["health"], c["hbm_total_mb"]) for c in a2["chips"]] == [
        (0, "910B3", "OK", 65536),
        (1, "910B3", "Alarm", 65536),
        (2, "910B3", "OK", 65536),
    ]
    assert a2["processes"] == [
        {"card": 2, "chip": 0, "device": 2, "pid": 2165089, "name": "python3.11", "memory_mb": 61328}
    ]
    a3 = parse_npu_smi_info(A3_INFO)
    assert [(c["card"], c["chip"], c["device"], c["health"]) for c in a3["chips"]] == [
        (0, 0, 0, "OK"),
        (0, 1, 1, "OK"),
        (1, 0, 2, "OK"),
        (1, 1, 3, "Warning"),
    ]
    assert [(p["device"], p["pid"]) for p in a3["processes"]] == [(3, 77001)]
    assert parse_npu_smi_info("")["chips"] == []


def test_versions_order_like_ascend_releases():
    assert version_at_least("25.5.0", "25.5.0")
    assert version_at_least("25.5.1", "25.5.0") and version_at_least("26.0.rc1", "25.5.0")
    assert not version_at_least("25.5.rc1", "25.5.0")
    assert not version_at_least("24.1.rc2", "25.5.0") and not version_at_least("25.2.0", "25.5")
    assert version_at_least("7.8.0.5.216", "7.8.0") and not version_at_least("7.7.0.6.236", "7.8.0")


def hw_npu(info=A2_INFO, driver="25.5.0", firmware="7.8.0.5.216", fw_range="[7.0.0,7.8.99]"):
    facts = npu()
    facts.update(
        smi_info=info,
        driver_version=driver,
        driver_compatible_fw=fw_range,
        boards={"0": BOARD.replace("7.8.0.5.216", firmware)},
        process_owners={},
    )
    for dev in facts["devices"]:
        dev.update(
            lldp="Chassis ID TLV\n\tMAC: 00:e0:fc:1a:00:01\nPort ID TLV\n\tIfname: 400GE1/1/20:2\n",
            netdetect="netdetect address:10.0.0.1",
            gateway="default gateway:10.0.0.1, ifname:eth0",
            conf_netdetect="10.0.0.1",
            conf_netmask="255.255.255.0",
        )
    return facts


HEALTHY_A2 = A2_INFO.replace("Alarm", "OK   ").replace(
    "| 2       0                 | 2165089       | python3.11               | 61328                   |",
    "| No running processes found in NPU 2                                                            |",
)


def test_healthy_hardware_passes_and_recipe_declares_minimums():
    plan = entry()
    assert plan["hardware"]["hbm_gb"] == 64 and plan["hardware"]["driver_min"] == "25.5.0"
    assert hardware_problems("node-0", plan, hw_npu(HEALTHY_A2)) == {"errors": [], "warnings": []}
    report = preflight_problems("node-0", plan, hw_npu(HEALTHY_A2), NET, GOOD)
    assert report["errors"] == [] and report["warnings"] == []


def test_health_and_busy_device_named_with_fix():
    errors = hardware_problems("node-0", entry(), hw_npu())["errors"]
    assert errors == [
        "node-0: device 1 (NPU 1 chip 0, 910B3): npu-smi health is Alarm, expected OK; fix: read "
        "`npu-smi info -t health -i 1 -c 0` for the error code, clear it or reset the chip "
        "(npu-smi set -t reset -i 1 -c 0); replace the card if it persists",
        "node-0: device 2 (NPU 2 chip 0) is busy: pid 2165089 (python3.11) holds 61328 MB; fix: stop that "
        "process (kill 2165089) before deploying",
    ]
    # the process is our own engine (a re-run): not a problem; a Warning is a warning
    facts = hw_npu(A3_INFO)
    facts["process_owners"] = {"77001": {"cmd": "python -m vllm", "container": ENGINE_ID}}
    a3 = plan_of("a3-1p1d")["hosts"]["prefill-0"]
    report = hardware_problems("prefill-0", a3, facts, {"engine": ENGINE_ID})
    assert report["errors"] == []
    assert report["warnings"][0].startswith("prefill-0: device 3 (NPU 1 chip 1, Ascend910): npu-smi health is Warning")
    facts["process_owners"] = {"77001": {"cmd": "python train.py", "container": "d" * 64}}
    (busy,) = hardware_problems("prefill-0", a3, facts, {"engine": ENGINE_ID})["errors"]
    assert "device 3 (NPU 1 chip 1) is busy: pid 77001 (python train.py)" in busy and "docker stop dddddddddddd" in busy


def test_32gb_910b4_is_not_a_64gb_a2_and_old_driver_firmware():
    errors = hardware_problems("node-0", entry(), hw_npu(B4_INFO, driver="24.1.rc2", firmware="7.5.0.1.129"))["errors"]
    assert errors == [
        "node-0: NPU driver 24.1.rc2 (/usr/local/Ascend/driver/version.info) is older than 25.5.0, the minimum "
        "for this recipe on a2; fix: install Ascend HDK driver >= 25.5.0 (and matching firmware), then reboot",
        "node-0: NPU 0: firmware 7.5.0.1.129 is older than 7.8.0, the minimum for this recipe on a2; fix: "
        "upgrade the NPU firmware (Ascend HDK) on node-0",
        "node-0: device 0 (NPU 0 chip 0, 910B4): 32768 MB HBM, the recipe needs 64 GB per device "
        "(Atlas 800 A2 (64G x 8)); fix: deploy on nodes with 64 GB devices, or choose a recipe/profile sized "
        "for this card",
    ]
    # new enough, but outside what the installed driver supports
    (error,) = hardware_problems("node-0", entry(), hw_npu(HEALTHY_A2, firmware="7.9.1.0.1"))["errors"]
    assert "firmware 7.9.1.0.1 is outside the range the driver 25.5.0 supports (7.0.0..7.8.99" in error


def test_lldp_netdetect_gateway_per_device():
    facts = hw_npu(HEALTHY_A2)
    facts["devices"][3]["lldp"] = "Get lldp info failed, because no lldp packet was received!"
    facts["devices"][4]["netdetect"] = "netdetect address is not set"
    facts["devices"][5]["netdetect"] = "netdetect address:10.0.0.254"
    facts["devices"][6]["gateway"] = "default gateway is not set"
    facts["devices"][7]["gateway"] = "default gateway:10.9.9.1, ifname:eth7"
    errors = hardware_problems("node-0", entry(), facts)["errors"]
    assert [e.split(":")[1].strip() for e in errors] == [f"device {d}" for d in (3, 4, 5, 6, 7)]
    assert "hccn_tool -i 3 -lldp -g shows no switch port (Get lldp info failed" in errors[0]
    assert "fix: hccn_tool -i 4 -netdetect -s address" in errors[1]
    assert "netdetect address 10.0.0.254 but /etc/hccn.conf has netdetect_5=10.0.0.1" in errors[2]
    assert "no gateway (hccn_tool -i 6 -gateway -g)" in errors[3] and "-gateway -s gateway" in errors[3]
    assert "gateway 10.9.9.1 is not in the device's subnet 10.0.0.17/255.255.255.0" in errors[4]


def test_no_lldp_on_a_link_that_is_down_is_left_to_the_npu_network_phase():
    """A DOWN link sends no LLDP: the NPU-network phase names it (link DOWN), preflight does not."""
    facts = hw_npu(HEALTHY_A2)
    for dev in facts["devices"]:
        dev["link"] = "UP"
    facts["devices"][3].update(link="DOWN", lldp="Get lldp info failed, because no lldp packet was received!")
    assert hardware_problems("node-0", entry(), facts)["errors"] == []
    facts["devices"][3]["link"] = "UP"  # link up but no LLDP: the switch port or LLDP is wrong
    [error] = hardware_problems("node-0", entry(), facts)["errors"]
    assert "device 3" in error and "shows no switch port" in error


def test_a3_pd_pair_in_one_super_pod_or_said():
    plan = plan_of("a3-1p1d")

    def a3(pod, devices=16):
        return {"spod": {str(d): SPOD.format(sdid=d, pod=pod) for d in range(devices)}}

    assert superpod_problems(plan, {"prefill-0": a3(1), "decode-0": a3(1)}) == {"errors": [], "warnings": []}
    report = superpod_problems(plan, {"prefill-0": a3(1), "decode-0": a3(2)})
    assert report["errors"] == []
    assert report["warnings"][0].startswith(
        "the A3 nodes of this prefill/decode pair are not in one super pod (decode-0 in super pod 2, "
        "prefill-0 in super pod 1)"
    )
    broken = a3(1)
    broken["spod"]["5"] = "This device does not support querying spod-info."
    report = superpod_problems(plan, {"prefill-0": a3(1), "decode-0": broken})
    assert report["errors"] == [
        "decode-0: npu-smi info -t spod-info gives no Super Pod ID for devices 5; fix: update the NPU "
        "driver/firmware so spod-info works (A3 super pod)"
    ]
    # A2 nodes are not asked
    assert superpod_problems(plan_of("a2-4p4d"), {"prefill-0": {}}) == {"errors": [], "warnings": []}
