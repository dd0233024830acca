"""Failing fast: the watch spec of the serve wait, and the "when things break" table.

WHEN_THINGS_BREAK is the README's table (symptom -> what the toolkit says -> what to do).
Each row names where its "what the toolkit says" text is asserted (a fault test) or
produced (the code): test_table_matches_the_suite fails when the text drifts.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ascend_fleet.faults import watch_spec
from tests.conftest import load_plan

REPO = Path(__file__).resolve().parents[1]

# symptom, what the toolkit says, what to do, [files where the text is asserted or produced]
WHEN_THINGS_BREAK = [
    ("A rank dies while the engines start",
     "<node> DP rank <k> (port <p>): rank process exited",
     "Read the log tail in the message, fix the cause, re-run site.yml",
     ["roles/serve/tasks/wait.yml", "roles/serve/files/wait_healthy.py"]),
    ("Another node of a DP group stops answering during the start",
     "does not answer for",
     "Power the node on or fix its network, re-run site.yml",
     ["roles/serve/files/wait_healthy.py"]),
    ("The node being waited for stops answering",
     "stopped answering during the wait",
     "Power the node on or fix its network, re-run site.yml",
     ["roles/serve/tasks/wait.yml"]),
    ("An engine container exits during the start",
     "did not become healthy",
     "Read the log tail, fix the cause, re-run site.yml",
     ["tests/test_serve_failure.py", "tests/test_faults_lab.py", "roles/serve/tasks/wait.yml"]),
    ("A rank dies while serving",
     "degraded",
     "Re-run site.yml (it restarts the engines of that instance)",
     ["tests/test_faults_lab.py", "tests/test_ops.py"]),
    ("The PD proxy dies",
     "proxy",
     "Re-run site.yml (it starts only the proxy)",
     ["tests/test_faults_lab.py"]),
    ("A port an engine needs is taken by another program",
     "held by",
     "Stop that program or move the port range, re-run",
     ["tests/lab/test_node_checks.py"]),
    ("The model hub refuses the token",
     "weights_token",
     "Set a valid weights_token (vault), re-run",
     ["tests/lab/test_secrets_lab.py", "tests/test_weights_tool.py"]),
]


@pytest.mark.parametrize("row", WHEN_THINGS_BREAK, ids=[r[0] for r in WHEN_THINGS_BREAK])
def test_table_matches_the_suite(row):
    _, says, _, files = row
    # The placeholders stand for values; the fixed words between them must all be there.
    pieces = [p.strip(" ():,") for p in re.split(r"<[^>]+>", says) if p.strip(" ():,")]
    # Each fixed piece must be in one of the files (the message is assembled across them).
    text = "\n".join((REPO / f).read_text() for f in files)
    missing = [p for p in pieces if p not in text]
    assert not missing, f"{missing} of {says!r} in none of {files}"


def test_readme_carries_the_table():
    """The README's "When things break" table is this table, row for row, in this order."""
    lines = ["| symptom | what the toolkit says | what to do |", "|---|---|---|"]
    lines += [f"| {s} | `{t}` | {d} |" for s, t, d, _ in WHEN_THINGS_BREAK]
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
