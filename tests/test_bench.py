"""Correctness checks of the benchmark scripts (bench/), not their full runs.

- bench/upstream.py: the ratio and lower-bound arithmetic, the role timings it reads from
  ansible.posix.profile_roles, the README table it keeps; and on the lab (a3-1p1d, already
  up for the lab tests) its ``--check``: the throttled upstream's counters equal the bytes
  really fetched through it (the image's manifest, config and layers, every weights file),
  HTTP headers only on top.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("bench_upstream", REPO / "bench" / "upstream.py")
upstream = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(upstream)


def test_rate_parsing():
    assert upstream.parse_rate("20MB/s") == 20_000_000
    assert upstream.parse_rate("500KB/s") == 500_000
    assert upstream.parse_rate("1GiB/s") == 2**30
    for bad in ("0", "fast", "-1MB/s", "0MB/s"):
        with pytest.raises(upstream.BenchError, match="--rate"):
            upstream.parse_rate(bad)


def test_lower_bound_and_ratios():
    sizes = {"image": 200_000_000, "weights": 100_000_000}
    # image 200 MB at 20 MB/s = 10 s, weights at once: 5 s; + 30 s engine start
    assert upstream.lower_bound_s(sizes["image"], sizes["weights"], 20_000_000, 30.0) == 40.0
    f = upstream.figures(sizes, {"registry": 400_000_000, "hub": 100_500_000}, 20_000_000, 60.0, 30.0)
    assert f == {
        "image_ratio": 2.0, "weights_ratio": 1.005, "lower_bound_s": 40.0, "sequential_bound_s": 45.0,
        "bring_up_s": 60.0, "engine_start_s": 30.0, "bring_up_over_bound": 1.5,
    }


PROFILE_ROLES = """
ROLES RECAP ********************************************************************
Monday 30 November 2026  13:18:26 +0000 (0:00:00.069)       0:00:01.017 *******
===============================================================================
serve ------------------------------------------------------------------ 41.20s
image ------------------------------------------------------------------- 9.44s
proxy ------------------------------------------------------------------- 3.80s
ansible.builtin.include_role -------------------------------------------- 0.10s
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
total ------------------------------------------------------------------ 54.54s
"""


def test_role_times_from_profile_roles():
    times = upstream.role_times(PROFILE_ROLES)
    assert times["serve"] == 41.2 and times["image"] == 9.44 and times["proxy"] == 3.8
    assert times["total"] == 54.54 and times["include_role"] == 0.1


def result_with(date):
    return {
        "date": date, "machine": {"cores": 2, "ram_gib": 23.4}, "topology": "a2-4p4d", "nodes": 8,
        "rate_mb_s": 20.0, "sizes": {"image": 215_000_000, "weights": 67_108_864},
        "runs": [{"mode": "cache", "figures": upstream.figures(
            {"image": 215_000_000, "weights": 67_108_864}, {"registry": 215_000_000, "hub": 67_108_864},
            20_000_000, 50.0, 30.0)}],
    }


def test_readme_table_is_made_then_appended_to(tmp_path):
    first = upstream.update_readme("# Benchmarks\n\nText.\n", [
        upstream.table_row(result_with("2026-11-30 14:00"), result_with("x")["runs"][0])])
    assert first.startswith("# Benchmarks\n\nText.\n")
    assert upstream.TABLE_HEAD in first
    row = "| 2026-11-30 14:00 | 2 cores, 23.4 GiB | a2-4p4d | 8 | 20.0 MB/s | cache | 215.0 | 67.1 | 1.00 | 1.00 "
    assert row in first and "| 50.0 | 30.0 | 40.8 | 1.23 |" in first
    second = upstream.update_readme(first + "\nAfter the table.\n", [
        upstream.table_row(result_with("2026-12-01 09:00"), result_with("x")["runs"][0])])
    assert second.count(upstream.TABLE_HEAD) == 1
    assert second.index("2026-11-30 14:00") < second.index("2026-12-01 09:00") < second.index(upstream.TABLE_END)
    assert second.rstrip().endswith("After the table.")


def lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not (REPO / "lab" / ".state" / "a3-1p1d" / "lab.json").exists():
        proc = subprocess.run([str(REPO / "lab" / "labctl"), "up", "a3-1p1d"], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            return f"labctl up a3-1p1d failed: {proc.stderr[-1000:]}"
    return None


@pytest.mark.lab
def test_check_counts_every_byte_through_the_upstream_once():
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "upstream.py"), "a3-1p1d", "--check"],
                          capture_output=True, text=True, check=False, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    # Everything was fetched (bodies = the registry's and the hub's own sizes) ...
    assert report["received"]["registry"] == report["sizes"]["image"] > 0
    assert report["received"]["hub"] == report["sizes"]["weights"] > 0
    # ... and counted once, with at most the HTTP headers (under 1 KiB a response) on top.
    for name in ("registry", "hub"):
        extra = report["counted"][name] - report["received"][name]
        assert 0 < extra <= 1024 * report["requests"][name], (name, report)
    assert 1.0 < report["image_ratio"] < 1.01 and 1.0 < report["weights_ratio"] < 1.01
