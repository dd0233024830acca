"""Hostile and careless inputs: a clear error naming host, variable, value and expectation,
never a traceback, never an exhausted machine, and never a shell command run from a value.

- a table of hostile values and a seeded random fuzzer over every fleet_* variable: the
  plan engine answers with errors, never an exception (no "could not be planned");
- refusals: duplicate kv_port, one machine under two names, a2+a3 in one DP group,
  sizes <= 0, negative ids, overrides of plan-owned flags, model path outside the cache;
- rendering through Ansible with hostile values, then running the rendered scripts under
  bash with a stand-in ``vllm``: nothing executes, vllm receives the literal values;
- ``fleet_visible_devices`` drives each rank's ASCEND_RT_VISIBLE_DEVICES (single and PD);
- the dedicated proxy host: its address validated like the others'.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import yaml

from ascend_fleet.inventory import load_yaml_inventory
from ascend_fleet.topology import FLEET_VARS, build_plan
from tests.conftest import REPO, load_plan, run_playbook
from tests.seed import run_script

HOSTILE = [
    "$(touch PWNED)",
    "`touch PWNED`",
    "x; touch PWNED",
    "a\nb",
    'it\'s "quoted"',
    "",
    " ",
    "-1",
    "0",
    "99999999999999999999999",
    "1e9",
    None,
    True,
    False,
    -1,
    0,
    10**12,
    2**63,
    1.5,
    float("nan"),
    [],
    ["0"],
    ["$(touch PWNED)"],
    [[["deep"]]],
    {},
    {"--port": 1},
    {"$(x)": "y"},
    {"X": {"nested": 1}},
    "{not json",
    '{"a": 1}',
    "[1, 2]",
    "../../etc",
    "/root/.cache/../../etc/passwd",
]


def inventory(name: str):
    return load_yaml_inventory(REPO / "inventories" / name / "hosts.yml")


def plan_with(name, host_vars=None, mode="render", groups_edit=None, **kw):
    hosts, groups = inventory(name)
    hosts = copy.deepcopy(hosts)
    for host, extra in (host_vars or {}).items():
        hosts.setdefault(host, {}).update(extra)
    if groups_edit:
        groups_edit(groups)
    return build_plan(hosts, groups, mode=mode, **kw)


def errors_with(plan, *needles):
    found = [e for e in plan["errors"] if all(n in e for n in needles)]
    assert found, (needles, plan["errors"])
    return found


def assert_no_crash(plan):
    assert not any("could not be planned" in e for e in plan["errors"]), plan["errors"]


# ---- never a traceback, never unbounded -------------------------------------------------


@pytest.mark.parametrize("name", sorted(FLEET_VARS))
def test_every_variable_survives_every_hostile_value(name):
    for value in HOSTILE:
        for topo, host in (("a3-1p1d", "prefill-0"), ("a2-single", "node-0")):
            plan = plan_with(topo, {host: {name: copy.deepcopy(value)}})
            assert_no_crash(plan)


def test_random_inventories_never_crash():
    """Seeded fuzzing: random fleet_* values on random hosts, many at once."""
    rng = random.Random(20261130)
    names = sorted(FLEET_VARS)
    for _ in range(300):
        topo = rng.choice(["a2-single", "a3-1p1d", "a2-4p4d", "a3-1p1d-proxy", "a3-1m-2p2d"])
        hosts, _groups = inventory(topo)
        edits = {}
        for _ in range(rng.randint(1, 6)):
            host = rng.choice([*hosts, "stranger"])
            edits.setdefault(host, {})[rng.choice(names)] = copy.deepcopy(rng.choice(HOSTILE))
        plan = plan_with(topo, edits, mode=rng.choice(["render", "deploy"]))
        assert_no_crash(plan)
        if plan["errors"]:
            assert all(isinstance(e, str) and e for e in plan["errors"])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("fleet_dp_size", 10**12),
        ("fleet_dp_size_local", 10**9),
        ("fleet_tp_size", 10**9),
        ("fleet_dp_rank_start", 10**15),
        ("fleet_engine_id", 10**18),
        ("fleet_kv_port_stride", 10**18),
    ],
)
def test_huge_sizes_are_refused_not_computed(name, value):
    plan = plan_with("a3-1p1d", {"decode-0": {name: value}})
    assert_no_crash(plan)
    errors_with(plan, "host decode-0", f"{name} = {value}", "expected an integer")


def test_garbage_groups_and_hosts_do_not_crash():
    hosts, _groups = inventory("a3-1p1d")
    for bad_groups in ({"prefill": None, "decode": [1, None]}, {"single": ["nobody"]}, {}):
        assert_no_crash(build_plan(copy.deepcopy(hosts), bad_groups))
    assert_no_crash(build_plan({"x": None, "y": {"fleet_hw_kind": ["a2"]}}, {"single": ["x", "y"]}))


# ---- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), [("fleet_tp_size", 0), ("fleet_dp_size", 0), ("fleet_dp_size_local", -2)])
def test_sizes_must_be_positive(name, value):
    plan = plan_with("a2-4p4d", {"decode-1": {name: value}})
    errors_with(plan, "host decode-1", f"{name} = {value}", "expected an integer 1..", f"set {name} for decode-1")


@pytest.mark.parametrize("name", ["fleet_engine_id", "fleet_dp_rank_start"])
def test_ids_must_not_be_negative(name):
    plan = plan_with("a2-4p4d", {"prefill-2": {name: -1}})
    errors_with(plan, "host prefill-2", f"{name} = -1", "expected an integer 0..")


def test_same_kv_port_in_two_prefill_instances():
    plan = plan_with("a2-4p4d", {"prefill-2": {"fleet_kv_port": 30100}})
    errors_with(plan, "instance prefill-2", "kv_port 30100", "prefill-1", "unique", "fleet_kv_port")


def test_same_machine_under_two_names_by_node_ip():
    plan = plan_with(
        "a2-4p4d",
        {"decode-3": {"fleet_node_ip": "198.51.100.11"}},
    )
    errors_with(plan, "prefill-0", "decode-3", "198.51.100.11", "same machine under 2 names")


def test_same_machine_under_two_names_by_connect_address():
    # two names reach one machine (same ansible_host) though they claim different node IPs
    plan = plan_with(
        "a2-4p4d",
        {
            "prefill-1": {"ansible_host": "198.51.100.11", "fleet_node_ip": "198.51.100.81"},
        },
    )
    errors_with(plan, "prefill-0", "prefill-1", "198.51.100.11", "same machine")


def test_a2_and_a3_in_one_dp_group():
    plan = plan_with("a2-1m-4p4d", {"decode-2": {"fleet_hw_kind": "a3", "fleet_profile": "a3-1m-decode"}})
    errors_with(plan, "instance decode-0", "mixes hardware kinds", "decode-2 a3", "decode-0 a2", "fleet_hw_kind")


@pytest.mark.parametrize(
    "flag",
    [
        "--port",
        "--host",
        "--data-parallel-size",
        "--data-parallel-rank",
        "--data-parallel-address",
        "--data-parallel-rpc-port",
        "--data-parallel-size-local",
        "--tensor-parallel-size",
        "-tp",
        "--api-key",
    ],
)
def test_plan_owned_flags_cannot_be_overridden(flag):
    plan = plan_with("a3-1p1d", {"prefill-0": {"fleet_serve_overrides": {flag: "1"}}})
    errors_with(plan, "host prefill-0", f"fleet_serve_overrides sets {flag}", "the plan owns")


@pytest.mark.parametrize("key", ["kv_port", "engine_id"])
def test_kv_identity_cannot_be_overridden(key):
    cfg = {
        "kv_connector": "MooncakeHybridConnector",
        "kv_role": "kv_consumer",
        key: "31000",
        "kv_connector_extra_config": {"prefill": {"dp_size": 4, "tp_size": 4}, "decode": {"dp_size": 16, "tp_size": 1}},
    }
    for value in (cfg, json.dumps(cfg)):
        plan = plan_with("a3-1p1d", {"decode-0": {"fleet_serve_overrides": {"--kv-transfer-config": value}}})
        errors_with(plan, "host decode-0", f"sets {key} inside --kv-transfer-config", "fleet_kv_port / fleet_engine_id")


def test_weights_cache_dir_must_contain_the_model_path():
    types = {"weights_cache_dir": "path"}
    plan = plan_with("a2-single", {"node-0": {"weights_cache_dir": "/srv/cache"}}, option_types=types)
    errors_with(plan, "host node-0", "fleet_model_path = '/root/.cache/modelscope", "weights_cache_dir = '/srv/cache'")
    ok = plan_with(
        "a2-single",
        {"node-0": {"weights_cache_dir": "/srv/cache", "fleet_model_path": "/srv/cache/models/dsv4"}},
        option_types=types,
    )
    assert ok["errors"] == []
    # "/root/.cache2/x" is not inside "/root/.cache"
    near = plan_with("a2-single", {"node-0": {"fleet_model_path": "/root/.cache2/m"}}, option_types=types)
    errors_with(near, "fleet_model_path = '/root/.cache2/m'", "not inside weights_cache_dir")


@pytest.mark.parametrize("path", ["/root/.cache/../etc", "relative/model", "/root/.cache/m/", "/root/.cache/a\nb"])
def test_model_path_must_be_absolute_and_normalised(path):
    plan = plan_with("a2-single", {"node-0": {"fleet_model_path": path}})
    errors_with(plan, "host node-0", "fleet_model_path", "absolute, normalised path")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("fleet_nic_name", "eth0;touch x"),
        ("fleet_nic_name", "$(id)"),
        ("fleet_nic_name", "averyveryverylongnic0"),
        ("fleet_instance", "p 0"),
        ("fleet_instance", "`id`"),
        ("fleet_image", "quay.io/x:1 --privileged"),
    ],
)
def test_names_written_into_scripts_have_a_safe_charset(name, value):
    plan = plan_with("a3-1p1d", {"prefill-0": {name: value}})
    errors_with(plan, "host prefill-0", f"{name} = {value!r}", "expected a name matching")


def test_inventory_host_name_with_shell_characters_is_refused():
    def edit(groups):
        groups["decode"] = ["decode-0", "d$(x)"]

    plan = plan_with("a3-1p1d", {"d$(x)": {"ansible_host": "203.0.113.99", "fleet_instance": "d2"}}, groups_edit=edit)
    errors_with(plan, "host 'd$(x)'", "rename it")


@pytest.mark.parametrize(("bad", "why"), [({"A-B": "1"}, "not a variable name"), ({"X": ["1"]}, "scalar values")])
def test_env_overrides_checked(bad, why):
    plan = plan_with("a2-single", {"node-0": {"fleet_env_overrides": bad}})
    errors_with(plan, "host node-0", "fleet_env_overrides", why)


# ---- the dedicated proxy host ------------------------------------------------------------


def test_dedicated_proxy_host_in_the_plan():
    plan = plan_with("a3-1p1d-proxy")
    assert plan["errors"] == []
    assert plan["proxy"]["host"] == "proxy-0" and plan["proxy"]["address"] == "198.51.100.30"
    assert "proxy-0" not in plan["hosts"] and plan["proxy_hosts"]["proxy-0"]["files"] == ["proxy.sh"]
    assert plan["proxy_hosts"]["proxy-0"]["image"] == "quay.io/ascend/vllm-ascend:v0.21.0rc1-a3"
    assert plan["entrypoint"] == {"host": "proxy-0", "address": "198.51.100.30", "port": 1999, "served_name": "dsv4"}
    assert not any("proxy-0" in w and "no role group" in w for w in plan["warnings"])


def test_dedicated_proxy_host_address_validated():
    plan = plan_with("a3-1p1d-proxy", mode="deploy")
    errors_with(plan, "host proxy-0: ansible_host = '198.51.100.30' is a documentation placeholder", "PD proxy host")
    lab = {"prefill-0": {"ansible_host": "198.18.0.10"}, "decode-0": {"ansible_host": "198.18.0.11"}}
    ok = plan_with("a3-1p1d-proxy", {**lab, "proxy-0": {"ansible_host": "198.18.0.12"}}, mode="deploy")
    assert ok["errors"] == []
    dup = plan_with("a3-1p1d-proxy", {**lab, "proxy-0": {"ansible_host": "198.18.0.10"}}, mode="deploy")
    errors_with(dup, "prefill-0", "proxy-0", "198.18.0.10", "same machine")
    for bad in ("xx.xx.xx.3", "proxy host!"):
        plan = plan_with("a3-1p1d-proxy", {**lab, "proxy-0": {"ansible_host": bad}}, mode="deploy")
        errors_with(plan, "host proxy-0: ansible_host", repr(bad))


# ---- rendered through Ansible, then run under bash ---------------------------------------

EVIL_ENV = "$(touch PWNED1)`touch PWNED2`; touch PWNED3\n'\"x"
EVIL_MODEL = "/root/.cache/models/$(touch PWNED4)/m;touch PWNED5 `touch PWNED6`"
EVIL_NAME = "dsv4$(touch PWNED7)`touch PWNED8`;touch PWNED9 'q\""


def _render(tmp_path: Path, name: str, overlay: dict) -> Path:
    extra = tmp_path / f"{name}-overlay.yml"
    extra.write_text(yaml.safe_dump(overlay))
    out = tmp_path / f"render-{name}"
    run_playbook("playbooks/render.yml", "-i", name, "-i", str(extra), "-e", f"fleet_render_dir={out}")
    return out


def _launcher_devices(i: int, tp: int) -> str:
    # launch_online_dp.py (tutorial lines 350 and 672): rank i gets devices i*tp..(i+1)*tp-1
    return ",".join(str(x) for x in range(i * tp, (i + 1) * tp))


def _assert_nothing_ran(workdir: Path) -> None:
    pwned = sorted(p.name for p in workdir.rglob("PWNED*"))
    assert pwned == [], f"a value was executed: {pwned}"


@pytest.fixture(scope="module")
def hostile_renders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    hostile = {"fleet_env_overrides": {"HOSTILE": EVIL_ENV}, "fleet_model_path": EVIL_MODEL}
    single = _render(
        tmp,
        "a3-single",
        {
            "all": {
                "hosts": {
                    "node-0": {
                        **hostile,
                        "fleet_serve_overrides": {"--served-model-name": EVIL_NAME},
                        "fleet_visible_devices": ["8,9,10,11", "12,13,14,15", "0,1,2,3", "4,5,6,7"],
                    }
                }
            }
        },
    )
    pd = _render(
        tmp,
        "a3-1p1d",
        {
            "all": {
                "hosts": {
                    "prefill-0": {
                        **hostile,
                        "fleet_serve_overrides": {"--served-model-name": EVIL_NAME},
                        "fleet_visible_devices": ["12,13,14,15", "8,9,10,11", "4,5,6,7", "0,1,2,3"],
                    },
                    "decode-0": hostile,
                }
            }
        },
    )
    return {"single": single, "pd": pd}


def test_hostile_values_reach_vllm_literally_single(hostile_renders, tmp_path):
    out = hostile_renders["single"]
    script = (out / "node-0" / "serve.sh").read_text()
    got = run_script(script, [], tmp_path)
    _assert_nothing_ran(tmp_path)
    assert got.env["HOSTILE"] == EVIL_ENV
    assert got.argv[0] == EVIL_MODEL
    assert got.argv[got.argv.index("--served-model-name") + 1] == EVIL_NAME
    # fleet_visible_devices drives the one engine's devices
    assert got.env["ASCEND_RT_VISIBLE_DEVICES"] == "8,9,10,11,12,13,14,15,0,1,2,3,4,5,6,7"
    plan = load_plan(out)
    assert plan["hosts"]["node-0"]["ranks"][0]["devices"] == "8,9,10,11,12,13,14,15,0,1,2,3,4,5,6,7"


def test_hostile_values_reach_vllm_literally_pd(hostile_renders, tmp_path):
    out = hostile_renders["pd"]
    plan = load_plan(out)
    for host in ("prefill-0", "decode-0"):
        hp = plan["hosts"][host]
        script = (out / host / "run_dp_template.sh").read_text()
        r = hp["ranks"][0]
        args = [_launcher_devices(0, hp["tp_size"]), str(r["api_port"]), str(hp["dp_size"]), str(r["dp_rank"]),
                hp["dp_address"], str(hp["dp_rpc_port"]), str(hp["tp_size"])]  # fmt: skip
        got = run_script(script, args, tmp_path / host)
        _assert_nothing_ran(tmp_path)
        assert got.env["HOSTILE"] == EVIL_ENV
        assert got.argv[0] == EVIL_MODEL
        if host == "prefill-0":
            assert got.argv[got.argv.index("--served-model-name") + 1] == EVIL_NAME
    # the export lines of the tutorial keep their exact form; the user's line is quoted
    text = (out / "prefill-0" / "run_dp_template.sh").read_text()
    assert "export HCCL_IF_IP=$local_ip\n" in text and 'export HCCL_OP_EXPANSION_MODE="AIV"\n' in text
    assert "export HOSTILE='$(touch PWNED1)" in text


def test_visible_devices_drive_every_launcher_rank(hostile_renders, tmp_path):
    """The image's launcher numbers devices from 0; each rank must get the inventory's."""
    out = hostile_renders["pd"]
    plan = load_plan(out)
    hp = plan["hosts"]["prefill-0"]
    wanted = ["12,13,14,15", "8,9,10,11", "4,5,6,7", "0,1,2,3"]
    assert [r["devices"] for r in hp["ranks"]] == wanted
    script = (out / "prefill-0" / "run_dp_template.sh").read_text()
    for i, r in enumerate(hp["ranks"]):
        args = [_launcher_devices(i, 4), str(r["api_port"]), "4", str(r["dp_rank"]), hp["dp_address"], "12321", "4"]
        got = run_script(script, args, tmp_path / f"rank{i}")
        assert got.env["ASCEND_RT_VISIBLE_DEVICES"] == wanted[i]
        assert got.argv[got.argv.index("--port") + 1] == str(r["api_port"])
    # without the variable the script is the tutorial's (no device mapping)
    plain = (out / "decode-0" / "run_dp_template.sh").read_text()
    assert 'case "$1"' not in plain


def test_visible_devices_checked():
    plan = plan_with("a3-single", {"node-0": {"fleet_visible_devices": ["0,1,2,3", "4,5,6,7", "8,9,10,11"]}})
    errors_with(plan, "host node-0", "fleet_visible_devices has 3 entries", "(4)")
    plan = plan_with("a3-single", {"node-0": {"fleet_visible_devices": ["0,1,2,3", "4,5,6,7", "8,9,10,11", "0,1,2,3"]}})
    errors_with(plan, "host node-0", "device 0", "used twice")
