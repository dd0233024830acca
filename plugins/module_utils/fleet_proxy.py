"""Drain and hold the PD proxy (vllm-ascend's load_balance_proxy_server_example.py).

The code of the ascend.fleet module ``fleet_proxy_admin`` (the upgrade role), run on the
proxy host with the system python3 (standard library only). The proxy's own admin
endpoints: POST /instances/remove and /instances/add ({"type": "prefill"|"decode",
"instances": ["host:port", ...]}; both answer with the current lists), GET /healthcheck
({"request_num": requests in flight, ...}). A removed instance gets no new request; the
proxy drops it from its lists once no request is in flight (checked every
--waiting-retry-interval, 10 s). An added instance is listed once it answers /v1/models.

remove / add: take instances out (and wait until the proxy no longer lists them) or put
them back (and wait until it lists them). hold: waits until nothing is in flight, pauses
the proxy container (its listening socket stays open: new connections wait in the kernel's
accept queue until release), then asks the engines' /metrics that none of them still runs a
request; if one does, the proxy is released and the hold tried again. release: unpauses.

Progress lines go to ``say`` (a Said: the module returns them); each operation returns 0 on
success and 1 on a timeout (a hold that times out leaves the proxy serving, not paused);
a bad answer from the proxy raises (URLError, OSError, ValueError, KeyError, RuntimeError).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request

PROGRESS_EVERY_S = 5.0


class Said:
    """The progress lines of one call, each with the time (the module returns them)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, msg: str) -> None:
        self.lines.append(f"[{time.strftime('%H:%M:%S')}] {msg}")


say = Said()


def call(url: str, path: str, body: dict | None = None, timeout: float = 10.0) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url.rstrip("/") + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.load(resp)


def listed(url: str, kind: str) -> list[str]:
    """The proxy's current instances of one type (an add of nothing changes nothing)."""
    answer = call(url, "/instances/add", {"type": kind, "instances": []})
    if "error" in answer:
        raise ValueError(answer["error"])
    return list(answer[f"current_{kind}_instances"])


def in_flight(url: str) -> int:
    return int(call(url, "/healthcheck")["request_num"])


def remove(args) -> int:
    answer = call(args.url, "/instances/remove", {"type": args.type, "instances": args.instances})
    if "error" in answer:
        raise ValueError(answer["error"])
    say(f"remove {args.type} {' '.join(args.instances)}: {answer.get('message', '')}")
    deadline = time.monotonic() + args.timeout
    last = 0.0
    while True:
        left = sorted(set(args.instances) & set(listed(args.url, args.type)))
        if not left:
            say(
                f"drained: the proxy no longer lists {len(args.instances)} {args.type} entr"
                f"{'y' if len(args.instances) == 1 else 'ies'}"
            )
            return 0
        if time.monotonic() > deadline:
            say(
                f"TIMEOUT after {args.timeout:.0f} s: still listed (in flight: {in_flight(args.url)}): {' '.join(left)}"
            )
            return 1
        if time.monotonic() - last >= PROGRESS_EVERY_S:
            say(
                f"draining: {len(left)} entr{'y' if len(left) == 1 else 'ies'} still listed, "
                f"{in_flight(args.url)} request(s) in flight at the proxy"
            )
            last = time.monotonic()
        time.sleep(0.5)


def add(args) -> int:
    deadline = time.monotonic() + args.timeout
    last_post = last = 0.0
    while True:
        missing = sorted(set(args.instances) - set(listed(args.url, args.type)))
        if not missing:
            say(f"added: the proxy lists every {args.type} entry ({len(args.instances)})")
            return 0
        if time.monotonic() > deadline:
            say(f"TIMEOUT after {args.timeout:.0f} s: not listed: {' '.join(missing)}")
            return 1
        # The proxy checks a waiting instance a few times, then drops it: ask again.
        if time.monotonic() - last_post >= 15:
            answer = call(args.url, "/instances/add", {"type": args.type, "instances": missing})
            if "error" in answer:
                raise ValueError(answer["error"])
            last_post = time.monotonic()
        if time.monotonic() - last >= PROGRESS_EVERY_S:
            say(
                f"adding: waiting for the proxy to list {len(missing)} {args.type} "
                f"entr{'y' if len(missing) == 1 else 'ies'}"
            )
            last = time.monotonic()
        time.sleep(0.5)


def docker(*argv: str) -> str:
    proc = subprocess.run(["docker", *argv], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def paused(container: str) -> bool:
    return docker("inspect", "-f", "{{.State.Paused}}", container) == "true"


METRIC = re.compile(r"^vllm:num_requests_(running|waiting)(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.M)


def engine_busy(urls: list[str]) -> list[str]:
    """Engines that still run or queue a request (vLLM's num_requests_running/waiting)."""
    busy = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
        except (urllib.error.URLError, OSError) as exc:
            busy.append(f"{url} (no answer: {exc})")
            continue
        found = METRIC.findall(text)
        if not found:  # an engine without the gauge: the proxy's own count is all there is
            say(f"note: {url} has no vllm:num_requests_running; relying on the proxy's count")
            continue
        total = sum(float(v) for _, v in found)
        if total > 0:
            busy.append(f"{url} ({total:.0f} request(s))")
    return busy


def hold(args) -> int:
    deadline = time.monotonic() + args.timeout
    last = 0.0
    while True:
        if time.monotonic() > deadline:
            say(f"TIMEOUT after {args.timeout:.0f} s: requests kept arriving; the proxy was not held")
            return 1
        n = in_flight(args.url)
        if n == 0:
            docker("pause", args.container)
            busy = engine_busy(args.metrics)
            if not busy:
                say(
                    f"held: proxy container {args.container} paused with no request in flight; "
                    "new requests wait for the release"
                )
                return 0
            docker("unpause", args.container)
            say(f"not held yet (an engine still works: {'; '.join(busy)}); trying again")
            time.sleep(0.2)
            continue
        if time.monotonic() - last >= PROGRESS_EVERY_S:
            say(f"waiting for {n} request(s) in flight at the proxy to finish")
            last = time.monotonic()
        time.sleep(0.05)


def release(args) -> int:
    if paused(args.container):
        docker("unpause", args.container)
        say(f"released: proxy container {args.container} serves again")
    else:
        say(f"proxy container {args.container} was not paused")
    return 0


