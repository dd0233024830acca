#!/usr/bin/env python3
"""The lab's throttled upstream: a byte-counting, bandwidth-limiting TCP proxy.

It stands in front of the lab registry and the model hub as the cluster's uplink to the
outside world: every byte the fleet fetches from "upstream" passes through it, at a rate
you set, and is counted per upstream.

    python3 lab/upstream/server.py --control 127.0.0.1:5009 --rate 20MB/s \\
        --route registry=198.18.0.1:5002:198.18.0.1:5000 --route hub=198.18.0.1:8082:198.18.0.1:8081

Each upstream is its own link of the set rate (the lower bound of a bring-up is then
max(image, weights) / rate: both can stream at once). The rate limits what the upstream
sends (the download direction); requests are counted, not limited.

Control (HTTP, JSON) on --control:
  GET  /bytes    {"rate": B/s or 0, "upstreams": {NAME: {"down": N, "up": N, "connections": N}}}
  POST /reset    counters to zero
  POST /rate     body {"rate": B/s}, 0 = unlimited

Stdlib only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 64 * 1024
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_rate(text: str) -> int:
    """Bytes per second of "20MB/s", "500KiB/s", "1000000" (decimal units); 0/off: unlimited."""
    value = str(text).strip()
    if value.lower() in ("0", "off", "unlimited", "none"):
        return 0
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?(?:/s)?", value, re.IGNORECASE)
    if not match:
        raise ValueError(f"rate {text!r}: expected e.g. 20MB/s, 500KB/s, 1GiB/s or 0 (unlimited)")
    rate = int(float(match.group(1)) * UNITS[(match.group(2) or "").upper()])
    if rate <= 0:
        raise ValueError(f"rate {text!r}: must be positive (0 or off for unlimited)")
    return rate


class Bucket:
    """A token bucket shared by all connections of one upstream (one link).

    take(n) charges n bytes and sleeps for the debt: a sender that has sent more than the
    rate allows waits until the link would have carried it. A burst of 0.1 s of the rate
    keeps the flow smooth. clock and sleep are injectable so the arithmetic is testable.
    """

    def __init__(self, rate: int, clock=time.monotonic, sleep=time.sleep):
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep
        self.rate = rate
        self._tokens = 0.0
        self._last = clock()

    def set_rate(self, rate: int) -> None:
        with self._lock:
            self.rate, self._tokens, self._last = rate, 0.0, self._clock()

    def take(self, n: int) -> float:
        """Charge n bytes; returns (and sleeps) the wait in seconds."""
        with self._lock:
            if self.rate <= 0:
                return 0.0
            now = self._clock()
            burst = self.rate * 0.1
            self._tokens = min(self._tokens + (now - self._last) * self.rate, burst) - n
            self._last = now
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


class Upstream:
    """One proxied upstream: listen address -> target, its link and its counters."""

    def __init__(self, name: str, listen: tuple[str, int], target: tuple[str, int], rate: int):
        self.name, self.listen, self.target = name, listen, target
        self.bucket = Bucket(rate)
        self._lock = threading.Lock()
        self.down = self.up = self.connections = 0
        self.server: socket.socket | None = None

    def count(self, down: int = 0, up: int = 0, connections: int = 0) -> None:
        with self._lock:
            self.down += down
            self.up += up
            self.connections += connections

    def snapshot(self) -> dict:
        with self._lock:
            return {"down": self.down, "up": self.up, "connections": self.connections,
                    "listen": "{}:{}".format(*self.listen), "target": "{}:{}".format(*self.target)}

    def reset(self) -> None:
        with self._lock:
            self.down = self.up = self.connections = 0

    def start(self) -> None:
        self.server = socket.create_server(self.listen, reuse_port=False)
        self.listen = self.server.getsockname()[:2]
        threading.Thread(target=self._accept, daemon=True, name=f"accept-{self.name}").start()

    def close(self) -> None:
        if self.server is not None:
            with contextlib.suppress(OSError):
                self.server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            target = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()  # as a dead upstream: the connection is refused/closed
            return
        target.settimeout(None)
        self.count(connections=1)
        up = threading.Thread(target=self._pipe, args=(client, target, False), daemon=True)
        up.start()
        self._pipe(target, client, True)
        up.join()
        for sock in (client, target):
            sock.close()

    def _pipe(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(CHUNK):
                if downstream:
                    self.bucket.take(len(data))
                dst.sendall(data)
                self.count(down=len(data)) if downstream else self.count(up=len(data))
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class Proxy:
    """All upstreams plus the control endpoint."""

    def __init__(self, routes: list[tuple[str, tuple[str, int], tuple[str, int]]], rate: int):
        self.rate = rate
        self.upstreams = {name: Upstream(name, listen, target, rate) for name, listen, target in routes}

    def start(self) -> None:
        for upstream in self.upstreams.values():
            upstream.start()

    def close(self) -> None:
        for upstream in self.upstreams.values():
            upstream.close()

    def set_rate(self, rate: int) -> None:
        self.rate = rate
        for upstream in self.upstreams.values():
            upstream.bucket.set_rate(rate)

    def report(self) -> dict:
        return {"rate": self.rate, "upstreams": {n: u.snapshot() for n, u in self.upstreams.items()}}

    def reset(self) -> None:
        for upstream in self.upstreams.values():
            upstream.reset()

    def control_server(self, address: tuple[str, int]) -> ThreadingHTTPServer:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args):
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode() + b"\n"
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/bytes":
                    self._reply(200, proxy.report())
                else:
                    self._reply(404, {"error": f"unknown path {self.path}"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                if self.path == "/reset":
                    proxy.reset()
                    self._reply(200, proxy.report())
                elif self.path == "/rate":
                    try:
                        rate = int(json.loads(raw)["rate"])
                        if rate < 0:
                            raise ValueError
                    except (ValueError, KeyError, TypeError):
                        self._reply(400, {"error": 'body {"rate": bytes per second >= 0}'})
                        return
                    proxy.set_rate(rate)
                    self._reply(200, proxy.report())
                else:
                    self._reply(404, {"error": f"unknown path {self.path}"})

        return ThreadingHTTPServer(address, Handler)


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{text!r}: expected HOST:PORT")
    return host, int(port)


def parse_route(text: str) -> tuple[str, tuple[str, int], tuple[str, int]]:
    """NAME=LISTEN_HOST:PORT:TARGET_HOST:PORT"""
    name, sep, rest = text.partition("=")
    parts = rest.split(":")
    if not sep or not name or len(parts) != 4:
        raise ValueError(f"route {text!r}: expected NAME=LISTEN_HOST:PORT:TARGET_HOST:PORT")
    return name, host_port(":".join(parts[:2])), host_port(":".join(parts[2:]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--control", required=True, help="HOST:PORT of the control endpoint")
    parser.add_argument("--rate", default="0", help="per-upstream rate, e.g. 20MB/s (0: unlimited)")
    parser.add_argument("--route", action="append", required=True,
                        help="NAME=LISTEN_HOST:PORT:TARGET_HOST:PORT (repeatable)")
    args = parser.parse_args(argv)
    try:
        proxy = Proxy([parse_route(r) for r in args.route], parse_rate(args.rate))
        control = host_port(args.control)
    except ValueError as exc:
        parser.error(str(exc))
    proxy.start()
    server = proxy.control_server(control)
    print(json.dumps({"control": "{}:{}".format(*control), **proxy.report()}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
