#!/usr/bin/env python3
"""Switch the lab hub's faults at run time (a client of its ``/_lab`` admin endpoint).

Examples::

    python lab/hub/faults.py --hub http://198.18.0.1:8960 drop            # first shard, once
    python lab/hub/faults.py --hub ... drop --file config.json --times 2
    python lab/hub/faults.py --hub ... corrupt [--file F]
    python lab/hub/faults.py --hub ... error --code 503 [--times N]
    python lab/hub/faults.py --hub ... throttle 5                        # MB/s; 0 = off
    python lab/hub/faults.py --hub ... token SECRET | off               # require a token (401)
    python lab/hub/faults.py --hub ... evil ../../escape | /tmp/x | off  # hostile listing path
    python lab/hub/faults.py --hub ... clear | show | log | reset

``clear`` and ``reset`` also switch the token requirement and the hostile path off.

Stdlib only. Prints the hub's JSON answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request


def call(hub: str, path: str, body: dict | None = None) -> dict:
    """GET (body None) or POST JSON to the hub's admin API; return the decoded answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(hub.rstrip("/") + path, data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def set_faults(hub: str, **faults) -> dict:
    """Python API for tests: ``set_faults(url, drop={"file": None})``."""
    return call(hub, "/_lab/faults", faults)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Switch the lab hub's faults.")
    p.add_argument("--hub", default="http://127.0.0.1:8960", help="hub base URL")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("drop", help="drop the connection mid-file")
    d.add_argument("--file", help="repository path (default: the first shard)")
    d.add_argument("--times", type=int, default=1)
    d.add_argument("--at", type=float, default=0.5, help="fraction of the body sent first")
    c = sub.add_parser("corrupt", help="serve wrong bytes with the advertised sha256")
    c.add_argument("--file", help="repository path (default: the first shard)")
    e = sub.add_parser("error", help="answer API calls with a 5xx")
    e.add_argument("--code", type=int, default=503)
    e.add_argument("--times", type=int, help="only this many answers (default: until cleared)")
    e.add_argument("--retry-after", type=int, default=1, help="Retry-After header (seconds)")
    t = sub.add_parser("throttle", help="limit downloads to N MB/s (0 = off)")
    t.add_argument("mbps", type=float)
    k = sub.add_parser("token", help="require this hub token on every API call ('off': none)")
    k.add_argument("value")
    v = sub.add_parser("evil", help="add a file with this hostile path to the listing ('off')")
    v.add_argument("path")
    for name in ("clear", "show", "log", "reset"):
        sub.add_parser(name)
    args = p.parse_args(argv)

    if args.cmd == "drop":
        out = set_faults(args.hub, drop={"file": args.file, "times": args.times, "at": args.at})
    elif args.cmd == "corrupt":
        out = set_faults(args.hub, corrupt={"file": args.file})
    elif args.cmd == "error":
        out = set_faults(args.hub, error={"code": args.code, "times": args.times,
                                           "retry_after": args.retry_after})
    elif args.cmd == "throttle":
        out = set_faults(args.hub, throttle_mbps=args.mbps)
    elif args.cmd == "token":
        out = set_faults(args.hub, token=None if args.value == "off" else args.value)
    elif args.cmd == "evil":
        out = set_faults(args.hub, evil=None if args.path == "off" else args.path)
    elif args.cmd == "clear":
        out = set_faults(args.hub, clear=True)
    elif args.cmd == "show":
        out = call(args.hub, "/_lab/faults")
    elif args.cmd == "log":
        out = call(args.hub, "/_lab/log")
    else:
        out = call(args.hub, "/_lab/reset", {})
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
