"""The inventory generator: a nodes list and a layout give the inventory site.yml accepts."""

from __future__ import annotations

import pytest
import yaml

from ascend_fleet.inventory import load_yaml_inventory
from ascend_fleet.inventory_gen import InventoryInputError, generate, parse_nodes, render, validate, write
from ascend_fleet.topology import build_plan
from tests.conftest import REPO

# The shipped layouts as the generator is asked for them: (kind, layout, prefill, decode, context).
SHIPPED = {
    "a2-single": ("a2", "single", None, None, "default"),
    "a3-single": ("a3", "single", None, None, "default"),
    "a3-1p1d": ("a3", "pd", "1x1", "1x1", "default"),
    "a2-4p4d": ("a2", "pd", "4x1", "1x4", "default"),
    "a3-1m-2p2d": ("a3", "pd", "1x2", "1x2", "1m"),
}


def shipped_nodes(topology: str) -> str:
    hostvars, groups = load_yaml_inventory(REPO / "inventories" / topology / "hosts.yml")
    order = [h for g in ("single", "prefill", "decode") for h in groups.get(g, [])]
    return "\n".join(f"{hostvars[h]['ansible_host']} {h}" for h in order)


@pytest.mark.parametrize("topology", sorted(SHIPPED))
def test_generated_inventory_plans_like_the_shipped_one(topology):
    kind, layout, prefill, decode, context = SHIPPED[topology]
    inv = generate(parse_nodes(shipped_nodes(topology)), name=topology, kind=kind, layout=layout,
                   prefill=prefill, decode=decode, context=context)
    ours = validate(inv, mode="render")
    hostvars, groups = load_yaml_inventory(REPO / "inventories" / topology / "hosts.yml")
    theirs = build_plan(hostvars, groups, mode="render")
    assert theirs["errors"] == []
    assert ours["instances"] == theirs["instances"]
    assert ours["hosts"] == theirs["hosts"]
    assert ours["proxy"] == theirs["proxy"]
    assert ours["entrypoint"] == theirs["entrypoint"]


def test_32_nodes_16_prefill_and_two_8_node_decode_instances(tmp_path):
    text = "\n".join(f"198.18.{i // 200}.{10 + i % 200}" for i in range(32))
    inv = generate(parse_nodes(text), name="a2-16p2d", kind="a2", layout="pd", prefill="16x1", decode="2x8")
    plan = validate(inv, mode="deploy")
    roles = [(i["role"], len(i["nodes"]), i["dp_size"]) for i in plan["instances"]]
    assert roles == [("prefill", 1, 8)] * 16 + [("decode", 8, 64)] * 2
    decode = [i for i in plan["instances"] if i["role"] == "decode"]
    assert [i["master"] for i in decode] == ["decode-0", "decode-8"]
    assert len({i["engine_id"] for i in plan["instances"]}) == 18
    assert len({i["kv_port"] for i in plan["instances"]}) == 18
    # what is written reads back as the same inventory, and the header describes it
    path = tmp_path / "a2-16p2d" / "hosts.yml"
    write(path, render(inv, plan, "ascend-fleet inventory nodes.txt --kind a2 --layout pd ..."))
    text = path.read_text()
    assert yaml.safe_load(text) == inv
    assert "#   decode-8: decode, DP64 x TP1 on decode-8 .. decode-15 (8 nodes)" in text
    hostvars, groups = load_yaml_inventory(path)
    assert build_plan(hostvars, groups, mode="deploy")["instances"] == plan["instances"]
    assert not list(path.parent.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("nodes", "kwargs", "message"),
    [
        ("198.18.0.1\n198.18.0.2", {"layout": "pd", "prefill": "1x1", "decode": "1x2"},
         "needs 1*1 + 1*2 = 3 nodes; the nodes file gives 2"),
        ("198.18.0.1\n198.18.0.1", {"layout": "pd", "prefill": "1x1", "decode": "1x1"},
         "nodes:2: address 198.18.0.1 is already given on line 1"),
        ("node-a.example", {"layout": "single"}, "nodes:1: 'node-a.example' is not an IP address"),
        ("198.18.0.1 $(reboot)", {"layout": "single"}, "nodes:1: node name '$(reboot)'"),
        ("198.18.0.1\n198.18.0.2", {"layout": "pd", "prefill": "one", "decode": "1x1"},
         "--prefill 'one': expected INSTANCESxNODES"),
        ("198.18.0.1\n198.18.0.2", {"layout": "single"}, "--layout single serves from one node; 2 given"),
        ("198.18.0.1", {"layout": "ring"}, "--layout 'ring': expected single or pd"),
        ("198.18.0.1", {"layout": "single", "kind": "a9"}, "--kind 'a9': expected one of a2, a3"),
        ("198.18.0.1 x\n198.18.0.2 x", {"layout": "pd", "prefill": "1x1", "decode": "1x1"},
         "nodes:2: name 'x' is already used on line 1"),
        ("# only a comment\n", {"layout": "single"}, "nodes: no node given"),
        ("198.18.0.1", {"layout": "single", "nic": "eth0;reboot"}, "--nic 'eth0;reboot'"),
    ],
)
def test_bad_input_is_named(nodes, kwargs, message):
    args = {"name": "fleet", "kind": "a2", **kwargs}
    with pytest.raises(InventoryInputError) as err:
        generate(parse_nodes(nodes), **args)
    assert message in str(err.value)


def test_what_the_plan_refuses_is_reported_not_written():
    # The plan's own rules decide (the same build_plan site.yml runs), and say why.
    inv = generate(parse_nodes("198.51.100.10"), name="fleet", kind="a2", layout="single")
    with pytest.raises(InventoryInputError) as err:
        validate(inv, mode="deploy")
    assert "the generated inventory does not validate" in str(err.value)
    assert "ansible_host = '198.51.100.10' is a documentation placeholder" in str(err.value)


def test_the_command_writes_a_validated_inventory_and_refuses_bad_input(tmp_path, capsys):
    from ascend_fleet.cli import main

    nodes = tmp_path / "nodes.txt"
    nodes.write_text("# prefill first\n198.18.0.1\n198.18.0.2 dec-a\n198.18.0.3\n")
    out = tmp_path / "fleet" / "hosts.yml"
    argv = ["inventory", str(nodes), "--name", "t1", "--kind", "a2", "--layout", "pd",
            "--prefill", "1x1", "--decode", "1x2", "-o", str(out)]
    assert main(argv) == 0
    assert "2 instance(s) on 3 node(s)" in capsys.readouterr().out
    hostvars, groups = load_yaml_inventory(out)
    assert groups["decode"] == ["dec-a", "decode-1"] and hostvars["dec-a"]["fleet_instance"] == "dec-a"
    assert build_plan(hostvars, groups, mode="deploy")["errors"] == []

    # a newline in an argument cannot add a line to the file (the command is one comment line)
    odd = tmp_path / "odd\nall: {}"
    odd.write_text("198.18.0.9\n")
    assert main(["inventory", str(odd), "--name", "x", "--kind", "a3", "--layout", "single", "-o", str(out)]) == 0
    single = yaml.safe_load(out.read_text())["all"]["children"]["single"]
    assert single["hosts"] == {"node-0": {"ansible_host": "198.18.0.9"}}

    bad = tmp_path / "bad" / "hosts.yml"
    assert main([*argv[:10], "--decode", "1x1", "-o", str(bad)]) == 2
    assert "needs 1*1 + 1*1 = 2 nodes; the nodes file gives 3" in capsys.readouterr().err
    assert not bad.exists()
    assert main(["inventory", str(tmp_path / "missing.txt"), "--name", "x", "--kind", "a2", "--layout", "single"]) == 2
    assert "cannot read the nodes file" in capsys.readouterr().err
