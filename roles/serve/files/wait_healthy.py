#!/usr/bin/env python3
"""Wait until every URL answers 200, failing fast if the container stops.

  wait_healthy.py --container NAME --timeout S --interval S URL [URL ...]

Prints JSON: {"healthy": [...], "pending": [...], "container": "running"|"exited (rc)",
"waited_s": N}. Exit 0 when all are healthy; 1 on timeout; 2 when the container is not
running (it exited: no point waiting).
"""

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request


def healthy(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def container_state(name):
    proc = subprocess.run(
        ["docker", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        return "missing"
    status, code = proc.stdout.split()
    return "running" if status == "running" else f"{status} (exit code {code})"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--container", required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--interval", type=float, default=5)
    parser.add_argument("urls", nargs="+")
    a = parser.parse_args()
    start = time.monotonic()
    pending = list(a.urls)
    while True:
        pending = [u for u in pending if not healthy(u)]
        state = container_state(a.container)
        report = {
            "healthy": [u for u in a.urls if u not in pending], "pending": pending,
            "container": state, "waited_s": round(time.monotonic() - start, 1),
        }
        if not pending:
            print(json.dumps(report))
            return 0
        if state != "running":
            print(json.dumps(report))
            return 2
        if time.monotonic() - start > a.timeout:
            print(json.dumps(report))
            return 1
        time.sleep(a.interval)


if __name__ == "__main__":
    sys.exit(main())
