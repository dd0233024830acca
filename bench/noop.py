#!/usr/bin/env python3
"""No-op re-run of site.yml against one `ansible -m ping` round, side by side, in one run.

    bench/noop.py a2-4p4d                      the shipped topology's lab
    bench/noop.py a2-32 --inventory FILE       a generated inventory (ascend-fleet inventory)
    bench/noop.py a3-1p1d --rounds 1 --check   the small correctness check CI runs

It brings the topology's lab up (lab/labctl up) and the service with site.yml if it is not
serving yet (that first run's time is the bring-up time, reported when this run did it),
then alternates, ROUNDS times: one ping round over every node (connections warm: a first
round before the measured ones opens them) and one site.yml re-run, which must report
changed=0 on every host and find the fleet converged (one probe per node, the phases
skipped); except with --check, also the same re-run task by task (-e converge_fast=false),
the cost of a no-op before the converge probe, side by side. The figures are medians;
the ratio is site / ping. Results go to bench/results/noop-<topology>-<UTC date>.json
and a Markdown row is printed for bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RECORD_TASK = "Keep the record of this completed run (the next run compares with it)"
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def machine() -> dict:
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), "0")
    return {"cores": os.cpu_count(), "ram_gib": round(int(mem) / 2**20, 1), "kernel": platform.release()}


def run(cmd: list[str], env: dict, timeout: int = 7200) -> tuple[float, subprocess.CompletedProcess]:
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return time.monotonic() - start, proc


def recap(proc: subprocess.CompletedProcess) -> dict[str, dict[str, int]]:
    return {m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}
            for m in RECAP.findall(proc.stdout)}


def changed_tasks(proc: subprocess.CompletedProcess) -> set[str]:
    """Names of the tasks that changed something (a bring-up changes more than the record)."""
    out = set()
    for block in proc.stdout.split("\nTASK [")[1:]:
        name = block.split("]", 1)[0].split(" : ", 1)[-1]
        if re.search(r"^changed: \[", block, re.M):
            out.add(name)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("topology")
    ap.add_argument("--inventory", help="inventory file (default: the shipped one of that name)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--check", action="store_true", help="a quick correctness check: one round, results kept")
    a = ap.parse_args(argv)
    rounds = 1 if a.check else a.rounds
    state = REPO / "lab" / ".state" / a.topology
    inventory = ["-i", a.inventory or a.topology, "-i", str(state / "hosts.yml")]
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(state / "facts"), "PATH": f"{BIN}:{os.environ['PATH']}"}

    labctl = [sys.executable, str(REPO / "lab" / "labctl"), "up", a.topology]
    if a.inventory:
        labctl += ["--inventory", a.inventory]
    up_s, up = run(labctl, env)
    if up.returncode != 0:
        print(f"labctl up {a.topology} failed:\n{up.stderr[-3000:]}", file=sys.stderr)
        return 1
    site = [str(BIN / "ansible-playbook"), "site.yml", *inventory]
    ping = [str(BIN / "ansible"), "all", *inventory, "-m", "ansible.builtin.ping", "-o"]

    first_s, first = run(site, env)
    if first.returncode != 0:
        print(f"site.yml failed:\n{first.stdout[-4000:]}", file=sys.stderr)
        return 1
    hosts = sorted(h for h in recap(first) if h != "localhost")  # the fleet's nodes
    bringup = first_s if changed_tasks(first) - {RECORD_TASK} else None
    warm_s, warm = run(ping, env)  # opens the connections the measured rounds reuse
    if warm.returncode != 0:
        print(f"ping failed:\n{warm.stdout[-3000:]}", file=sys.stderr)
        return 1

    pings, sites, fulls = [], [], []
    full_tasks = None
    for _ in range(rounds):
        p_s, p = run(ping, env)
        s_s, s = run(site, env)
        measured = [("site", s)]
        if not a.check:
            # the same re-run task by task (every phase, converge_fast=false), side by side
            f_s, f = run([*site, "-e", "converge_fast=false"], env)
            measured.append(("site converge_fast=false", f))
            fulls.append(f_s)
            full_tasks = len(re.findall(r"^TASK \[", f.stdout, re.M))
        for what, proc in measured:
            changed = {h: r["changed"] for h, r in recap(proc).items()
                       if r["changed"] or r["failed"] or r["unreachable"]}
            if p.returncode != 0 or proc.returncode != 0 or changed:
                print(f"a measured round was not a no-op (ping rc {p.returncode}, {what} rc {proc.returncode}, "
                      f"changed/failed {changed}):\n{proc.stdout[-3000:]}", file=sys.stderr)
                return 1
        if "Converged: every node" not in s.stdout:
            print(f"the re-run did not find the fleet converged:\n{s.stdout[-3000:]}", file=sys.stderr)
            return 1
        pings.append(p_s)
        sites.append(s_s)
    tasks = len(re.findall(r"^TASK \[", s.stdout, re.M))
    result = {
        "bench": "noop",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "topology": a.topology,
        "nodes": len(hosts),
        "rounds": rounds,
        "ping_round_s": [round(x, 2) for x in pings],
        "site_noop_s": [round(x, 2) for x in sites],
        "ping_round_median_s": round(statistics.median(pings), 2),
        "site_noop_median_s": round(statistics.median(sites), 2),
        "ratio": round(round(statistics.median(sites), 2) / round(statistics.median(pings), 2), 1),
        "site_noop_tasks": tasks,
        # every phase task by task (converge_fast=false): what a no-op re-run cost before
        "site_full_s": [round(x, 2) for x in fulls],
        "site_full_median_s": round(statistics.median(fulls), 2) if fulls else None,
        "site_full_tasks": full_tasks,
        "full_ratio": (round(round(statistics.median(fulls), 2) / round(statistics.median(pings), 2), 1)
                       if fulls else None),
        "bringup_s": round(bringup, 1) if bringup is not None else None,
        "lab_up_s": round(up_s, 1),
        "ping_cold_s": round(warm_s, 2),
        "goal_ratio": 3.0,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    out = a.out / f"noop-{a.topology}-{result['date'][:10]}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    bringup_cell = f"{result['bringup_s']} s" if bringup is not None else "-"
    full_cell = (f"{result['site_full_median_s']} s ({full_tasks} tasks), {result['full_ratio']}x"
                 if fulls else "-")
    print(f"\n| {result['date'][:10]} | {a.topology} | {result['nodes']} | {result['ping_round_median_s']} s | "
          f"{result['site_noop_median_s']} s ({tasks} tasks) | {result['ratio']}x (goal <= 3x) | {full_cell} | "
          f"{bringup_cell} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
