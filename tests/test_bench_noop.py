"""Correctness check of bench/noop.py (not its full run): the recap it reads, and on the
lab (a3-1p1d, the lab the other lab tests share) one round of ``--check``: a ping round
and a site.yml re-run with changed=0 on every node, the ratio their quotient."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab.conftest import lab_unavailable, serving

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("bench_noop", REPO / "bench" / "noop.py")
noop = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(noop)

RECAP = """
PLAY RECAP *********************************************************************
decode-0                   : ok=61   changed=0    unreachable=0    failed=0    skipped=40   rescued=0    ignored=0
localhost                  : ok=12   changed=0    unreachable=0    failed=0    skipped=3    rescued=0    ignored=0
prefill-0                  : ok=70   changed=2    unreachable=0    failed=0    skipped=41   rescued=0    ignored=0
"""


def test_changed_tasks_are_read_by_name():
    out = ("PLAY [x] ***\n\nTASK [converge : " + noop.RECORD_TASK + "] ***\n"
           "changed: [prefill-0]\nok: [decode-0]\n\nTASK [Pull the engine image] ***\nok: [prefill-0]\n\n"
           "TASK [serve : Create or update the engine container] ***\nchanged: [decode-0]\n")
    proc = subprocess.CompletedProcess([], 0, out, "")
    assert noop.changed_tasks(proc) == {noop.RECORD_TASK, "Create or update the engine container"}


def test_recap_is_read_per_host():
    proc = subprocess.CompletedProcess([], 0, stdout=RECAP, stderr="")
    got = noop.recap(proc)
    assert got["decode-0"] == {"ok": 61, "changed": 0, "unreachable": 0, "failed": 0}
    assert got["prefill-0"]["changed"] == 2 and set(got) == {"decode-0", "localhost", "prefill-0"}


@pytest.mark.lab
def test_check_round_is_a_noop_and_the_ratio_is_site_over_ping(tmp_path):
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    serving("a3-1p1d")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "noop.py"), "a3-1p1d", "--check",
                           "--out", str(tmp_path)], capture_output=True, text=True, check=False, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [out] = list(tmp_path.glob("noop-a3-1p1d-*.json"))
    result = json.loads(out.read_text())
    assert result["nodes"] == 2  # prefill-0, decode-0 (not the controller's own plays)
    assert result["rounds"] == 1 and len(result["site_noop_s"]) == 1 and len(result["ping_round_s"]) == 1
    assert result["site_noop_s"][0] > 0 and result["ping_round_s"][0] > 0
    assert result["ratio"] == round(result["site_noop_median_s"] / result["ping_round_median_s"], 1)
    assert result["site_noop_tasks"] > 0 and result["bringup_s"] is None  # it was serving already
    assert "| a3-1p1d | 2 |" in proc.stdout
