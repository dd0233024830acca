"""The lab's throttled upstream (lab/upstream/server.py) on local sockets: byte counts,
reset, the rate switch and the token bucket's arithmetic (a fake clock, no timing)."""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("lab_upstream_server", REPO / "lab" / "upstream" / "server.py")
server = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(server)

HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.mark.parametrize(
    ("text", "rate"),
    [("20MB/s", 20_000_000), ("500KB/s", 500_000), ("1GiB/s", 2**30), ("1.5MB", 1_500_000),
     ("1000", 1000), ("0", 0), ("off", 0), ("2mib/s", 2 * 2**20)],
)
def test_rate_parsing(text, rate):
    assert server.parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "-5MB/s", "20 MB/h", "", "0.0000001B/s"])
def test_rate_parsing_refuses_nonsense(text):
    with pytest.raises(ValueError, match="rate"):
        server.parse_rate(text)


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.slept = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept += seconds
        self.now += seconds


def test_bucket_makes_a_sender_wait_exactly_bytes_over_rate():
    clock = FakeClock()
    bucket = server.Bucket(1000, clock=clock, sleep=clock.sleep)
    for _ in range(50):
        bucket.take(100)  # 5000 bytes at 1000 B/s
    assert clock.slept == pytest.approx(5.0)


def test_bucket_lets_an_idle_link_burst_only_a_tenth_of_a_second():
    clock = FakeClock()
    bucket = server.Bucket(1000, clock=clock, sleep=clock.sleep)
    clock.now = 60.0  # idle for a minute: at most 100 bytes (0.1 s) are free
    bucket.take(1100)
    assert clock.slept == pytest.approx(1.0)


def test_bucket_unlimited_and_rate_change():
    clock = FakeClock()
    bucket = server.Bucket(0, clock=clock, sleep=clock.sleep)
    assert bucket.take(10**9) == 0.0 and clock.slept == 0.0
    bucket.set_rate(2000)
    bucket.take(1000)
    assert clock.slept == pytest.approx(0.5)


def test_route_parsing():
    assert server.parse_route("registry=198.18.0.1:5002:198.18.0.1:5000") == (
        "registry", ("198.18.0.1", 5002), ("198.18.0.1", 5000))
    with pytest.raises(ValueError, match="NAME=LISTEN_HOST:PORT:TARGET_HOST:PORT"):
        server.parse_route("registry=198.18.0.1:5002")


@pytest.fixture
def target():
    """A TCP server that reads one request line and answers with a known payload."""
    payload = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes
    srv = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.makefile("rb").readline()
                conn.sendall(payload)

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[:2], payload
    srv.close()


def fetch(address, request=b"GET one\n"):
    with socket.create_connection(address) as conn:
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while data := conn.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def control(address, path, body=None):
    req = urllib.request.Request(f"http://{address[0]}:{address[1]}{path}",
                                 data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST")
    with HTTP.open(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def proxy(target):
    address, _ = target
    prx = server.Proxy([("registry", ("127.0.0.1", 0), address), ("hub", ("127.0.0.1", 0), address)], 0)
    prx.start()
    ctl = prx.control_server(("127.0.0.1", 0))
    threading.Thread(target=ctl.serve_forever, daemon=True).start()
    yield prx, ctl.server_address[:2]
    ctl.shutdown()
    prx.close()


def test_proxy_passes_bytes_through_and_counts_them_per_upstream(proxy, target):
    prx, ctl = proxy
    _, payload = target
    assert fetch(prx.upstreams["registry"].listen) == payload
    assert fetch(prx.upstreams["registry"].listen) == payload
    assert fetch(prx.upstreams["hub"].listen, b"GET hub\n") == payload
    report = control(ctl, "/bytes")
    assert report["upstreams"]["registry"]["down"] == 2 * len(payload)
    assert report["upstreams"]["registry"]["up"] == 2 * len(b"GET one\n")
    assert report["upstreams"]["registry"]["connections"] == 2
    assert report["upstreams"]["hub"]["down"] == len(payload)
    assert report["upstreams"]["hub"]["up"] == len(b"GET hub\n")
    assert report["rate"] == 0


def test_control_resets_counters_and_sets_the_rate(proxy, target):
    prx, ctl = proxy
    fetch(prx.upstreams["hub"].listen)
    assert control(ctl, "/bytes")["upstreams"]["hub"]["down"] > 0
    after = control(ctl, "/reset", {})
    assert all(u["down"] == u["up"] == u["connections"] == 0 for u in after["upstreams"].values())
    assert control(ctl, "/rate", {"rate": 20_000_000})["rate"] == 20_000_000
    assert all(u.bucket.rate == 20_000_000 for u in prx.upstreams.values())
    # A throttled link still delivers every byte, counted once.
    assert fetch(prx.upstreams["hub"].listen) == target[1]
    assert control(ctl, "/bytes")["upstreams"]["hub"]["down"] == len(target[1])


def test_control_refuses_a_bad_rate(proxy):
    _, ctl = proxy
    with pytest.raises(urllib.error.HTTPError) as err:
        control(ctl, "/rate", {"rate": "fast"})
    assert err.value.code == 400


def test_dead_upstream_closes_the_connection_and_counts_nothing():
    dead = socket.create_server(("127.0.0.1", 0))
    address = dead.getsockname()[:2]
    dead.close()  # nothing listens there now
    prx = server.Proxy([("registry", ("127.0.0.1", 0), address)], 0)
    prx.start()
    try:
        try:
            got = fetch(prx.upstreams["registry"].listen)
        except ConnectionResetError:  # closed before the request was read: a reset
            got = b""
        assert got == b""
        assert prx.report()["upstreams"]["registry"]["connections"] == 0
    finally:
        prx.close()
