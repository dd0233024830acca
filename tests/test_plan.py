"""The plan for people (table, picture) and the derived 1M layout's consistency."""

from __future__ import annotations

import shlex
import xml.etree.ElementTree as ET

import pytest

from ascend_fleet.serveflags import FlagSpec, parse_serve_argv
from ascend_fleet.topology import serve_argv
from tests.conftest import TOPOLOGIES, load_plan

SPEC = FlagSpec.load("0.21.0")


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_plan_table_has_a_row_per_host(rendered, topology):
    plan = load_plan(rendered[topology])
    table = (rendered[topology] / "plan.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| host")]
    by_host = {r.split("|")[1].strip(): [c.strip() for c in r.strip().strip("|").split("|")] for r in rows}
    assert sorted(by_host) == sorted(plan["hosts"]) and len(rows) == len(plan["hosts"])
    for host, h in plan["hosts"].items():
        cells = by_host[host]
        assert cells[1] == h["node_ip"] and cells[3] == h["instance"], host
        assert cells[6].split("-")[0] == str(h["api_ports"][0])
    entry = plan["entrypoint"]
    assert f"Entry point: http://{entry['address']}:{entry['port']}/v1/chat/completions" in table


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_layout_picture_shows_instances_nodes_and_proxy(rendered, topology):
    plan = load_plan(rendered[topology])
    root = ET.fromstring((rendered[topology] / "layout.svg").read_text())
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    for inst in plan["instances"]:
        assert f"{inst['name']}: DP{inst['dp_size']} x TP{inst['tp_size']}" in texts
    for host, h in plan["hosts"].items():
        assert f"{host} {h['node_ip']}" in texts
    assert ("proxy " in texts) == bool(plan.get("proxy"))


@pytest.mark.parametrize(("topology", "nodes_per_side", "local"), [("a2-1m-4p4d", 4, 1), ("a3-1m-2p2d", 2, 2)])
def test_1m_render_is_consistent(rendered, topology, nodes_per_side, local):
    """5.2.3: one P and one D instance, each DP4 x TP8 (4 A2 nodes or 2 A3 nodes), 1M context."""
    plan = load_plan(rendered[topology])
    assert plan["errors"] == []
    for role, engine, kv in (("prefill", 0, 30000), ("decode", 1, 30100)):
        nodes = [h for h in plan["hosts"].values() if h["role"] == role]
        assert len(nodes) == nodes_per_side
        master_ip = nodes[0]["node_ip"]
        for i, h in enumerate(nodes):
            start = i * local
            assert (h["dp_size"], h["tp_size"], h["dp_size_local"], h["dp_rank_start"]) == (4, 8, local, start)
            assert h["dp_address"] == master_ip and h["engine_id"] == engine
            assert [r["devices"] for r in h["ranks"]] == [
                ",".join(str(d) for d in range(8 * j, 8 * j + 8)) for j in range(local)
            ]
            assert h["container_devices"] == [f"/dev/davinci{d}" for d in range(8 * local)] + [
                "/dev/davinci_manager",
                "/dev/devmm_svm",
                "/dev/hisi_hdc",
            ]
            assert h["kv_ports"] == list(range(kv + 8 * start, kv + 8 * (start + local)))
            assert h["kv_extra_config"] == {
                "prefill": {"dp_size": 4, "tp_size": 8},
                "decode": {"dp_size": 4, "tp_size": 8},
            }
            cmd = parse_serve_argv(serve_argv(h), SPEC)
            assert cmd.values["max_model_len"] == 1048576
            assert cmd.values["tensor_parallel_size"] == 8 and cmd.values["data_parallel_size"] == 4
            assert cmd.values["data_parallel_rank"] == start
            assert cmd.values["kv_transfer_config"]["kv_port"] == str(kv)
            launch = (rendered[topology] / h["host"] / "launch.sh").read_text()
            tokens = shlex.split(next(x for x in launch.splitlines() if x.startswith("exec ")))
            assert tokens[tokens.index("--dp-rank-start") + 1] == str(start)
            assert tokens[tokens.index("--dp-size-local") + 1] == str(local)
            assert tokens[tokens.index("--dp-address") + 1] == master_ip
    # prefill keeps recompute off, decode keeps it on (as in the A2 PD scripts)
    pre = parse_serve_argv(serve_argv(plan["hosts"]["prefill-0"]), SPEC).values["additional_config"]
    dec = parse_serve_argv(serve_argv(plan["hosts"]["decode-0"]), SPEC).values["additional_config"]
    assert "recompute_scheduler_enable" not in pre and dec["recompute_scheduler_enable"] is True


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_every_rendered_serve_command_passes_vllm_flag_table(rendered, topology):
    plan = load_plan(rendered[topology])
    for h in plan["hosts"].values():
        cmd = parse_serve_argv(serve_argv(h), SPEC)
        assert cmd.model == h["model_path"]
        assert cmd.values["served_model_name"] == ["dsv4"]


def test_cli_plan_and_check_serve(capsys, tmp_path):
    from ascend_fleet.cli import main
    from tests.conftest import REPO

    inv = str(REPO / "inventories" / "a3-1p1d" / "hosts.yml")
    assert main(["plan", inv]) == 0
    assert "| decode-0 | 203.0.113.21 | decode | decode-0 | 0-15 of 16 (TP1)" in capsys.readouterr().out
    assert main(["plan", inv, "--deploy"]) == 1
    assert "documentation placeholder" in capsys.readouterr().err
    overlay = tmp_path / "lab.yml"
    overlay.write_text(
        "all:\n  hosts:\n    prefill-0: {ansible_host: 198.18.0.10}\n    decode-0: {ansible_host: 198.18.0.11}\n"
    )
    assert main(["plan", inv, str(overlay), "--deploy", "--json"]) == 0
    assert '"dp_address": "198.18.0.11"' in capsys.readouterr().out
    assert main(["check-serve", "--", "/m", "--port", "8900", "--max-num-seqs", "4"]) == 0
    assert main(["check-serve", "--", "/m", "--max-num-seq", "4"]) == 1
    assert "unknown flag '--max-num-seq'" in capsys.readouterr().err
