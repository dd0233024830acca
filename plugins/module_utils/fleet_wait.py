"""Wait until every rank of a node answers /health, watching the whole instance.

The code of the ascend.fleet module ``fleet_wait_healthy`` (the serve and proxy roles);
standard library only (the node's system python3).

The spec names this node and its ranks, and the other nodes of the same instance
(``ascend_fleet.faults.watch_spec``):
  {"node": "decode-0", "ip": "10.0.0.2", "container": "vllm-ascend",
   "ranks": [{"dp_rank": 0, "api_port": 9000}, ...],
   "peers": [{"node": "decode-1", "ip": "10.0.0.3", "ranks": [...]}, ...]}

``watch`` looks for at most ``round_s`` seconds per call (the caller repeats the call, so a
node that stops answering is noticed by the caller's per-call timeout) and keeps what it saw
in a state file (reset when the container is recreated or restarted):

- this node's container: not running -> dead;
- each rank of this node: its `vllm serve ... --port P` process in the container. Seen
  and then gone, or never there ``grace_s`` seconds after the container started -> dead;
- each rank on the other nodes of the instance (a DP group spans them): its API port.
  vLLM binds it before it loads the model, so a port that accepted connections and now
  refuses them is a dead rank; a node whose ports neither accept nor refuse for ``lost_s``
  seconds (no route, no answer) has stopped answering.

It returns (state, report): "healthy" (every local rank answers), "starting" (nothing dead
yet: call again), "dead" (a rank, the container or a peer node is dead: no point waiting,
the DP group cannot form) or "timeout" (``timeout_s`` since the container started without
all healthy). ``wait_urls`` is the simple form (the proxy): every URL answers 200, ending
early when the container stops.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
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


def wait_urls(urls, container_name, timeout, interval):
    """The simple form: (state, report), state "healthy" (every URL answers 200), "dead"
    (the container stopped) or "timeout"."""
    start = time.monotonic()
    pending = list(urls)
    while True:
        pending = [u for u in pending if not url_ok(u)]
        ctext, running, _ = container(container_name)
        report = {"healthy": [u for u in urls if u not in pending], "pending": pending,
                  "container": ctext, "waited_s": round(time.monotonic() - start, 1)}
        if not pending:
            return "healthy", report
        if not running:
            return "dead", report
        if time.monotonic() - start > timeout:
            return "timeout", report
        time.sleep(interval)


def watch(spec, state_path, timeout, round_s, interval, grace, lost, save=True):
    """One round of the watch (see the module docstring): (state, report). save=False (check
    mode) keeps what was seen in memory only."""
    _, _, started = container(spec["container"])
    state = load_state(state_path, started)
    round_end = time.monotonic() + round_s
    while True:
        report, dead = check(spec, state, grace, lost)
        if save:
            save_state(state_path, state)
        if dead:
            return "dead", report
        if not report["pending"]:
            return "healthy", report
        if report["waited_s"] > timeout:
            return "timeout", report
        if time.monotonic() + interval > round_end:
            return "starting", report
        time.sleep(interval)


def summary(state, report, timeout=None):
    """One sentence for the result's msg."""
    if state == "dead":
        what = "; ".join(
            f"{d['node']}" + (f" DP rank {d['dp_rank']} (port {d['api_port']})" if "dp_rank" in d else "")
            + f": {d['what']}" for d in report.get("dead", [])
        ) or f"container {report.get('container')}"
        pending = report.get("pending") or []
        if not report.get("dead"):
            what = f"container is {report.get('container')}; not answering: {' '.join(map(str, pending))}"
        return f"dead: {what}"
    if state == "timeout":
        return (f"timed out after {report.get('waited_s')} s (limit {timeout} s); still not healthy: "
                f"{' '.join(map(str, report.get('pending') or []))}; container {report.get('container')}")
    if state == "starting":
        return f"still starting: {len(report.get('pending') or [])} pending after {report.get('waited_s')} s"
    return f"healthy: {len(report.get('healthy') or [])} answering"
