"""One host's status: its containers, every rank's /health, the proxy's /healthcheck and the
listening ports, read in one call on the node (module fleet_status_probe), and the same record
for a host that cannot be reached (filter fleet_status_unreachable, on the controller).

Standard library and fleet_node only. ``host_status`` is pure (unit-tested); ``probe`` does the reading.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.ascend.fleet.plugins.module_utils.fleet_node import capture

# No proxy from the environment: the ranks are on the node's own addresses.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

DOCKER_SOCK = "/var/run/docker.sock"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def docker_inspect(name, timeout=30, sock_path=DOCKER_SOCK):
    """`docker container inspect NAME` as {rc, out, err}, in the CLI's shapes.

    Read from the Engine API on the local socket when Docker is the local daemon (the same
    JSON the CLI prints, without starting a CLI process per container: the status and
    converge probes read every node at once); from the CLI itself when DOCKER_HOST points elsewhere or the
    socket cannot be used."""
    if not os.environ.get("DOCKER_HOST") and os.path.exists(sock_path):
        conn = _UnixHTTPConnection(sock_path, timeout)
        try:
            conn.request("GET", f"/containers/{urllib.parse.quote(name, safe='')}/json")
            resp = conn.getresponse()
            status, body = resp.status, resp.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            status, body = None, ""
        finally:
            conn.close()
        if status == 200:
            return {"rc": 0, "out": f"[{body}]", "err": ""}
        if status == 404:
            return {"rc": 1, "out": "[]", "err": f"Error: No such container: {name}"}
    rc, out, err = capture(["docker", "container", "inspect", name], timeout=timeout)
    return {"rc": rc, "out": out, "err": err}


def container_state(name, inspect):
    """A container's record from `docker container inspect` ({rc, out, err}), or None when the
    host could not be reached."""
    if inspect is None:
        return {"name": name, "state": "unknown", "status": "host unreachable", "image": None}
    if inspect["rc"] != 0:
        err = (inspect.get("err") or "").strip()
        if "no such container" in err.lower() or "no such object" in err.lower():
            return {"name": name, "state": "absent", "status": "absent", "image": None}
        return {"name": name, "state": "unknown", "status": "docker: " + (err[:200] or "no answer"), "image": None}
    try:
        info = json.loads(inspect["out"])[0]
        st = info["State"]
    except (ValueError, LookupError, TypeError):
        return {"name": name, "state": "unknown", "status": "docker: unreadable inspect output", "image": None}
    if st.get("Running"):
        state = "running"
    elif st.get("Paused"):
        state = "paused"
    elif st.get("Restarting"):
        state = "restarting"
    else:
        state = "stopped"
    status = st.get("Status", "") + ("" if st.get("Running") else f" (exit code {st.get('ExitCode')})")
    return {
        "name": name,
        "state": state,
        "status": status,
        "image": (info.get("Config") or {}).get("Image"),
        "started_at": st.get("StartedAt"),
        "finished_at": st.get("FinishedAt"),
    }


def listening_ports(ss_out):
    """Local ports of `ss -H -t -l -n` lines (sorted, unique)."""
    ports = set()
    for line in ss_out.splitlines():
        fields = line.split()
        if len(fields) > 3:
            match = re.search(r":(\d+)$", fields[3])
            if match:
                ports.add(int(match.group(1)))
    return sorted(ports)


def rank_urls(job):
    """(health URLs, models URLs) of the host's ranks."""
    bases = [f"http://{job['node_ip']}:{rank['api_port']}" for rank in job.get("ranks") or []]
    return [b + "/health" for b in bases], [b + "/v1/models" for b in bases]


def host_status(job, reachable, error=None, inspects=None, codes=None, ss_out=None):
    """The host's status record (the shape status.yml reports, per host).

    job: host, role, instance, node_ip, engine_container (None: runs no engine),
    proxy_container (None: runs no proxy), ranks [{dp_rank, api_port, devices}], proxy_url,
    planned_ports, api_key_set. inspects: container name -> {rc, out, err}; codes: URL ->
    HTTP status (-1 no answer); ss_out: output of ss, or None when it failed.
    """
    inspects = inspects or {}
    codes = codes or {}
    key_set = bool(job.get("api_key_set"))

    def container(name):
        if not name:
            return None
        return container_state(name, inspects.get(name) if reachable else None)

    proxy_health = None
    if job.get("proxy_container"):
        url = job.get("proxy_url")
        proxy_health = {
            "url": url,
            "healthy": (codes.get(url, -1) == 200) if reachable else None,
            "http_status": codes.get(url) if reachable else None,
        }
    ranks = []
    for rank in job.get("ranks") or []:
        base = f"http://{job['node_ip']}:{rank['api_port']}"
        url, models = base + "/health", base + "/v1/models"
        ranks.append({
            "dp_rank": rank.get("dp_rank"),
            "api_port": rank["api_port"],
            "devices": rank.get("devices"),
            "url": url,
            "healthy": (codes.get(url, -1) == 200) if reachable else None,
            "http_status": codes.get(url) if reachable else None,
            "api_key_accepted": (codes.get(models, -1) == 200) if reachable and key_set else None,
        })
    planned = list(job.get("planned_ports") or [])
    listening = listening_ports(ss_out) if reachable and ss_out is not None else None
    return {
        "host": job["host"],
        "reachable": bool(reachable),
        "error": None if reachable else (error or "unreachable"),
        "role": job.get("role") or "proxy",
        "instance": job.get("instance"),
        "node_ip": job.get("node_ip"),
        "engine": container(job.get("engine_container")),
        "proxy": container(job.get("proxy_container")),
        "proxy_health": proxy_health,
        "ranks": ranks,
        "ports": {
            "planned": planned,
            "listening": [p for p in planned if p in listening] if listening is not None else None,
            "missing": [p for p in planned if p not in listening] if listening is not None else None,
        },
    }


def http_status(url, timeout, key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with _OPENER.open(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError, ValueError):
        return -1


def probe(job, api_key="", timeout=10.0):
    """Read everything host_status needs, at once, and return the record."""
    health, models = rank_urls(job)
    urls = health + (models if api_key else [])
    if job.get("proxy_container") and job.get("proxy_url"):
        urls.append(job["proxy_url"])
    names = [n for n in (job.get("engine_container"), job.get("proxy_container")) if n]
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(urls) + len(names) + 1))) as pool:
        code_futures = {url: pool.submit(http_status, url, timeout, api_key) for url in urls}
        inspect_futures = {n: pool.submit(docker_inspect, n, 60) for n in names}
        ss_future = pool.submit(capture, ["ss", "-H", "-t", "-l", "-n"])
    inspects = {name: fut.result() for name, fut in inspect_futures.items()}
    rc, ss_out, _ = ss_future.result()
    codes = {url: fut.result() for url, fut in code_futures.items()}
    return host_status({**job, "api_key_set": bool(api_key)}, True, None, inspects, codes,
                       ss_out if rc == 0 else None)
