"""Node checks turn node reports into precise problems: node, device, found, expected."""

from __future__ import annotations

import copy

from ascend_fleet.checks import (
    failure_table,
    link_problems,
    mesh_targets,
    peers_of,
    preflight_problems,
    probe_problems,
    tls_problems,
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


def test_disk_space_and_ports():
    small = {
        **GOOD,
        "disk": {"/var/lib/docker": 10**12, "/root/.cache": 5 * 2**30},
        "listening": "LISTEN 0 128 0.0.0.0:8900 0.0.0.0:*\nLISTEN 0 128 [::]:22 [::]:*",
    }
    errors = preflight_problems("node-0", entry(), npu(), NET, small)["errors"]
    assert any(
        "/root/.cache has 5.0 GiB free, needs 350 GiB" in e and "preflight_min_free_gb_weights" in e for e in errors
    )
    assert any("ports 8900 are already in use" in e for e in errors)
    # our own running engine holds them: not a problem
    assert not any(
        "in use" in e
        for e in preflight_problems("node-0", entry(), npu(), NET, {**small, "engine_running": True})["errors"]
    )


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
