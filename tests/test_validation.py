"""Validation: every bad inventory is refused before anything is touched, with a message
that names the host or group, the value found, what was expected and the variable to change."""

from __future__ import annotations

import copy
import re

import pytest

from ascend_fleet.inventory import load_yaml_inventory
from ascend_fleet.topology import build_plan
from tests.conftest import REPO, TOPOLOGIES, run_playbook


def inventory(name: str):
    return load_yaml_inventory(REPO / "inventories" / name / "hosts.yml")


def plan_with(name: str, mode: str = "render", host_vars=None, groups_edit=None, bool_vars=()):
    hosts, groups = inventory(name)
    hosts = copy.deepcopy(hosts)
    for host, extra in (host_vars or {}).items():
        hosts.setdefault(host, {}).update(extra)
    if groups_edit:
        groups_edit(groups)
    return build_plan(hosts, groups, mode=mode, bool_vars=set(bool_vars))


def only_error(plan, *needles):
    """Exactly one error, and it contains every needle."""
    assert len(plan["errors"]) == 1, plan["errors"]
    for needle in needles:
        assert needle in plan["errors"][0], (needle, plan["errors"][0])
    return plan["errors"][0]


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_shipped_inventories_are_valid_for_render(name):
    plan = plan_with(name)
    assert plan["errors"] == []
    assert plan["hosts"]


def test_host_in_two_roles():
    def edit(groups):
        groups["decode"].append("prefill-1")

    plan = plan_with("a2-4p4d", groups_edit=edit)
    assert any("host prefill-1" in e and "prefill, decode" in e and "exactly one role" in e for e in plan["errors"]), (
        plan["errors"]
    )


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_required_group_missing_or_empty(state):
    def edit(groups):
        if state == "missing":
            del groups["decode"]
        else:
            groups["decode"] = []

    plan = plan_with("a3-1p1d", groups_edit=edit)
    assert any(f"group decode: {state}" in e and "children.decode" in e for e in plan["errors"]), plan["errors"]


def test_no_role_group_at_all():
    def edit(groups):
        groups.pop("single")

    plan = plan_with("a2-single", groups_edit=edit)
    assert any("none has hosts" in e for e in plan["errors"]), plan["errors"]


def test_two_hosts_one_address():
    plan = plan_with("a2-4p4d", host_vars={"decode-1": {"ansible_host": "203.0.113.21"}})
    only_error(plan, "decode-0", "decode-1", "203.0.113.21", "ansible_host")


@pytest.mark.parametrize("bad", ["300.1.2.3", "node_a!", "10.0.0", "-bad-.example"])
def test_address_not_ip_or_hostname(bad):
    plan = plan_with("a2-single", host_vars={"node-0": {"ansible_host": bad}})
    assert any(
        "host node-0" in e and repr(bad) in e and "neither an IP address nor a valid hostname" in e
        for e in plan["errors"]
    ), plan["errors"]


def test_hostname_needs_node_ip():
    plan = plan_with("a2-single", host_vars={"node-0": {"ansible_host": "atlas-01.example.org"}})
    only_error(plan, "host node-0", "hostname", "fleet_node_ip")
    ok = plan_with(
        "a2-single",
        host_vars={"node-0": {"ansible_host": "atlas-01.example.org", "fleet_node_ip": "198.18.0.10"}},
        mode="deploy",
    )
    assert ok["errors"] == []


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_placeholders_refused_when_deploying(name):
    plan = plan_with(name, mode="deploy")
    hosts, _ = inventory(name)
    assert len(plan["errors"]) == len(hosts)
    for err in plan["errors"]:
        assert re.search(
            r"host \S+: ansible_host = '(198\.51\.100|203\.0\.113)\.\d+' is a documentation placeholder", err
        )
        assert "set ansible_host" in err


@pytest.mark.parametrize("value", ["xx.xx.xx.1", "x.x.x.x", "192.0.2.7"])
def test_tutorial_placeholders_refused(value):
    plan = plan_with("a2-single", mode="deploy", host_vars={"node-0": {"ansible_host": value}})
    only_error(plan, "host node-0", value)


def test_lab_addresses_accepted_when_deploying():
    lab = {f"prefill-{i}": {"ansible_host": f"198.18.0.{10 + i}"} for i in range(4)}
    lab.update({f"decode-{i}": {"ansible_host": f"198.18.0.{20 + i}"} for i in range(4)})
    plan = plan_with("a2-4p4d", mode="deploy", host_vars=lab)
    assert plan["errors"] == []
    assert plan["hosts"]["decode-3"]["dp_address"] == "198.18.0.20"


def test_tp_times_local_dp_above_device_count():
    plan = plan_with("a2-single", host_vars={"node-0": {"fleet_tp_size": 16}})
    assert any(
        "host node-0" in e and "16 devices" in e and "has 8" in e and "fleet_tp_size" in e for e in plan["errors"]
    ), plan["errors"]


def test_dp_ranks_not_covered_exactly_once():
    plan = plan_with("a2-4p4d", host_vars={"decode-2": {"fleet_dp_rank_start": 8}})
    msgs = [e for e in plan["errors"] if "instance decode-0" in e]
    assert any("DP rank 8 on both decode-1 and decode-2" in e for e in msgs), plan["errors"]
    assert any("missing [24, 25, 26, 27, 28, 29, 30, 31]" in e and "fleet_dp_rank_start" in e for e in msgs)


def test_dp_size_larger_than_ranks():
    plan = plan_with("a3-1p1d", host_vars={"decode-0": {"fleet_dp_size": 32}})
    assert any("instance decode-0" in e and "[0, 32)" in e and "missing [16" in e for e in plan["errors"])


def test_same_engine_id():
    plan = plan_with("a2-4p4d", host_vars={"prefill-2": {"fleet_engine_id": 1}})
    assert any(
        "instance prefill-2" in e and "engine_id 1" in e and "prefill-1" in e and "fleet_engine_id" in e
        for e in plan["errors"]
    ), plan["errors"]


def test_kv_port_overlapping_api_port_on_one_host():
    plan = plan_with("a2-4p4d", host_vars={"prefill-1": {"fleet_kv_port": 7100}})
    only_error(plan, "host prefill-1", "port 7100", "API port", "kv side-channel port")


def test_rpc_port_collides_with_api_port():
    plan = plan_with("a3-1p1d", host_vars={"decode-0": {"fleet_dp_rpc_port": 7105}})
    only_error(plan, "host decode-0", "port 7105", "DP RPC port")


def test_proxy_port_collides():
    plan = plan_with("a3-1p1d", host_vars={"prefill-0": {"fleet_proxy_port": 7101}})
    only_error(plan, "host prefill-0", "7101", "proxy port")


def test_kv_extra_config_must_match_real_sizes():
    bad = {"prefill": {"dp_size": 8, "tp_size": 1}, "decode": {"dp_size": 16, "tp_size": 1}}
    plan = plan_with("a3-1p1d", host_vars={"decode-0": {"fleet_kv_extra_config": bad}})
    only_error(plan, "host decode-0", "fleet_kv_extra_config", '"dp_size": 4, "tp_size": 4')


def test_kv_extra_config_override_equal_to_real_is_fine():
    good = '{"prefill": {"dp_size": 4, "tp_size": 4}, "decode": {"dp_size": 16, "tp_size": 1}}'
    assert plan_with("a3-1p1d", host_vars={"decode-0": {"fleet_kv_extra_config": good}})["errors"] == []


def test_unknown_hardware_kind():
    plan = plan_with("a2-single", host_vars={"node-0": {"fleet_hw_kind": "a5"}})
    only_error(plan, "host node-0", "fleet_hw_kind = 'a5'", "a2, a3")


def test_invalid_json_in_config_override():
    plan = plan_with(
        "a2-single",
        host_vars={"node-0": {"fleet_serve_overrides": {"--additional-config": '{"enable_cpu_binding": tru'}}},
    )
    only_error(plan, "host node-0", "--additional-config", "invalid JSON", "fleet_serve_overrides")


def test_invalid_json_in_kv_extra_config():
    plan = plan_with("a3-1p1d", host_vars={"decode-0": {"fleet_kv_extra_config": "{prefill: 1"}})
    assert any("host decode-0" in e and "invalid JSON" in e for e in plan["errors"]), plan["errors"]


def test_unknown_serve_flag_in_override():
    plan = plan_with("a2-single", host_vars={"node-0": {"fleet_serve_overrides": {"--max-model-length": 4096}}})
    only_error(plan, "host node-0", "unknown flag '--max-model-length'")


def test_bad_flag_value_in_override():
    plan = plan_with("a2-single", host_vars={"node-0": {"fleet_serve_overrides": {"--max-num-seqs": "many"}}})
    only_error(plan, "host node-0", "--max-num-seqs", "invalid")


@pytest.mark.parametrize(("value", "meant"), [("true", True), ("false", False), ("yes", True), ("No", False)])
def test_boolean_given_as_string_is_coerced(value, meant):
    """-e npu_network_enabled=false means false: accepted, like Ansible's own |bool."""
    plan = plan_with(
        "a2-single",
        mode="deploy",
        host_vars={"node-0": {"npu_network_enabled": value, "fleet_allow_placeholder_addresses": value}},
        bool_vars={"npu_network_enabled"},
    )
    # the coerced value really takes effect: false keeps refusing the placeholder address
    if meant:
        assert plan["errors"] == []
    else:
        only_error(plan, "host node-0", "documentation placeholder")


@pytest.mark.parametrize("value", ["maybe", "2", ""])
def test_boolean_that_is_no_boolean(value):
    plan = plan_with(
        "a2-single", host_vars={"node-0": {"npu_network_enabled": value}}, bool_vars={"npu_network_enabled"}
    )
    only_error(plan, "host node-0", f"npu_network_enabled = {value!r}", "expected boolean", "true/false/yes/no")


def test_number_given_as_string_is_coerced():
    """-e fleet_tp_size=4 is the integer 4."""
    plan = plan_with("a3-single", host_vars={"node-0": {"fleet_tp_size": "2", "fleet_dp_size_local": "8"}})
    assert plan["errors"] == []
    assert (plan["hosts"]["node-0"]["tp_size"], plan["hosts"]["node-0"]["dp_size_local"]) == (2, 8)


@pytest.mark.parametrize("value", ["eight", "8.0", "1e3", "99999999999999999999"])
def test_number_that_is_no_number(value):
    plan = plan_with("a2-single", host_vars={"node-0": {"fleet_tp_size": value}})
    only_error(plan, "host node-0", f"fleet_tp_size = {value!r}", "expected integer", "set fleet_tp_size")


def test_recompute_scheduler_on_prefill_node():
    extra = {"enable_cpu_binding": True, "recompute_scheduler_enable": True}
    plan = plan_with("a2-4p4d", host_vars={"prefill-0": {"fleet_serve_overrides": {"--additional-config": extra}}})
    only_error(plan, "host prefill-0", "recompute_scheduler_enable", "decode nodes")


def test_recompute_scheduler_on_decode_node_is_the_tutorial():
    plan = plan_with("a2-4p4d")
    assert plan["errors"] == []
    assert (
        "recompute_scheduler_enable" in dict(plan["hosts"]["decode-0"]["script"]["serve_args"])["--additional-config"]
    )


def test_profile_role_mismatch():
    plan = plan_with("a3-1p1d", host_vars={"prefill-0": {"fleet_profile": "a3-decode"}})
    assert any("host prefill-0" in e and "decode profile" in e for e in plan["errors"])


def test_instance_values_disagree():
    plan = plan_with("a2-4p4d", host_vars={"decode-1": {"fleet_kv_port": 31000}})
    assert any("instance decode-0" in e and "fleet_kv_port differs" in e for e in plan["errors"])


def test_visible_devices_override_checked():
    plan = plan_with(
        "a3-1p1d",
        host_vars={"prefill-0": {"fleet_visible_devices": ["0,1,2,3", "4,5,6,7", "8,9,10,11", "12,13,14,16"]}},
    )
    only_error(plan, "host prefill-0", "device 16", "not on this node")


def test_a3_kv_ports_in_mooncake_range_warn_with_fix():
    plan = plan_with("a3-1p1d")
    assert any(
        "prefill-0" in w and "[20000, 36000)" in w and "fleet_kv_port_base: 36000" in w for w in plan["warnings"]
    )
    fixed = plan_with("a3-1p1d", host_vars={h: {"fleet_kv_port_base": 36000} for h in ("prefill-0", "decode-0")})
    assert not any("AscendDirectTransport" in w for w in fixed["warnings"])
    assert fixed["hosts"]["decode-0"]["kv_port"] == 36100


def test_engine_ready_timeout_warns_and_is_one_variable_away():
    plan = plan_with("a2-single")
    assert any("VLLM_ENGINE_READY_TIMEOUT_S" in w for w in plan["warnings"])
    fixed = plan_with("a2-single", host_vars={"node-0": {"fleet_engine_ready_timeout_s": 1800}})
    assert ["VLLM_ENGINE_READY_TIMEOUT_S", "1800"] in fixed["hosts"]["node-0"]["script"]["env"]
    assert not any("VLLM_ENGINE_READY_TIMEOUT_S" in w for w in fixed["warnings"])


def test_many_errors_reported_together():
    plan = plan_with(
        "a2-4p4d",
        host_vars={
            "prefill-2": {"fleet_engine_id": 1},
            "decode-1": {"ansible_host": "203.0.113.21"},
            "node-x": {},
        },
    )
    assert len(plan["errors"]) >= 2


# ---- through Ansible: site.yml stops in validation, before any connection -------------


def test_site_stops_before_connecting_on_placeholders():
    # ansible_connection=local is only a safety net: validation must stop the run first.
    proc = run_playbook("site.yml", "-i", "a2-4p4d", "-e", "ansible_connection=local", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "inventory validation failed (8 problems); nothing was touched" in out
    assert "host decode-3: ansible_host = '203.0.113.24' is a documentation placeholder" in out
    assert "Facts and preflight" not in out and "PLAY [Node facts" not in out
    assert "UNREACHABLE" not in out


def test_typed_extra_vars_are_coerced_and_bad_ones_named(tmp_path):
    """-e k=v gives strings: numbers and booleans are taken as meant, nonsense is named."""
    overlay = tmp_path / "lab.yml"
    overlay.write_text("all:\n  hosts:\n    node-0:\n      ansible_host: 198.18.0.10\n")
    base = ["playbooks/validate.yml", "-i", "a2-single", "-i", str(overlay)]
    ok = run_playbook(
        *base, "-e", "npu_network_enabled=false", "-e", "fleet_tp_size=8", "-e", "serve_health_timeout_s=60"
    )
    assert "failed=0" in ok.stdout
    proc = run_playbook(*base, "-e", "npu_network_enabled=perhaps", "-e", "fleet_tp_size=eight", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "host node-0: npu_network_enabled = 'perhaps' is a string; expected boolean" in out
    assert "host node-0: fleet_tp_size = 'eight' is a string; expected integer" in out
    assert "Traceback" not in out


def test_validate_passes_with_overlay_addresses(tmp_path):
    overlay = tmp_path / "lab.yml"
    overlay.write_text("all:\n  hosts:\n    node-0:\n      ansible_host: 198.18.0.10\n")
    proc = run_playbook("playbooks/validate.yml", "-i", "a2-single", "-i", str(overlay))
    assert "failed=0" in proc.stdout
