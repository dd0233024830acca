"""Seed fidelity: the rendered files carry exactly the tutorial's exports, flags and launcher.

The tutorial's facts come from ``tests/data/tutorial-facts.yml`` (each with its section and
line in the tutorial); ``test_facts_agree_with_the_tutorial_text`` re-derives them from the
tutorial's text beside the checkout, so the two cannot drift. For a2-single, a3-single,
a3-1p1d and a2-4p4d every host's script is run under bash next to the tutorial's script
(rebuilt from the facts, placeholders filled in as the tutorial asks), and what ``vllm``
receives is compared: the exported environment, and the ``vllm serve`` flags parsed with
vLLM 0.21.0's flag table (JSON configs compared as objects).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from ascend_fleet.recipes import load_recipe
from ascend_fleet.serveflags import FlagSpec, parse_serve_argv
from tests.conftest import load_plan
from tests.seed import (
    SEED_TEXT,
    derive_facts,
    export_lines,
    exported_names,
    fill_placeholders,
    load_facts,
    run_script,
    tutorial_script,
)

SPEC = FlagSpec.load("0.21.0")
FACTS = load_facts()
# Documented, reviewed replacements of tutorial lines (recipe `deviations`, if any).
DEVIATIONS = load_recipe().get("deviations") or []
SEED = {name: tutorial_script(FACTS, name, DEVIATIONS) for name in FACTS["scripts"]}
LAUNCH = {name: [*f["command"], *(x for pair in f["args"] for x in pair)] for name, f in FACTS["launchers"].items()}
# topology -> host -> the tutorial script it must reproduce
CASES = {
    "a2-single": {"node-0": "a2-single"},
    "a3-single": {"node-0": "a3-single"},
    "a3-1p1d": {"prefill-0": "a3-prefill", "decode-0": "a3-decode"},
    "a2-4p4d": {
        **{f"prefill-{i}": "a2-prefill" for i in range(4)},
        **{f"decode-{i}": "a2-decode" for i in range(4)},
    },
}
PARAMS = [(topo, host, seed) for topo, hosts in CASES.items() for host, seed in hosts.items()]


def tutorial_for(script: str, seed: str, host: str, hp: dict) -> str:
    """The tutorial's script for this host: placeholders filled as the tutorial asks, and for
    the A2 prefill instances the two values 5.2.2 says to change per instance ("For each P
    instance, only these two configuration values need to be modified: kv_port and
    engine_id": engine_id from 0, kv_port 30000, 30100, ...)."""
    theirs = fill_placeholders(script, hp["node_ip"], hp["nic_name"])
    if seed == "a2-prefill":
        index = int(host.split("-")[1])
        theirs = theirs.replace('"kv_port": "30000"', f'"kv_port": "{30000 + 100 * index}"')
        theirs = theirs.replace('"engine_id": "0"', f'"engine_id": "{index}"')
    return theirs


def assert_same_preamble(ours: str, theirs: str) -> None:
    """The export lines, as text and in order; then every line before the serve command, in
    order: the tutorial's, with exactly the recipe's documented deviations applied (our own
    comments aside)."""
    assert export_lines(ours) == export_lines(theirs)
    theirs_head = [x for x in theirs.splitlines()[:-1] if x.strip()]
    ours_head = [
        x
        for x in ours.split("\nexec vllm serve ")[0].splitlines()[1:]
        if x.strip() and (not x.startswith("#") or x in theirs_head)
    ]
    assert ours_head == theirs_head


def script_of(render_dir: Path, host: str) -> str:
    for name in ("run_dp_template.sh", "serve.sh"):
        path = render_dir / host / name
        if path.exists():
            return path.read_text()
    raise AssertionError(f"no serve script rendered for {host}")


def rank0_args(host_plan: dict) -> list[str]:
    """What launch_online_dp.py passes to run_dp_template.sh for the host's first rank."""
    if host_plan["role"] == "single":
        return []
    r = host_plan["ranks"][0]
    return [
        r["devices"],
        str(r["api_port"]),
        str(host_plan["dp_size"]),
        str(r["dp_rank"]),
        host_plan["dp_address"],
        str(host_plan["dp_rpc_port"]),
        str(host_plan["tp_size"]),
    ]


def test_facts_agree_with_the_tutorial_text():
    """The data file is what the tutorial says: re-derived from its text, it is identical."""
    if not SEED_TEXT.is_file():
        msg = f"tutorial text not found at {SEED_TEXT} (the shared folder beside the checkout)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{msg}; in CI it must be there")
        pytest.skip(msg)
    assert derive_facts(SEED_TEXT.read_text()) == {k: FACTS[k] for k in ("scripts", "launchers")}


def test_facts_name_their_tutorial_lines():
    """Spot checks that the data file points at the right lines of the tutorial."""
    pre = FACTS["scripts"]["a3-prefill"]
    assert pre["section"] == "5.2.1" and pre["lines"] == [447, 512]
    assert {"line": 461, "text": "export HCCL_BUFFSIZE=2560"} in pre["exports"]
    assert {"line": 484, "flag": "--no-enable-prefix-caching"} in pre["serve"]["flags"]
    assert FACTS["scripts"]["a2-decode"]["section"] == "5.2.2"
    assert FACTS["launchers"]["a2-decode"]["line"] == 858


@pytest.mark.parametrize(("topology", "host", "seed"), PARAMS)
def test_exports_and_flags_match_tutorial(rendered, tmp_path, topology, host, seed):
    plan = load_plan(rendered[topology])
    hp = plan["hosts"][host]
    ours = script_of(rendered[topology], host)
    theirs = tutorial_for(SEED[seed], seed, host, hp)
    assert_same_preamble(ours, theirs)

    args = rank0_args(hp)
    got = run_script(ours, args, tmp_path / "ours")
    want = run_script(theirs, args, tmp_path / "tutorial")

    for name in exported_names(theirs):
        assert got.env.get(name) == want.env.get(name), name
    assert set(exported_names(ours)) == set(exported_names(theirs))
    if hp["role"] != "single":
        assert got.env["HCCL_IF_IP"] == hp["node_ip"]
        sockets = {got.env[n] for n in ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME")}
        assert sockets == {hp["nic_name"]}
        assert got.env["ASCEND_RT_VISIBLE_DEVICES"] == hp["ranks"][0]["devices"]

    ours_cmd = parse_serve_argv(got.argv, SPEC)
    seed_cmd = parse_serve_argv(want.argv, SPEC)
    assert ours_cmd.model == seed_cmd.model == hp["model_path"]
    assert ours_cmd.values == seed_cmd.values
    assert len(ours_cmd.given) == len(seed_cmd.given)


def _launch_tokens(render_dir: Path, host: str) -> list[str]:
    text = (render_dir / host / "launch.sh").read_text()
    line = next(x for x in text.splitlines() if x.startswith("exec "))
    return shlex.split(line)[1:]


def _as_flags(tokens: list[str]) -> dict[str, str]:
    idx = next(i for i, t in enumerate(tokens) if t.endswith("launch_online_dp.py"))
    rest = tokens[idx + 1 :]
    return dict(zip(rest[::2], rest[1::2], strict=True))


@pytest.mark.parametrize(
    ("topology", "host", "seed"), [p for p in PARAMS if p[0] != "a2-single" and p[0] != "a3-single"]
)
def test_launcher_arguments_match_tutorial(rendered, topology, host, seed):
    plan = load_plan(rendered[topology])
    hosts = plan["hosts"]
    tokens = _launch_tokens(rendered[topology], host)
    assert tokens[0] == "python"
    assert tokens[1] == "/vllm-workspace/vllm-ascend/examples/external_online_dp/launch_online_dp.py"
    ours = _as_flags(tokens)
    theirs = _as_flags(LAUNCH[seed])
    # The tutorial's rules for its placeholders:
    if seed == "a3-prefill":
        theirs["--dp-address"] = hosts["prefill-0"]["node_ip"]  # xx.xx.xx.1 = the P node
    elif seed == "a3-decode":
        theirs["--dp-address"] = hosts["decode-0"]["node_ip"]  # xx.xx.xx.2 = the D node
    elif seed == "a2-prefill":
        theirs["--dp-address"] = hosts[host]["node_ip"]  # each P instance is its own master
    elif seed == "a2-decode":
        index = int(host.split("-")[1])
        theirs["--dp-rank-start"] = str(8 * index)  # 0, 8, 16, 24
        theirs["--dp-address"] = hosts["decode-0"]["node_ip"]  # the rank-start-0 D node
    assert ours == theirs


def test_a2_4p4d_engine_ids_and_kv_ports(rendered):
    """Tutorial 5.2.2: engine_id 0-3 and kv_port 30000-30300 on P, 4 and 30400 on D."""
    plan = load_plan(rendered["a2-4p4d"])
    for i in range(4):
        p = plan["hosts"][f"prefill-{i}"]
        assert (p["engine_id"], p["kv_port"]) == (i, 30000 + 100 * i)
        assert p["kv_ports"] == list(range(30000 + 100 * i, 30000 + 100 * i + 8))
        d = plan["hosts"][f"decode-{i}"]
        assert (d["engine_id"], d["kv_port"], d["dp_rank_start"]) == (4, 30400, 8 * i)
        assert d["kv_ports"] == list(range(30400 + 8 * i, 30400 + 8 * i + 8))


def _proxy_lists(render_dir: Path, host: str) -> dict[str, list[str]]:
    tokens = shlex.split((render_dir / host / "proxy.sh").read_text().split("exec ", 1)[1].replace("\\\n", " "))
    out: dict[str, list[str]] = {}
    key = None
    for tok in tokens[2:]:
        if tok.startswith("--"):
            key = tok
            out[key] = []
        else:
            out[key].append(tok)
    return out


@pytest.mark.parametrize(
    ("topology", "n_prefill", "n_decode"),
    [("a3-1p1d", 4, 16), ("a2-4p4d", 32, 32), ("a2-1m-4p4d", 4, 4), ("a3-1m-2p2d", 4, 4), ("a3-1p1d-proxy", 4, 16)],
)
def test_proxy_lists_every_rank(rendered, topology, n_prefill, n_decode):
    plan = load_plan(rendered[topology])
    proxy_host = plan["proxy"]["host"]
    lists = _proxy_lists(rendered[topology], proxy_host)
    assert lists["--host"] == [plan["proxy"]["address"]]
    assert len(lists["--prefiller-hosts"]) == len(lists["--prefiller-ports"]) == n_prefill
    assert len(lists["--decoder-hosts"]) == len(lists["--decoder-ports"]) == n_decode
    expected_p = [
        (plan["hosts"][h]["node_ip"], str(r["api_port"]))
        for h in plan["hosts"]
        if plan["hosts"][h]["role"] == "prefill"
        for r in plan["hosts"][h]["ranks"]
    ]
    assert list(zip(lists["--prefiller-hosts"], lists["--prefiller-ports"], strict=True)) == expected_p
    # only the proxy host gets a proxy.sh: the prefill master, or the dedicated proxy host
    hosts = [*plan["hosts"], *plan.get("proxy_hosts", {})]
    assert [h for h in hosts if (rendered[topology] / h / "proxy.sh").exists()] == [proxy_host]
    if topology == "a3-1p1d-proxy":
        assert proxy_host == "proxy-0" and plan["proxy"]["address"] == "198.51.100.30"
        assert sorted(p.name for p in (rendered[topology] / "proxy-0").iterdir()) == ["plan.json", "proxy.sh"]
    else:
        assert proxy_host == "prefill-0"


# The 1M layouts (5.2.3, line 885: "1*4P-1*4D ... DP4TP8") run the tutorial's 1M PD scripts
# (5.2.1) with DP4 x TP8: same exports in the same order, same flags, except what the
# layout itself sets (DP/TP sizes and ranks, ports, kv identity and sizes).
LAYOUT_DESTS = {
    "data_parallel_size",
    "data_parallel_rank",
    "data_parallel_address",
    "data_parallel_rpc_port",
    "tensor_parallel_size",
    "port",
    "kv_transfer_config",
}


@pytest.mark.parametrize(
    ("topology", "host", "seed"),
    [
        ("a2-1m-4p4d", "prefill-0", "a3-prefill"),
        ("a2-1m-4p4d", "decode-3", "a3-decode"),
        ("a3-1m-2p2d", "prefill-1", "a3-prefill"),
        ("a3-1m-2p2d", "decode-0", "a3-decode"),
    ],
)
def test_1m_profiles_follow_the_tutorial_1m_scripts(rendered, tmp_path, topology, host, seed):
    plan = load_plan(rendered[topology])
    hp = plan["hosts"][host]
    ours = script_of(rendered[topology], host)
    theirs = fill_placeholders(SEED[seed], hp["node_ip"], hp["nic_name"])
    assert export_lines(ours) == export_lines(theirs)
    if seed == "a3-prefill":
        # the 1M prefill values the 128K A2 prefill script does not have (lines 461, 463)
        assert "export HCCL_BUFFSIZE=2560" in export_lines(ours)
        assert "export VLLM_ASCEND_ENABLE_FLASHCOMM1=1" in export_lines(ours)
    args = rank0_args(hp)
    got = parse_serve_argv(run_script(ours, args, tmp_path / "ours").argv, SPEC)
    want = parse_serve_argv(run_script(theirs, args, tmp_path / "tutorial").argv, SPEC)
    strip = lambda values: {k: v for k, v in values.items() if k not in LAYOUT_DESTS}  # noqa: E731  (local helper)
    assert strip(got.values) == strip(want.values)
    assert (got.values["tensor_parallel_size"], got.values["data_parallel_size"]) == (8, 4)
    assert got.values["data_parallel_rank"] == hp["ranks"][0]["dp_rank"]
    kv = got.values["kv_transfer_config"]
    assert kv["kv_role"] == want.values["kv_transfer_config"]["kv_role"]
    assert kv["kv_connector_extra_config"] == {
        "prefill": {"dp_size": 4, "tp_size": 8},
        "decode": {"dp_size": 4, "tp_size": 8},
    }
    if seed == "a3-prefill":
        assert got.values["enable_prefix_caching"] is False
        assert got.values["additional_config"]["enable_dsa_cp"] is True
