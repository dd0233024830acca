"""Each step of build_plan on its own, on the shipped inventories and recipes.

inventory -> nodes -> instances -> ranks and ports -> scripts -> checks: every test feeds a
step the real output of the steps before it and asserts the values it computes (the A2
4P4D decode DP32 ranks and ports, the 1M layouts) or the error it reports (naming the
host or instance, the value, and the variable to change).
"""

from __future__ import annotations

import copy
import itertools
import json
import shlex
from types import SimpleNamespace

import pytest

from ascend_fleet import plan_checks, plan_instances, plan_inventory, plan_nodes, plan_ranks, plan_scripts
from ascend_fleet.inventory import load_yaml_inventory
from ascend_fleet.plan_inventory import Report
from ascend_fleet.recipes import load_recipe
from ascend_fleet.serveflags import FlagSpec
from ascend_fleet.topology import build_plan
from tests.conftest import REPO, TOPOLOGIES

RECIPES = ["dsv4-flash-w8a8-mtp@v0.21.0rc1", "dsv4-flash-w8a8-mtp@v0.23.0"]


def raw(name: str, host_vars=None):
    hosts, groups = load_yaml_inventory(REPO / "inventories" / name / "hosts.yml")
    hosts = copy.deepcopy(hosts)
    for host, extra in (host_vars or {}).items():
        hosts[host].update(extra)
    return hosts, groups


def steps(name: str, upto: str = "ranks", mode: str = "render", host_vars=None, groups_edit=None):
    """Run the steps of build_plan in order up to ``upto``; every intermediate result."""
    hosts, groups = raw(name, host_vars)
    if groups_edit:
        groups_edit(groups)
    s = SimpleNamespace(rep=Report())
    s.inv = plan_inventory.read_inventory(hosts, groups, mode, None, None, s.rep)
    s.roles = plan_nodes.assign_roles(s.inv, s.rep)
    s.recipe = plan_nodes.choose_recipe(s.inv, s.roles, s.rep)
    s.spec = FlagSpec.load(s.recipe["vllm_version"])
    s.nodes = plan_nodes.plan_nodes(s.inv, s.roles, s.recipe, s.rep)
    if upto == "nodes":
        return s
    s.nodes_of = plan_instances.group_instances(s.roles, s.nodes)
    s.instances = plan_instances.plan_instances(s.inv, s.recipe, s.nodes, s.nodes_of, s.rep)
    s.by_name = {i["name"]: i for i in s.instances}
    s.real_extra = plan_instances.kv_side_sizes(s.instances, s.rep)
    s.proxy = plan_instances.plan_proxy(s.inv, s.roles, s.nodes, s.instances, s.recipe, s.rep)
    if upto == "instances":
        return s
    s.ranks = {}
    for host, node in s.nodes.items():
        inst = next(i for i in s.instances if i["key"] == node["instance"])
        assert plan_ranks.is_plannable(node, inst)
        s.ranks[host] = plan_ranks.plan_ranks(s.inv, host, node, inst, s.recipe, s.rep)
    return s


def inst_of(s, host):
    return next(i for i in s.instances if host in i["nodes"])


# ---- 1. inventory ------------------------------------------------------------------------


def test_read_inventory_coerces_and_reports_bad_values():
    hosts, groups = raw("a2-4p4d", {"decode-1": {"fleet_tp_size": "1", "fleet_kv_port": 70000}})
    groups["decode"].append(None)  # not a host name: dropped
    rep = Report()
    inv = plan_inventory.read_inventory(hosts, groups, "render", None, None, rep)
    assert inv.hosts["decode-1"]["fleet_tp_size"] == 1  # "1" from -e is the integer 1
    assert "fleet_kv_port" not in inv.hosts["decode-1"]  # the bad value is left out
    assert rep.errors == [
        "host decode-1: fleet_kv_port = 70000; expected a port number 1..65535 (set fleet_kv_port for decode-1)"
    ]
    assert inv.groups["decode"] == ["decode-0", "decode-1", "decode-2", "decode-3"]
    assert inv.var("decode-1", "fleet_hw_kind") == "a2" and inv.var("decode-1", "fleet_dp_size", 99) == 99
    assert inv.is_set("decode-1", "fleet_instance") and not inv.is_set("decode-1", "fleet_node_ip")


def test_read_inventory_option_types_from_argument_specs():
    hosts, groups = raw("a3-single", {"node-0": {"serve_privileged": "maybe"}})
    rep = Report()
    inv = plan_inventory.read_inventory(hosts, groups, "render", None, {"serve_privileged": "bool"}, rep)
    assert "serve_privileged" not in inv.hosts["node-0"]
    assert rep.errors == [
        "host node-0: serve_privileged = 'maybe' is a string; expected boolean (true/false/yes/no) "
        "(set serve_privileged for node-0 in the inventory or with -e)"
    ]


# ---- 2. nodes ----------------------------------------------------------------------------


def test_assign_roles_pd_and_dedicated_proxy():
    s = steps("a3-1p1d-proxy", "nodes")
    assert s.roles.role_of == {"prefill-0": "prefill", "decode-0": "decode"}
    assert s.roles.pd and s.roles.proxy_group == ["proxy-0"]
    assert s.roles.members == {"single": [], "prefill": ["prefill-0"], "decode": ["decode-0"]}
    assert s.rep.errors == [] and s.rep.warnings == []
    single = steps("a2-single", "nodes")
    assert single.roles.role_of == {"node-0": "single"} and not single.roles.pd


def test_assign_roles_host_in_two_roles():
    s = steps("a2-4p4d", "nodes", groups_edit=lambda g: g["decode"].append("prefill-1"))
    assert s.roles.role_of["prefill-1"] == "prefill"
    assert (
        "host prefill-1: in groups prefill, decode; a node has exactly one role "
        "(remove it from all but one of single/prefill/decode)"
    ) in s.rep.errors


@pytest.mark.parametrize("recipe_id", RECIPES)
def test_choose_recipe_and_container(recipe_id):
    hosts, groups = raw("a2-4p4d")
    for hv in hosts.values():
        hv["fleet_recipe"] = recipe_id
    rep = Report()
    inv = plan_inventory.read_inventory(hosts, groups, "render", None, None, rep)
    recipe = plan_nodes.choose_recipe(inv, plan_nodes.assign_roles(inv, rep), rep)
    assert recipe["id"] == recipe_id and recipe["hardware"]["a2"]["devices"] == 8
    assert plan_nodes.plan_container(recipe, rep) == {"privileged": False, "reason": ""}
    assert rep.errors == [] and rep.warnings == []


def test_choose_recipe_refuses_disagreement_and_unknown():
    s = steps("a3-1p1d", "nodes", host_vars={"decode-0": {"fleet_recipe": RECIPES[1]}})
    assert f"fleet_recipe: hosts disagree ({RECIPES[0]}, {RECIPES[1]}); set it once in all.vars" in s.rep.errors
    hosts, groups = raw("a3-single", {"node-0": {"fleet_recipe": "nope@v1"}})
    rep = Report()
    inv = plan_inventory.read_inventory(hosts, groups, "render", None, None, rep)
    assert plan_nodes.choose_recipe(inv, plan_nodes.assign_roles(inv, rep), rep) is None
    assert rep.errors[0].startswith("fleet_recipe: unknown recipe 'nope@v1'; known: ")
    assert "(set fleet_recipe, or add a directory with fleet_recipe_paths)" in rep.errors[0]


def test_plan_container_warns_about_privileged():
    s = steps("a3-single", "nodes")
    recipe = {**s.recipe, "container": {"privileged": True, "reason": "the tutorial runs it so"}}
    rep = Report()
    assert plan_nodes.plan_container(recipe, rep)["privileged"] is True
    assert rep.warnings == [
        f"recipe {recipe['id']}: the engine containers run privileged (docker run --privileged=true): "
        "the tutorial runs it so; set serve_privileged: false to run them without"
    ]


def test_plan_nodes_a2_4p4d():
    s = steps("a2-4p4d", "nodes")
    assert list(s.nodes) == [f"prefill-{i}" for i in range(4)] + [f"decode-{i}" for i in range(4)]
    node = s.nodes["decode-2"]
    assert node == {
        "host": "decode-2",
        "role": "decode",
        "hw_kind": "a2",
        "profile": "a2-decode",
        "device_count": 8,
        "hardware": s.recipe["hardware"]["a2"],
        "node_ip": "203.0.113.23",
        "connect_address": "203.0.113.23",
        "nic_name": "enp67s0f0np0",
        "instance": "decode:decode-0",
        "instance_name": "decode-0",
    }


def test_plan_nodes_errors_name_host_value_and_variable():
    s = steps(
        "a2-4p4d",
        "nodes",
        mode="deploy",
        host_vars={
            "prefill-1": {"fleet_hw_kind": "a9"},
            "prefill-2": {"fleet_profile": "a2-decode"},
            "decode-3": {"fleet_instance": None, "ansible_host": "10.0.0.4"},
        },
    )
    assert "prefill-1" not in s.nodes and "prefill-2" not in s.nodes and "decode-3" not in s.nodes
    assert (
        "host prefill-1: fleet_hw_kind = 'a9'; expected one of a2, a3 (a2: Atlas 800 A2, 8 devices; "
        "a3: Atlas 800 A3, 16 devices)"
    ) in s.rep.errors
    assert (
        "host prefill-2: fleet_profile = 'a2-decode' is a decode profile but the host is in group "
        "prefill; set fleet_profile to a prefill profile"
    ) in s.rep.errors
    assert (
        "host decode-3: fleet_instance is not set; every decode host names the instance it belongs "
        "to (nodes of one DP group share a name)"
    ) in s.rep.errors
    # deploy mode: the documentation addresses of the shipped inventory are refused, per host
    assert (
        "host decode-0: ansible_host = '203.0.113.21' is a documentation placeholder (203.0.113.0/24); "
        "the shipped inventories use these so nobody deploys to them by accident; set ansible_host "
        "for decode-0 in the inventory to the node's real address"
    ) in s.rep.errors
    assert not any(e.startswith("host decode-3: ansible_host") for e in s.rep.errors)


def test_proxy_host_and_shared_address_checks():
    s = steps("a3-1p1d-proxy", "nodes", mode="deploy", host_vars={"proxy-0": {"fleet_node_ip": "proxy.example"}})
    rep = Report()
    plan_nodes.check_proxy_host_addresses(s.inv, s.roles, rep)
    assert rep.errors == [
        "host proxy-0: ansible_host = '198.51.100.30' is a documentation placeholder (198.51.100.0/24); "
        "the shipped inventories use these so nobody deploys to them by accident; set ansible_host for "
        "proxy-0 (the PD proxy host) in the inventory to its real address",
        "host proxy-0: proxy address 'proxy.example' is a hostname; the proxy binds an IP: "
        "set fleet_node_ip for proxy-0",
    ]
    s = steps("a2-4p4d", "nodes", host_vars={"decode-3": {"ansible_host": "198.51.100.12"}})
    assert plan_nodes.host_addresses(s.inv, s.roles)["198.51.100.12"] == ["prefill-1", "decode-3"]
    rep = Report()
    plan_nodes.check_shared_addresses(s.inv, s.roles, rep)
    assert rep.errors == [
        "hosts prefill-1, decode-3: share the address 198.51.100.12, the same machine under 2 names; "
        "each node needs its own (fix ansible_host / fleet_node_ip)"
    ]


# ---- 3. instances ------------------------------------------------------------------------


def test_group_instances_order():
    s = steps("a2-4p4d", "nodes")
    nodes_of = plan_instances.group_instances(s.roles, s.nodes)
    assert list(nodes_of) == [f"prefill:prefill-{i}" for i in range(4)] + ["decode:decode-0"]
    assert nodes_of["decode:decode-0"] == ["decode-0", "decode-1", "decode-2", "decode-3"]


def test_check_instance_agreement():
    s = steps("a2-4p4d", "nodes", host_vars={"decode-2": {"fleet_tp_size": 2}})
    rep = Report()
    plan_instances.check_instance_agreement(s.inv, s.nodes, plan_instances.group_instances(s.roles, s.nodes), rep)
    assert rep.errors == [
        "instance decode-0: fleet_tp_size differs between its hosts (2, unset); set it once for the whole "
        "instance (e.g. as a group variable), not on some of its hosts"
    ]


def test_plan_instances_a2_4p4d_decode_dp32():
    s = steps("a2-4p4d", "instances")
    assert s.rep.errors == []
    dec = s.by_name["decode-0"]
    assert (dec["dp_size"], dec["tp_size"], dec["master"], dec["dp_address"], dec["dp_rpc_port"]) == (
        32,
        1,
        "decode-0",
        "203.0.113.21",
        12321,
    )
    assert (dec["engine_id"], dec["kv_port"], dec["kv_port_range"], dec["kv_role"]) == (
        4,
        30400,
        [30400, 30431],
        "kv_consumer",
    )
    assert [(s.nodes[h]["dp_rank_start"], s.nodes[h]["dp_size_local"]) for h in dec["nodes"]] == [
        (0, 8),
        (8, 8),
        (16, 8),
        (24, 8),
    ]
    for i in range(4):
        pre = s.by_name[f"prefill-{i}"]
        assert (pre["dp_size"], pre["engine_id"], pre["kv_port"], pre["kv_port_range"]) == (
            8,
            i,
            30000 + 100 * i,
            [30000 + 100 * i, 30007 + 100 * i],
        )
    assert s.real_extra == {"prefill": {"dp_size": 8, "tp_size": 1}, "decode": {"dp_size": 32, "tp_size": 1}}


@pytest.mark.parametrize(("topology", "local"), [("a2-1m-4p4d", 1), ("a3-1m-2p2d", 2)])
def test_plan_instances_1m_layout(topology, local):
    s = steps(topology, "instances")
    assert s.rep.errors == []
    for name, engine, kv in (("prefill-0", 0, 30000), ("decode-0", 1, 30100)):
        inst = s.by_name[name]
        assert (inst["dp_size"], inst["tp_size"], inst["engine_id"], inst["kv_port"]) == (4, 8, engine, kv)
        assert inst["kv_port_range"] == [kv, kv + 31]
        assert [s.nodes[h]["dp_rank_start"] for h in inst["nodes"]] == list(range(0, 4, local))
        assert inst["dp_address"] == s.nodes[inst["nodes"][0]]["node_ip"]
    assert s.real_extra == {"prefill": {"dp_size": 4, "tp_size": 8}, "decode": {"dp_size": 4, "tp_size": 8}}


def test_assign_dp_ranks_overlap_and_gap():
    s = steps("a2-4p4d", "nodes", host_vars={"decode-1": {"fleet_dp_rank_start": 4}})
    inst = {"name": "decode-0", "nodes": ["decode-0", "decode-1", "decode-2", "decode-3"], "tp_size": 1}
    rep = Report()
    plan_instances.assign_dp_ranks(s.inv, inst, s.nodes, s.recipe["profiles"]["a2-decode"], rep)
    assert inst["dp_size"] == 32 and s.nodes["decode-2"]["dp_rank_start"] == 12
    assert rep.errors[:4] == [
        f"instance decode-0: DP rank {r} on both decode-0 and decode-1; fix fleet_dp_rank_start / fleet_dp_size_local"
        for r in range(4, 8)
    ]
    assert rep.errors[4] == (
        "instance decode-0: DP ranks must cover [0, 32) exactly once; missing [28, 29, 30, 31], outside none "
        "(nodes: decode-0 0..+8, decode-1 4..+8, decode-2 12..+8, decode-3 20..+8); "
        "fix fleet_dp_size / fleet_dp_rank_start / fleet_dp_size_local"
    )


def test_assign_dp_ranks_too_many_devices():
    s = steps("a3-1p1d", "nodes", host_vars={"prefill-0": {"fleet_dp_size_local": 8}})
    inst = {"name": "prefill-0", "nodes": ["prefill-0"], "tp_size": 4}
    rep = Report()
    plan_instances.assign_dp_ranks(s.inv, inst, s.nodes, s.recipe["profiles"]["a3-prefill"], rep)
    assert rep.errors == [
        "host prefill-0: tp_size 4 x dp_size_local 8 = 32 devices, but an a3 node has 16; "
        "lower fleet_tp_size or fleet_dp_size_local"
    ]


def test_choose_dp_master_follows_rank_zero():
    starts = {"decode-0": 8, "decode-1": 0, "decode-2": 16, "decode-3": 24}
    s = steps("a2-4p4d", "nodes", host_vars={h: {"fleet_dp_rank_start": v} for h, v in starts.items()})
    inst = {"name": "decode-0", "nodes": ["decode-0", "decode-1", "decode-2", "decode-3"], "tp_size": 1}
    rep = Report()
    plan_instances.assign_dp_ranks(s.inv, inst, s.nodes, s.recipe["profiles"]["a2-decode"], rep)
    plan_instances.choose_dp_master(s.inv, inst, s.nodes, s.recipe, rep)
    assert rep.errors == []
    assert (inst["master"], inst["dp_address"], inst["dp_rpc_port"]) == ("decode-1", "203.0.113.22", 12321)


def test_assign_kv_identity_unique():
    s = steps("a2-4p4d", "instances", host_vars={"prefill-2": {"fleet_engine_id": 0}})
    assert (
        "instance prefill-2: engine_id 0 is also used by instance prefill-0; every P/D instance needs "
        "its own (fleet_engine_id)"
    ) in s.rep.errors
    assert (
        "instance prefill-2: kv_port 30000 is also the kv_port of instance prefill-0; the tutorial: the "
        "kv_port must be unique for each P instance (fleet_kv_port, or fleet_engine_id with "
        "fleet_kv_port_base/stride)"
    ) in s.rep.errors
    # a base moves every kv port: engine k at base + k x stride
    moved = steps("a2-4p4d", "instances", host_vars={h: {"fleet_kv_port_base": 36000} for h in raw("a2-4p4d")[0]})
    assert [i["kv_port"] for i in moved.instances] == [36000, 36100, 36200, 36300, 36400]


def test_kv_side_sizes_one_shape_per_side():
    s = steps("a2-4p4d", "instances")
    instances = copy.deepcopy(s.instances)
    instances[1]["dp_size"] = 4
    rep = Report()
    sizes = plan_instances.kv_side_sizes(instances, rep)
    assert sizes["prefill"] == {"dp_size": 4, "tp_size": 1}
    assert rep.errors == [
        "group prefill: its instances differ in size ([(4, 1), (8, 1)]); the kv connector describes one "
        "prefill shape: make every prefill instance the same DP x TP"
    ]


def test_plan_proxy_placement():
    s = steps("a2-4p4d", "instances")
    assert s.proxy == {
        "host": "prefill-0",
        "address": "198.51.100.11",
        "port": 1999,
        "script": s.recipe["proxy"]["script"],
        "python": "python",
        "prefill": [],
        "decode": [],
    }
    dedicated = steps("a3-1p1d-proxy", "instances")
    assert (dedicated.proxy["host"], dedicated.proxy["address"]) == ("proxy-0", "198.51.100.30")
    assert steps("a3-single", "instances").proxy is None


# ---- 4. ranks and ports ------------------------------------------------------------------


def test_plan_ranks_a2_4p4d_decode():
    s = steps("a2-4p4d")
    ranks = s.ranks["decode-3"]
    assert [r["dp_rank"] for r in ranks] == list(range(24, 32))
    assert [r["api_port"] for r in ranks] == list(range(7100, 7108))
    assert [r["devices"] for r in ranks] == [str(d) for d in range(8)]
    assert [r["kv_ports"] for r in ranks] == [[30400 + r] for r in range(24, 32)]
    assert s.ranks["prefill-3"][7] == {"local": 7, "dp_rank": 7, "devices": "7", "api_port": 7107, "kv_ports": [30307]}


def test_plan_ranks_1m_and_single():
    s = steps("a3-1m-2p2d")
    assert s.ranks["decode-1"] == [
        {
            "local": i,
            "dp_rank": 2 + i,
            "devices": ",".join(str(d) for d in range(8 * i, 8 * i + 8)),
            "api_port": 7100 + i,
            "kv_ports": list(range(30100 + 8 * (2 + i), 30100 + 8 * (3 + i))),
        }
        for i in range(2)
    ]
    single = steps("a3-single", host_vars={"node-0": {"fleet_api_port": 9000}})
    assert single.ranks["node-0"] == [
        {"local": 0, "dp_rank": 0, "api_port": 9000, "devices": ",".join(str(d) for d in range(16))}
    ]


def test_plan_ranks_visible_devices():
    s = steps(
        "a3-1p1d",
        host_vars={"prefill-0": {"fleet_visible_devices": ["12,13,14,15", "0,1,2,3", "4,5,6,7", "8,9,10,11"]}},
    )
    assert s.rep.errors == []
    assert [r["devices"] for r in s.ranks["prefill-0"]] == ["12,13,14,15", "0,1,2,3", "4,5,6,7", "8,9,10,11"]
    rep = Report()
    plan_ranks.check_visible_devices("prefill-0", ["0,1,2,3", "3,4,5,16", "1,2"], s.nodes["prefill-0"], 4, 4, rep)
    assert rep.errors == [
        "host prefill-0: fleet_visible_devices has 3 entries; expected one per local DP rank (4)",
        "host prefill-0: device 3 in fleet_visible_devices is used twice (a3: 0..15)",
        "host prefill-0: device 16 in fleet_visible_devices is not on this node (a3: 0..15)",
        "host prefill-0: fleet_visible_devices entry '1,2'; expected 4 comma-separated device ids (tp_size)",
    ]


def test_host_ports_and_purposes():
    s = steps("a2-4p4d")
    dec = s.by_name["decode-0"]
    ports = plan_ranks.host_ports("decode-0", s.nodes["decode-0"], dec, s.ranks["decode-0"], s.proxy)
    assert ports[:2] == [(7100, "API port of DP rank 0"), (30400, "kv side-channel port of DP rank 0")]
    assert ports[-1] == (12321, "DP RPC port (fleet_dp_rpc_port)") and len(ports) == 17
    pre = plan_ranks.host_ports(
        "prefill-0", s.nodes["prefill-0"], s.by_name["prefill-0"], s.ranks["prefill-0"], s.proxy
    )
    assert pre[-2:] == [(12321, "DP RPC port (fleet_dp_rpc_port)"), (1999, "proxy port (fleet_proxy_port)")]
    other = plan_ranks.host_ports("decode-1", s.nodes["decode-1"], dec, s.ranks["decode-1"], s.proxy)
    assert len(other) == 16  # no RPC port: decode-1 is not the DP master
    rep = Report()
    assert plan_ranks.check_ports("decode-0", ports, rep) == dict(ports) and rep.errors == []


def test_check_ports_clash_and_range():
    ports = [(7100 + i, f"API port of DP rank {i}") for i in range(5)]
    ports += [(7100 + i, f"kv side-channel port of DP rank {i}") for i in range(5)] + [
        (0, "proxy port (fleet_proxy_port)")
    ]
    rep = Report()
    by_port = plan_ranks.check_ports("decode-0", ports, rep)
    assert sorted(by_port) == list(range(7100, 7105))
    assert rep.errors == [
        "host decode-0: proxy port (fleet_proxy_port) = 0; expected a port number 1..65535",
        "host decode-0: 5 port clashes: port 7100 is both the API port of DP rank 0 and the kv side-channel "
        "port of DP rank 0; port 7101 is both the API port of DP rank 1 and the kv side-channel port of DP "
        "rank 1; port 7102 is both the API port of DP rank 2 and the kv side-channel port of DP rank 2 "
        "(and 2 more); move one range (fleet_vllm_start_port, fleet_kv_port / fleet_kv_port_base, "
        "fleet_dp_rpc_port, fleet_proxy_port)",
    ]


# ---- 5. scripts --------------------------------------------------------------------------


def test_kv_transfer_config_decode_dp32():
    s = steps("a2-4p4d")
    profile = s.recipe["profiles"]["a2-decode"]
    rep = Report()
    cfg = plan_scripts.kv_transfer_config(
        s.inv, "decode-1", profile, s.by_name["decode-0"], s.real_extra, s.recipe, rep
    )
    assert cfg == {
        "kv_connector": "MooncakeHybridConnector",
        "kv_role": "kv_consumer",
        "kv_port": "30400",
        "engine_id": "4",
        "kv_connector_extra_config": {"prefill": {"dp_size": 8, "tp_size": 1}, "decode": {"dp_size": 32, "tp_size": 1}},
    }
    assert rep.errors == []


def test_kv_transfer_config_refuses_wrong_override():
    bad = {"prefill": {"dp_size": 2, "tp_size": 8}, "decode": {"dp_size": 32, "tp_size": 1}}
    s = steps("a2-4p4d", host_vars={"decode-1": {"fleet_kv_extra_config": json.dumps(bad)}})
    rep = Report()
    plan_scripts.kv_transfer_config(
        s.inv, "decode-1", s.recipe["profiles"]["a2-decode"], s.by_name["decode-0"], s.real_extra, s.recipe, rep
    )
    assert rep.errors == [
        f"host decode-1: fleet_kv_extra_config = {json.dumps(bad)} does not match the real instance sizes "
        f"{json.dumps(s.real_extra)}; remove the override or fix the instance sizes"
    ]


def test_serve_args_overrides_quoted_and_owned_flags_refused():
    s = steps(
        "a2-4p4d", host_vars={"decode-1": {"fleet_serve_overrides": {"--max-num-seqs": "16; rm -rf /", "--port": 9}}}
    )
    inst = s.by_name["decode-0"]
    profile = s.recipe["profiles"]["a2-decode"]
    cfg = plan_scripts.kv_transfer_config(s.inv, "decode-1", profile, inst, s.real_extra, s.recipe, Report())
    rep = Report()
    args = dict(
        (flag, value)
        for flag, value in plan_scripts.serve_args(s.inv, "decode-1", profile, inst, cfg, s.recipe, s.spec, rep)
    )
    assert args["--max-num-seqs"] == "'16; rm -rf /'"  # a user's value: one quoted word
    assert args["--data-parallel-rank"] == "$4"  # the launcher's positional stays bare
    assert json.loads(shlex.split(args["--kv-transfer-config"])[0]) == cfg
    assert args["--enable-expert-parallel"] is None
    assert rep.errors == [
        "host decode-1: fleet_serve_overrides sets --port, which the plan owns; expected it unset there: "
        "use the fleet_* variable instead (fleet_api_port / fleet_vllm_start_port, fleet_tp_size, "
        "fleet_dp_size, fleet_dp_size_local, fleet_dp_rank_start, fleet_dp_address, fleet_dp_rpc_port)"
    ]


def test_script_env_timeout_override_and_removal():
    s = steps(
        "a2-4p4d",
        host_vars={
            "decode-1": {
                "fleet_engine_ready_timeout_s": 1800,
                "fleet_env_overrides": {"TASK_QUEUE_ENABLE": None, "MY_VAR": "a b$c"},
            }
        },
    )
    profile = s.recipe["profiles"]["a2-decode"]
    env = plan_scripts.script_env(s.inv, "decode-1", profile, "decode", s.ranks["decode-1"])
    names = [n for n, _ in env]
    assert "TASK_QUEUE_ENABLE" not in names
    assert env[-2:] == [["MY_VAR", "'a b$c'"], ["VLLM_ENGINE_READY_TIMEOUT_S", "1800"]]
    assert env[0] == ["LD_PRELOAD", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2:$LD_PRELOAD"]
    single = steps("a3-single", host_vars={"node-0": {"fleet_visible_devices": ["8,9,10,11,12,13,14,15"]}})
    env = plan_scripts.script_env(
        single.inv, "node-0", single.recipe["profiles"]["a3-single"], "single", single.ranks["node-0"]
    )
    assert ["ASCEND_RT_VISIBLE_DEVICES", "8,9,10,11,12,13,14,15"] in env


def test_model_path_must_be_under_the_cache():
    s = steps(
        "a3-single", host_vars={"node-0": {"fleet_model_path": "/data/dsv4", "weights_cache_dir": "/root/.cache"}}
    )
    rep = Report()
    assert plan_scripts.model_path(s.inv, "node-0", s.recipe, rep) == "/data/dsv4"
    assert rep.errors == [
        "host node-0: fleet_model_path = '/data/dsv4' is not inside weights_cache_dir = '/root/.cache'; the "
        "engines mount only weights_cache_dir, so they would not find the weights: put fleet_model_path under "
        "weights_cache_dir (or set weights_cache_dir to a directory above it)"
    ]
    ok = steps("a3-single")
    rep = Report()
    assert plan_scripts.model_path(ok.inv, "node-0", ok.recipe, rep) == ok.recipe["model"]["path"]
    assert rep.errors == []


def test_launcher_args_and_device_map():
    s = steps("a2-4p4d")
    args = plan_scripts.launcher_args(s.by_name["decode-0"], s.nodes["decode-2"], 7100)
    assert args == [
        ["--dp-size", 32],
        ["--tp-size", 1],
        ["--dp-size-local", 8],
        ["--dp-rank-start", 16],
        ["--dp-address", "203.0.113.21"],
        ["--dp-rpc-port", 12321],
        ["--vllm-start-port", 7100],
    ]
    ranks = [
        {"local": 0, "devices": "4,5,6,7"},
        {"local": 1, "devices": "0,1,2,3"},
        {"local": 2, "devices": "8,9,10,11"},
    ]
    assert plan_scripts.device_map(ranks, 4) == [["0,1,2,3", "4,5,6,7"], ["4,5,6,7", "0,1,2,3"]]


@pytest.mark.parametrize("recipe_id", RECIPES)
def test_host_entry_is_build_plans_entry(recipe_id):
    """The per-host step gives exactly the entry build_plan returns (less the port summary)."""
    hv = {h: {"fleet_recipe": recipe_id} for h in raw("a2-4p4d")[0]}
    s = steps("a2-4p4d", host_vars=hv)
    plan = build_plan(*raw("a2-4p4d", hv))
    for host in ("prefill-0", "decode-2"):
        rep = Report()
        entry = plan_scripts.host_entry(
            s.inv, host, s.nodes[host], inst_of(s, host), s.ranks[host], s.recipe, s.spec, s.real_extra, s.proxy, rep
        )
        want = {k: v for k, v in plan["hosts"][host].items() if k not in ("bound_ports", "port_purposes", "proxy")}
        assert entry == want and rep.errors == []
    assert entry["image"] == f"{s.recipe['image']['repository']}:{s.recipe['image']['tag']}"
    assert entry["files"] == ["run_dp_template.sh", "launch.sh"] and entry["served_name"] == "dsv4"


def test_finish_proxy_lists_and_entrypoint():
    plan = build_plan(*raw("a2-4p4d"))
    proxy = plan["proxy"]
    assert proxy["prefill"] == [[f"198.51.100.{11 + n}", 7100 + r] for n in range(4) for r in range(8)]
    assert proxy["decode"] == [[f"203.0.113.{21 + n}", 7100 + r] for n in range(4) for r in range(8)]
    assert plan["entrypoint"] == {"host": "prefill-0", "address": "198.51.100.11", "port": 1999, "served_name": "dsv4"}
    s = steps("a3-1p1d-proxy")
    fresh = {"hosts": {}, "proxy_hosts": {}}
    for host, node in s.nodes.items():
        fresh["hosts"][host] = plan_scripts.host_entry(
            s.inv, host, node, inst_of(s, host), s.ranks[host], s.recipe, s.spec, s.real_extra, s.proxy, Report()
        )
    plan_scripts.finish_proxy(s.inv, fresh, s.instances, s.proxy, s.recipe)
    assert fresh["proxy"]["prefill"] == [["198.51.100.11", 7100 + r] for r in range(4)]
    assert fresh["proxy"]["decode"] == [["203.0.113.21", 7100 + r] for r in range(16)]
    host = fresh["proxy_hosts"]["proxy-0"]
    assert (host["role"], host["hw_kind"], host["node_ip"], host["files"], host["bound_ports"]) == (
        "proxy",
        "a3",
        "198.51.100.30",
        ["proxy.sh"],
        [1999],
    )
    assert host["image"].endswith("-a3") and "proxy" not in fresh["hosts"]["prefill-0"]


def test_single_entrypoint():
    plan = build_plan(*raw("a3-single", {"node-0": {"fleet_api_port": 9001}}))
    assert plan_scripts.single_entrypoint(plan) == {
        "host": "node-0",
        "address": "198.51.100.10",
        "port": 9001,
        "served_name": "dsv4",
    }


# ---- 6. checks ---------------------------------------------------------------------------


def test_check_serve_passes_every_shipped_host_and_refuses_recompute_on_prefill():
    for topology in TOPOLOGIES:
        plan = build_plan(*raw(topology))
        spec = FlagSpec.load("0.21.0")
        for host, entry in plan["hosts"].items():
            rep = Report()
            plan_checks.check_serve(host, entry, spec, rep)
            assert rep.errors == [], (topology, host)
    plan = build_plan(*raw("a3-1p1d"))
    entry = copy.deepcopy(plan["hosts"]["prefill-0"])
    for pair in entry["script"]["serve_args"]:
        if pair[0] == "--additional-config":
            cfg = json.loads(shlex.split(pair[1])[0])
            pair[1] = shlex.quote(json.dumps({**cfg, "recompute_scheduler_enable": True}))
        if pair[0] == "--kv-transfer-config":
            cfg = json.loads(shlex.split(pair[1])[0])
            pair[1] = shlex.quote(json.dumps({**cfg, "kv_role": "kv_consumer"}))
    rep = Report()
    plan_checks.check_serve("prefill-0", entry, FlagSpec.load("0.21.0"), rep)
    assert rep.errors == [
        "host prefill-0: recompute_scheduler_enable is set in --additional-config on a prefill node; it is "
        "valid only on decode nodes (kv_consumer) and corrupts accuracy elsewhere (remove it via "
        "fleet_serve_overrides)",
        "host prefill-0: kv_role 'kv_consumer' on a prefill node; expected kv_producer",
    ]


def test_serve_argv_fills_the_launcher_positionals():
    plan = build_plan(*raw("a2-4p4d"))
    argv = plan_checks.serve_argv(plan["hosts"]["decode-3"])
    pairs = dict(itertools.pairwise(argv))  # each token -> the token after it
    assert argv[0] == plan["hosts"]["decode-3"]["model_path"]
    assert (pairs["--port"], pairs["--data-parallel-size"], pairs["--data-parallel-rank"]) == ("7100", "32", "24")
    assert (pairs["--data-parallel-address"], pairs["--data-parallel-rpc-port"]) == ("203.0.113.21", "12321")
    assert pairs["--tensor-parallel-size"] == "1"


def test_warn_risky_kv_ports_in_mooncake_range():
    plan = build_plan(*raw("a3-1p1d"))
    rep = Report()
    plan_checks.warn_risky(plan, load_recipe(plan["recipe"]), rep)
    assert rep.warnings[0] == (
        "host prefill-0: kv ports 30000..30015 lie inside Mooncake's AscendDirectTransport range "
        "[20000, 36000) for 16 devices (tutorial value; random collisions give 'Address already in use'); "
        "fix: fleet_kv_port_base: 36000"
    )
    assert rep.warnings[1].startswith("VLLM_ENGINE_READY_TIMEOUT_S is not set (as in the tutorial)")
    assert rep.warnings[2].startswith("host decode-0: kv ports 30100..30115 lie inside") and len(rep.warnings) == 3
    moved = build_plan(
        *raw(
            "a3-1p1d",
            {h: {"fleet_kv_port_base": 36000, "fleet_engine_ready_timeout_s": 1800} for h in ("prefill-0", "decode-0")},
        )
    )
    rep = Report()
    plan_checks.warn_risky(moved, load_recipe(moved["recipe"]), rep)
    assert rep.warnings == []
