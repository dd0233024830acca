"""Seed fidelity: the rendered files carry exactly the tutorial's exports, flags and launcher.

For a2-single, a3-single, a3-1p1d and a2-4p4d every host's script is run under bash next
to the tutorial's own script (placeholders filled in as the tutorial asks), and what
``vllm`` receives is compared: the exported environment, and the ``vllm serve`` flags
parsed with vLLM 0.21.0's flag table (JSON configs compared as objects).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from ascend_fleet.serveflags import FlagSpec, parse_serve_argv
from tests.conftest import load_plan
from tests.seed import (
    export_lines,
    exported_names,
    fill_placeholders,
    run_script,
    tutorial_launch_commands,
    tutorial_scripts,
)

SPEC = FlagSpec.load("0.21.0")
SEED = tutorial_scripts()
LAUNCH = tutorial_launch_commands()
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


@pytest.mark.parametrize(("topology", "host", "seed"), PARAMS)
def test_exports_and_flags_match_tutorial(rendered, tmp_path, topology, host, seed):
    plan = load_plan(rendered[topology])
    hp = plan["hosts"][host]
    ours = script_of(rendered[topology], host)
    theirs = fill_placeholders(SEED[seed], hp["node_ip"], hp["nic_name"])
    if seed == "a2-prefill":
        # 5.2.2: "For each P instance, only these two configuration values need to be
        # modified: kv_port and engine_id" (engine_id from 0, kv_port 30000, 30100, ...).
        index = int(host.split("-")[1])
        theirs = theirs.replace('"kv_port": "30000"', f'"kv_port": "{30000 + 100 * index}"')
        theirs = theirs.replace('"engine_id": "0"', f'"engine_id": "{index}"')

    # The export lines, as text and in order (placeholders replaced as the tutorial asks).
    assert export_lines(ours) == export_lines(theirs)

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
    ("topology", "n_prefill", "n_decode"), [("a3-1p1d", 4, 16), ("a2-4p4d", 32, 32), ("a2-1m-4p4d", 4, 4)]
)
def test_proxy_lists_every_rank(rendered, topology, n_prefill, n_decode):
    plan = load_plan(rendered[topology])
    lists = _proxy_lists(rendered[topology], "prefill-0")
    assert lists["--host"] == [plan["hosts"]["prefill-0"]["node_ip"]]
    assert len(lists["--prefiller-hosts"]) == len(lists["--prefiller-ports"]) == n_prefill
    assert len(lists["--decoder-hosts"]) == len(lists["--decoder-ports"]) == n_decode
    expected_p = [
        (plan["hosts"][h]["node_ip"], str(r["api_port"]))
        for h in plan["hosts"]
        if plan["hosts"][h]["role"] == "prefill"
        for r in plan["hosts"][h]["ranks"]
    ]
    assert list(zip(lists["--prefiller-hosts"], lists["--prefiller-ports"], strict=True)) == expected_p
    # only the proxy host gets a proxy.sh
    assert [h for h in plan["hosts"] if (rendered[topology] / h / "proxy.sh").exists()] == ["prefill-0"]
