#!/usr/bin/env python3
"""Wait until every rank of this node answers /health, watching the whole instance.

  wait_healthy.py --spec JSON --state FILE --timeout S --round S --interval S
                  --grace S --lost S

The spec names this node and its ranks, and the other nodes of the same instance:
  {"node": "decode-0", "ip": "10.0.0.2", "container": "vllm-ascend",
   "ranks": [{"dp_rank": 0, "api_port": 9000}, ...],
   "peers": [{"node": "decode-1", "ip": "10.0.0.3", "ranks": [...]}, ...]}

It watches for at most --round seconds per call (the caller repeats the call, so a node
that stops answering is noticed by the caller's per-call timeout) and keeps what it saw
in --state (reset when the container is recreated or restarted):

- this node's container: not running -> dead;
- each rank of this node: its `vllm serve ... --port P` process in the container. Seen
  and then gone, or never there --grace seconds after the container started -> dead;
- each rank on the other nodes of the instance (a DP group spans them): its API port.
  vLLM binds it before it loads the model, so a port that accepted connections and now
  refuses them is a dead rank; a node whose ports neither accept nor refuse for --lost
  seconds (no route, no answer) has stopped answering.

Simple form (the proxy role): --container NAME --timeout S --interval S URL [URL ...]
waits until every URL answers 200, ending early when the container stops (exit 2).

Prints one JSON report; exit 0: every local rank healthy; 3: still starting, nothing dead
(call again); 2: a rank, the container or a peer node is dead (no point waiting, the DP
group cannot form); 1: --timeout seconds since the container started without all healthy.
"""

import argparse
import errno
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

PORT_ARG = re.compile(r"--port(?:=|\s+)(\d+)(?:\s|$)")


def healthy(ip, port):
    # Short: a rank that has bound its port but is still loading accepts the connection
    # and answers nothing; the ranks are asked all at once (see check).
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def probe(ip, port):
    """'open', 'refused' (the node answers, nothing listens) or 'silent' (no answer)."""
    try:
        with socket.create_connection((ip, port), timeout=3):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return "refused"
        return "silent"


def container(name):
    """(state text, running, started_at) from docker inspect."""
    proc = subprocess.run(
        ["docker", "inspect", "--format",
         "{{.State.Status}} {{.State.ExitCode}} {{.State.StartedAt}} {{.Id}}", name],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        return "missing", False, ""
    status, code, started, ident = proc.stdout.split()
    state = "running" if status == "running" else f"{status} (exit code {code})"
    return state, status == "running", f"{ident}@{started}"


def rank_ports(name):
    """API ports of the `vllm serve` processes running in the container."""
    proc = subprocess.run(["docker", "top", name, "-eo", "pid,args"],
                          capture_output=True, text=True, check=False)
    ports = set()
    for line in proc.stdout.splitlines()[1:]:
        if "vllm" in line and " serve" in line:
            ports.update(int(p) for p in PORT_ARG.findall(line))
    return ports if proc.returncode == 0 else None


def load_state(path, started):
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
        if state.get("started") == started:
            return state
    except (OSError, ValueError):
        pass
    return {"started": started, "first_seen": time.time(), "seen": [], "peer_open": [],
            "silent_since": {}}


def save_state(path, state):
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(state, fh)
    os.replace(tmp, path)


def check(spec, state, grace, lost):
    """One look at everything: (report, dead) where dead lists what is gone."""
    name = spec["container"]
    ctext, running, _ = container(name)
    dead = []
    now = time.time()
    age = now - state["first_seen"]
    pending, ready = [], []
    procs = rank_ports(name) if running else set()
    with ThreadPoolExecutor(max_workers=32) as pool:
        local = {r["api_port"]: pool.submit(healthy, spec["ip"], r["api_port"])
                 for r in (spec["ranks"] if running else [])}
        remote = {(peer["node"], r["api_port"]): pool.submit(probe, peer["ip"], r["api_port"])
                  for peer in spec.get("peers", []) for r in peer["ranks"]}
        ok = {port: f.result() for port, f in local.items()}
        answers_of = {}
        for (node, port), f in remote.items():
            answers_of.setdefault(node, {})[port] = f.result()
    for rank in spec["ranks"]:
        port = rank["api_port"]
        if ok.get(port):
            ready.append(port)
            continue
        pending.append(port)
        if procs is None or not running:
            continue
        if port in procs:
            if port not in state["seen"]:
                state["seen"].append(port)
        elif port in state["seen"]:
            dead.append({"node": spec["node"], "dp_rank": rank["dp_rank"], "api_port": port,
                         "what": "rank process exited"})
        elif age > grace:
            dead.append({"node": spec["node"], "dp_rank": rank["dp_rank"], "api_port": port,
                         "what": f"rank process not running {int(age)} s after the start"})
    if not running:
        dead.append({"node": spec["node"], "what": f"container {name} is {ctext}"})
    for peer in spec.get("peers", []):
        answers = answers_of.get(peer["node"], {})
        if not answers:
            continue
        # A firewall may drop packets to ports nobody listens on yet: sshd must be silent too.
        if all(a == "silent" for a in answers.values()) and probe(peer["ip"], 22) == "silent":
            since = state["silent_since"].setdefault(peer["node"], now)
            if now - since >= lost:
                dead.append({"node": peer["node"], "what": f"node {peer['node']} ({peer['ip']}) "
                             f"does not answer for {int(now - since)} s"})
            continue
        state["silent_since"].pop(peer["node"], None)
        for rank in peer["ranks"]:
            key = f"{peer['ip']}:{rank['api_port']}"
            if answers[rank["api_port"]] == "open":
                if key not in state["peer_open"]:
                    state["peer_open"].append(key)
            elif key in state["peer_open"]:
                dead.append({"node": peer["node"], "dp_rank": rank["dp_rank"],
                             "api_port": rank["api_port"],
                             "what": "rank stopped listening (its process is gone)"})
    report = {"node": spec["node"], "container": ctext, "healthy": ready, "pending": pending,
              "dead": dead, "waited_s": round(age, 1),
              "started_at": state["started"].partition("@")[2]}
    return report, dead


def url_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_urls(a):
    """The simple form: every URL healthy (0), the container stopped (2), timeout (1)."""
    start = time.monotonic()
    pending = list(a.urls)
    while True:
        pending = [u for u in pending if not url_ok(u)]
        state, running, _ = container(a.container)
        report = {"healthy": [u for u in a.urls if u not in pending], "pending": pending,
                  "container": state, "waited_s": round(time.monotonic() - start, 1)}
        if not pending or not running or time.monotonic() - start > a.timeout:
            print(json.dumps(report))
            return 0 if not pending else 2 if not running else 1
        time.sleep(a.interval)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec")
    parser.add_argument("--state")
    parser.add_argument("--container")
    parser.add_argument("urls", nargs="*")
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--round", type=float, default=20)
    parser.add_argument("--interval", type=float, default=5)
    parser.add_argument("--grace", type=float, default=30)
    parser.add_argument("--lost", type=float, default=15)
    a = parser.parse_args()
    if not a.spec:
        if not (a.container and a.urls):
            parser.error("give --spec and --state, or --container and URLs")
        return wait_urls(a)
    if not a.state:
        parser.error("--spec needs --state")
    spec = json.loads(a.spec)
    _, _, started = container(spec["container"])
    state = load_state(a.state, started)
    round_end = time.monotonic() + a.round
    while True:
        report, dead = check(spec, state, a.grace, a.lost)
        save_state(a.state, state)
        if dead:
            print(json.dumps(report))
            return 2
        if not report["pending"]:
            print(json.dumps(report))
            return 0
        if report["waited_s"] > a.timeout:
            print(json.dumps(report))
            return 1
        if time.monotonic() + a.interval > round_end:
            print(json.dumps(report))
            return 3
        time.sleep(a.interval)


if __name__ == "__main__":
    sys.exit(main())
