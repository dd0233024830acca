"""Failing fast: the watch spec of the serve wait, and the "when things break" table.

WHEN_THINGS_BREAK is the README's table (symptom -> what the toolkit says -> what to do).
Each row names where its "what the toolkit says" text is asserted (a fault test) or
produced (the code): test_table_matches_the_suite fails when the text drifts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ascend_fleet.faults import watch_spec
from tests.conftest import load_plan

REPO = Path(__file__).resolve().parents[1]

# symptom, what the toolkit says, what to do, [files where the text is asserted or produced],
# the test that proves it (file::function; several with " + ")
LAB = "tests/test_faults_lab.py"
WHEN_THINGS_BREAK = [
    ("A second run starts while one runs against the same fleet",
     "another run holds the lock of this fleet: user <u> on controller <c> (pid <p>)",
     "Wait for that run; if it is gone, break the lock with -e run_lock_break=true",
     [LAB, "plugins/action/fleet_run_lock.py"],
     f"{LAB}::test_two_operators_second_refused_at_once_first_unaffected"
     f" + {LAB}::test_stale_lock_is_broken_live_one_only_on_request"),
    ("A node is down before the run",
     "phase '<play>', node <node>: <node> unreachable: <the ssh error>",
     "Power the node on or fix its network, re-run site.yml",
     [LAB, "plugins/callback/fleet_summary.py"],
     f"{LAB}::test_node_lost_mid_start_then_down_before_the_run_then_heals"),
    ("/etc/hccn.conf has a stale address",
     "<node>: device <d>: /etc/hccn.conf address_<d>=<a> but hccn_tool -ip -g says <b>",
     "Make them agree (hccn_tool or the file), restart the node's network, re-run",
     [LAB, "ascend_fleet/checks.py"],
     f"{LAB}::test_stale_hccn_conf_named_by_preflight"),
    ("A port an engine needs is taken by another program",
     "held by",
     "Stop that program or move the port range, re-run",
     ["tests/lab/test_node_checks.py"],
     "tests/lab/test_node_checks.py::test_npu_faults_named_with_device_and_fix"),
    ("The image registry is down",
     "<node>: cannot pull <image> from registry <r> after <n> attempts",
     "Start the registry or fix the node's route to it (image_registry_mirror), re-run",
     [LAB, "roles/image/tasks/main.yml"],
     f"{LAB}::test_registry_down_image_phase_names_registry_and_node"),
    ("The model hub refuses the token",
     "weights_token",
     "Set a valid weights_token (vault), re-run",
     ["tests/lab/test_secrets_lab.py", "tests/test_weights_tool.py"],
     "tests/lab/test_secrets_lab.py::test_wrong_hub_token_says_401_names_the_variable_and_prints_no_token"),
    ("Another download holds the weights lock",
     "weights lock <f> is held by pid <p> on <h> (download of <m>) since <t>; still held after <s> s",
     "Let that download finish, or raise weights_lock_wait_s, re-run",
     ["tests/lab/test_node_checks.py", "plugins/module_utils/fleet_weights.py"],
     "tests/lab/test_node_checks.py::test_weights_lock_wait_then_disk_full_during_download_then_resumes"),
    ("The weights cache fills up during the download",
     "disk full",
     "Free space in weights_cache_dir, re-run (the download resumes; no corrupt file is kept)",
     ["tests/lab/test_node_checks.py", "plugins/module_utils/fleet_weights.py"],
     "tests/lab/test_node_checks.py::test_weights_lock_wait_then_disk_full_during_download_then_resumes"),
    ("A rank dies while the engines start",
     "<node> DP rank <k> (port <p>): rank process exited",
     "Read the log tail in the message, fix the cause, re-run site.yml",
     [LAB, "roles/serve/tasks/wait.yml", "plugins/module_utils/fleet_wait.py"],
     f"{LAB}::test_rank_crash_during_start_fails_fast_naming_node_rank_and_log"),
    ("An engine container exits during the start",
     "did not become healthy",
     "Read the log tail, fix the cause, re-run site.yml",
     ["tests/test_serve_failure.py", LAB, "roles/serve/tasks/wait.yml"],
     "tests/test_serve_failure.py::test_failed_engine_is_reported_with_its_log_then_recovers"),
    ("The node being waited for stops answering",
     "node <node> (<ip>) stopped answering during the wait",
     "Power the node on or fix its network, re-run site.yml",
     [LAB, "roles/serve/tasks/wait.yml"],
     f"{LAB}::test_node_lost_mid_start_then_down_before_the_run_then_heals"),
    ("Another node of a DP group stops answering during the start",
     "node <node> (<ip>) does not answer for <s> s",
     "Power the node on or fix its network, re-run site.yml",
     ["plugins/module_utils/fleet_wait.py"],
     "tests/test_faults_dp_lab.py::test_dp_group_node_lost_mid_start_is_named_by_its_peers_then_heals"),
    ("A rank dies while serving",
     "degraded",
     "Re-run site.yml (it restarts the engines of that instance)",
     [LAB, "tests/test_ops.py"],
     f"{LAB}::test_rank_crash_while_serving_is_degraded_then_site_heals"),
    ("The PD proxy dies",
     "proxy",
     "Re-run site.yml (it starts only the proxy)",
     [LAB],
     f"{LAB}::test_proxy_dies_status_names_it_and_site_restarts_only_the_proxy"),
    ("Any run that fails",
     "FAILURE SUMMARY <...> - phase '<play>', node <node>: <what> What to do: <advice>",
     "Do what it says, re-run: a failed run leaves no run lock and no engine starting",
     ["plugins/callback/fleet_summary.py", LAB],
     f"{LAB}::test_registry_down_image_phase_names_registry_and_node"),
]


@pytest.mark.parametrize("row", WHEN_THINGS_BREAK, ids=[r[0] for r in WHEN_THINGS_BREAK])
def test_table_matches_the_suite(row):
    _, says, _, files, _ = row
    # The placeholders stand for values; the fixed words between them must all be there.
    pieces = [p.strip(" ():,") for p in re.split(r"<[^>]+>", says) if p.strip(" ():,")]
    # Each fixed piece must be in one of the files (the message is assembled across them).
    text = "\n".join((REPO / f).read_text() for f in files)
    missing = [p for p in pieces if p not in text]
    assert not missing, f"{missing} of {says!r} in none of {files}"


def proof(tests: str) -> str:
    """The README cell: each test as `file::function`, or the reason there is none."""
    return " + ".join(f"`{t}`" if "::" in t else t for t in tests.split(" + "))


@pytest.mark.parametrize("row", WHEN_THINGS_BREAK, ids=[r[0] for r in WHEN_THINGS_BREAK])
def test_each_row_names_a_test_that_exists(row):
    for test in row[4].split(" + "):
        if "::" not in test:
            assert test.startswith("(no lab test: "), test  # said, with the reason
            continue
        path, name = test.split("::")
        assert f"\ndef {name}(" in (REPO / path).read_text(), f"{name} not in {path}"


def test_readme_carries_the_table():
    """The README's "When things break" table is this table, row for row, in this order."""
    lines = ["| symptom | what the toolkit says | what to do | proved by |", "|---|---|---|---|"]
    lines += [f"| {s} | `{t}` | {d} | {proof(p)} |" for s, t, d, _, p in WHEN_THINGS_BREAK]
    readme = (REPO / "README.md").read_text()
    assert "\n".join(lines) + "\n" in readme
    section = readme.split("## When things break", 1)[1].split("\n## ", 1)[0]
    assert [line for line in section.splitlines() if line.startswith("|")] == lines


def test_watch_spec_names_the_other_nodes_of_the_dp_group(rendered):
    plan = load_plan(rendered["a2-4p4d"])
    decode = sorted(h for h, e in plan["hosts"].items() if e["role"] == "decode")
    spec = watch_spec(plan, decode[0], "vllm-ascend")
    assert spec["node"] == decode[0] and spec["container"] == "vllm-ascend"
    assert [r["dp_rank"] for r in spec["ranks"]] == [r["dp_rank"] for r in plan["hosts"][decode[0]]["ranks"]]
    # The DP group spans the decode nodes: every other decode node is watched, no prefill.
    assert [p["node"] for p in spec["peers"]] == decode[1:]
    watched = sorted(r["dp_rank"] for p in [spec, *spec["peers"]] for r in p["ranks"])
    assert watched == list(range(plan["hosts"][decode[0]]["dp_size"]))


def test_watch_spec_single_node_instance_has_no_peers(rendered):
    plan = load_plan(rendered["a3-1p1d"])
    spec = watch_spec(plan, "decode-0", "vllm-ascend")
    assert spec["peers"] == []
    assert len(spec["ranks"]) == 16


def test_weights_lock_wait_is_bounded_with_progress_and_names_the_holder(tmp_path):
    """fleet_weights.py (run as a program) ensure waits a bounded time for the weights lock another download
    holds, printing progress, then names the holder; lock-status says the same at once."""
    tool = str(REPO / "plugins" / "module_utils" / "fleet_weights.py")
    lock = tmp_path / "weights.lock"
    common = ["--dir", str(tmp_path / "model"), "--endpoint", "http://127.0.0.1:9", "--model", "o/m",
              "--lock", str(lock)]
    holder = subprocess.Popen([sys.executable, tool, "ensure", *common, "--", sys.executable, "-c", "input()"],
                              stdin=subprocess.PIPE, text=True)
    try:
        for _ in range(100):  # until the holder has written its record
            status = subprocess.run([sys.executable, tool, "lock-status", "--lock", str(lock)],
                                    capture_output=True, text=True)
            if status.returncode == 1 and "pid" in status.stdout:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert status.returncode == 1, status.stdout
        assert f"is held by pid {holder.pid} on " in json.loads(status.stdout)["error"]
        waited = subprocess.run([sys.executable, tool, "ensure", *common, "--lock-wait", "1", "--", "true"],
                                capture_output=True, text=True)
    finally:
        holder.communicate("\n", timeout=120)
    info = json.loads(waited.stdout)
    assert waited.returncode == 6 and info["status"] == "lock-timeout"
    assert f"is held by pid {holder.pid} on " in info["error"] and "(download of o/m)" in info["error"]
    assert "still held after 1 s (weights_lock_wait_s)" in info["error"]
    assert f"waiting: weights lock {lock} is held by pid {holder.pid}" in waited.stderr
    # Free again: lock-status says so.
    free = subprocess.run([sys.executable, tool, "lock-status", "--lock", str(lock)], capture_output=True, text=True)
    assert free.returncode == 0 and json.loads(free.stdout)["status"] == "free"
