"""The status report in Python: one host's record (module_utils of fleet_status_probe) and the
fleet's verdict and table (ascend_fleet.status)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from ansible_collections.ascend.fleet.plugins.module_utils.fleet_status import (
    container_state,
    host_status,
    listening_ports,
)

from ascend_fleet.status import fleet_report, status_table

SS = """LISTEN 0 4096 10.0.0.21:7100 0.0.0.0:*
LISTEN 0 4096 10.0.0.21:7101 0.0.0.0:*
LISTEN 0 128 0.0.0.0:22 0.0.0.0:*
LISTEN 0 4096 [::]:1999 [::]:*
"""


def inspect(running=True, exit_code=0, image="reg/vllm-ascend:v0.21.0rc1"):
    state = {"Running": running, "Paused": False, "Restarting": False, "ExitCode": exit_code,
             "Status": "running" if running else "exited", "StartedAt": "t0", "FinishedAt": "t1"}
    return {"rc": 0, "out": json.dumps([{"State": state, "Config": {"Image": image}}]), "err": ""}


def job(host="decode-0", ranks=(7100, 7101), proxy=False, key=False):
    return {
        "host": host, "role": host.split("-")[0], "instance": host, "node_ip": "10.0.0.21",
        "engine_container": "vllm-ascend-dsv4", "proxy_container": "vllm-ascend-proxy" if proxy else None,
        "ranks": [{"dp_rank": i, "api_port": p, "devices": [i]} for i, p in enumerate(ranks)],
        "proxy_url": "http://10.0.0.21:1999/healthcheck" if proxy else None,
        "planned_ports": [*ranks, 1999] if proxy else list(ranks), "api_key_set": key,
    }


def test_container_states():
    assert container_state("e", inspect())["state"] == "running"
    stopped = container_state("e", inspect(running=False, exit_code=137))
    assert stopped["state"] == "stopped" and stopped["status"] == "exited (exit code 137)"
    absent = container_state("e", {"rc": 1, "out": "[]", "err": "Error: No such container: e"})
    assert absent == {"name": "e", "state": "absent", "status": "absent", "image": None}
    broken = container_state("e", {"rc": 1, "out": "", "err": "Cannot connect to the Docker daemon"})
    assert broken["state"] == "unknown" and broken["status"] == "docker: Cannot connect to the Docker daemon"
    assert container_state("e", None)["status"] == "host unreachable"


def test_listening_ports_of_ss():
    assert listening_ports(SS) == [22, 1999, 7100, 7101]


def test_a_healthy_host_and_one_rank_down():
    codes = {"http://10.0.0.21:7100/health": 200, "http://10.0.0.21:7101/health": -1}
    s = host_status(job(), True, inspects={"vllm-ascend-dsv4": inspect()}, codes=codes, ss_out=SS)
    assert s["reachable"] is True and s["engine"]["state"] == "running"
    assert [r["healthy"] for r in s["ranks"]] == [True, False]
    assert [r["http_status"] for r in s["ranks"]] == [200, -1]
    assert s["ports"] == {"planned": [7100, 7101], "listening": [7100, 7101], "missing": []}
    assert s["proxy"] is None and s["proxy_health"] is None
    assert all(r["api_key_accepted"] is None for r in s["ranks"])  # no key set


def test_api_key_refused_and_proxy_failing():
    codes = {"http://10.0.0.21:7100/health": 200, "http://10.0.0.21:7100/v1/models": 401,
             "http://10.0.0.21:1999/healthcheck": 503}
    s = host_status(job(ranks=(7100,), proxy=True, key=True), True,
                    inspects={"vllm-ascend-dsv4": inspect(), "vllm-ascend-proxy": inspect()}, codes=codes, ss_out=SS)
    assert s["ranks"][0]["api_key_accepted"] is False
    assert s["proxy_health"] == {"url": "http://10.0.0.21:1999/healthcheck", "healthy": False, "http_status": 503}


def test_unreachable_record():
    s = host_status(job(), False, "ssh: connect to host 10.0.0.21 port 22: No route to host")
    assert s["reachable"] is False and s["error"].startswith("ssh: connect")
    assert s["engine"]["state"] == "unknown"
    assert all(r["healthy"] is None for r in s["ranks"])
    assert s["ports"]["listening"] is None and s["ports"]["missing"] is None


PLAN = {
    "topology": "a3-1p1d", "recipe": "r",
    "instances": [{"nodes": ["prefill-0"]}, {"nodes": ["decode-0"]}],
    "hosts": {"prefill-0": {"ranks": [{}] * 1, "served_name": "dsv4"}, "decode-0": {"ranks": [{}] * 2}},
    "entrypoint": {"host": "prefill-0", "address": "10.0.0.11", "port": 1999},
}
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def healthy(host, ranks, proxy=False):
    codes = {f"http://10.0.0.21:{p}/health": 200 for p in ranks}
    if proxy:
        codes["http://10.0.0.21:1999/healthcheck"] = 200
    inspects = {"vllm-ascend-dsv4": inspect(), "vllm-ascend-proxy": inspect()}
    ss = SS + "LISTEN 0 1 x:7200 y\n"
    return host_status(job(host, ranks, proxy), True, inspects=inspects, codes=codes, ss_out=ss)


def test_report_up_and_its_table():
    statuses = {"prefill-0": healthy("prefill-0", (7100,), proxy=True), "decode-0": healthy("decode-0", (7100, 7101))}
    report = fleet_report(PLAN, statuses, ["decode-0", "prefill-0"], NOW)
    assert report["service"] == "up" and report["problems"] == []
    assert report["order"] == ["prefill-0", "decode-0"]
    assert report["summary"] == {"hosts": 2, "ranks": 3, "healthy_ranks": 3, "unreachable": []}
    assert report["generated_utc"] == "2026-11-30T12:00:00Z"
    assert report["entrypoint"] == {"host": "prefill-0", "url": "http://10.0.0.11:1999", "model": "dsv4"}
    table = status_table(report, "/r.json").splitlines()
    assert table[0].split() == ["HOST", "ROLE", "INSTANCE", "REACH", "ENGINE", "HEALTHY", "PORTS", "PROXY"]
    assert table[1].split() == ["prefill-0", "prefill", "prefill-0", "yes", "running", "1/1", "2/2", "running", "ok"]
    assert "image reg/vllm-ascend:v0.21.0rc1" in table
    assert "service UP: 3/3 ranks healthy, entry point http://10.0.0.11:1999" in table
    assert table[-1] == "report: /r.json" and all(len(line) <= 80 for line in table)


def test_report_degraded_names_the_unreachable_host_and_down_when_nothing_answers():
    statuses = {"prefill-0": healthy("prefill-0", (7100,), proxy=True),
                "decode-0": host_status(job(), False, "no route")}
    report = fleet_report(PLAN, statuses, ["prefill-0", "decode-0"], NOW)
    assert report["service"] == "degraded"
    assert report["problems"] == ["decode-0 unreachable", "2 of 3 ranks not healthy"]
    assert report["summary"]["unreachable"] == ["decode-0"]
    assert "decode-0 unreachable: no route" in status_table(report, "r")

    stopped = {"vllm-ascend-dsv4": inspect(running=False, exit_code=1)}
    down = {h: host_status(job(h, (7100,)), True, inspects=stopped, codes={}, ss_out="") for h in PLAN["hosts"]}
    report = fleet_report(PLAN, down, ["prefill-0", "decode-0"], NOW)
    assert report["service"] == "down"
    assert "prefill-0 vllm-ascend-dsv4 stopped" in report["problems"]


def test_a_host_not_probed_and_a_refused_key_are_problems():
    statuses = {"prefill-0": healthy("prefill-0", (7100,), proxy=True)}
    decode = host_status(job(ranks=(7100, 7101), key=True), True, inspects={"vllm-ascend-dsv4": inspect()},
                         codes={"http://10.0.0.21:7100/health": 200, "http://10.0.0.21:7101/health": 200,
                                "http://10.0.0.21:7100/v1/models": 401, "http://10.0.0.21:7101/v1/models": 200},
                         ss_out=SS)
    report = fleet_report(PLAN, {**statuses, "decode-0": decode}, ["prefill-0", "decode-0"], NOW)
    assert report["problems"] == ["decode-0 ranks on ports 7100 refuse the API key (fleet_api_key)"]
    assert report["service"] == "degraded"
    report = fleet_report(PLAN, statuses, ["prefill-0", "decode-0"], NOW)
    assert "decode-0 not probed" in report["problems"]


def _engine_api(sock_path, containers):
    """An HTTP server on a Unix socket answering GET /containers/NAME/json as dockerd does."""
    import http.server
    import socketserver
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.split("/")[2]
            body = json.dumps(containers[name]) if name in containers else json.dumps(
                {"message": f"No such container: {name}"})
            self.send_response(200 if name in containers else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

        def get_request(self):
            request, _ = super().get_request()
            return request, ("local", 0)

    server = Server(str(sock_path), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_docker_inspect_reads_the_engine_api_in_the_clis_shapes(tmp_path, monkeypatch):
    from ansible_collections.ascend.fleet.plugins.module_utils import fleet_status

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    info = {"State": {"Running": True, "Status": "running", "StartedAt": "2026-11-30T20:26:35Z"},
            "Config": {"Image": "registry.local/ascend/vllm-ascend:v0.21.0rc1"}}
    server = _engine_api(tmp_path / "docker.sock", {"vllm-ascend": info})
    try:
        found = fleet_status.docker_inspect("vllm-ascend", timeout=5, sock_path=str(tmp_path / "docker.sock"))
        assert found["rc"] == 0 and json.loads(found["out"]) == [info]
        state = container_state("vllm-ascend", found)
        assert (state["state"], state["image"], state["started_at"]) == (
            "running", info["Config"]["Image"], "2026-11-30T20:26:35Z")
        absent = fleet_status.docker_inspect("gone", timeout=5, sock_path=str(tmp_path / "docker.sock"))
        assert container_state("gone", absent)["state"] == "absent"
    finally:
        server.shutdown()
        server.server_close()


def test_docker_inspect_falls_back_on_the_cli_without_a_local_socket(tmp_path, monkeypatch):
    """DOCKER_HOST set (or no socket): the CLI answers, as `docker container inspect` would."""
    from ansible_collections.ascend.fleet.plugins.module_utils import fleet_status

    calls = []

    def cli(cmd, timeout=60):
        calls.append(cmd)
        return 1, "[]", "Error: No such object: x"

    monkeypatch.setattr(fleet_status, "capture", cli)
    missing = fleet_status.docker_inspect("x", sock_path=str(tmp_path / "none.sock"))
    assert calls == [["docker", "container", "inspect", "x"]]
    assert container_state("x", missing)["state"] == "absent"
    monkeypatch.setenv("DOCKER_HOST", "tcp://198.18.0.1:2375")
    (tmp_path / "docker.sock").write_text("")
    fleet_status.docker_inspect("x", sock_path=str(tmp_path / "docker.sock"))
    assert len(calls) == 2
