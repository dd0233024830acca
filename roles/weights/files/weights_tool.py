#!/usr/bin/env python3
"""Verify (and, for nodes without the shared cache, fetch) model weights.

  weights_tool.py verify --dir D --endpoint URL --model O/N --revision R [--token-env VAR]
      Lists the repository on the hub (ModelScope API), checks every file's size and
      sha256 in D, deletes any file that does not match (no corrupt file is left where a
      good one is expected) and writes D/.ascend-fleet-complete.json when all match.
      Exit 0: complete; 3: files missing or removed (download again); 2: hub unreachable.
  weights_tool.py check --dir D --model O/N --revision R
      Exit 0 when the completion marker is present and names this model/revision and
      every file it lists has the recorded size (cheap; no hashing).
  weights_tool.py fetch --dir D --source http://HOST:PORT
      Copies a verified tree from a peer serving its weights directory over HTTP
      (the marker lists the files and their sha256), verifying each file.
  weights_tool.py ensure --dir D --endpoint URL --model O/N --revision R --lock F
                        [--retries N] -- DOWNLOAD COMMAND...
      Under an exclusive lock on F: if the marker is valid, does nothing; otherwise runs
      the download command and verifies, retrying (a dropped connection resumes; a
      corrupt file is deleted and fetched again) until complete or out of retries.
  weights_tool.py serve --dir D --bind IP --port P --pidfile F [--max-seconds S]
      Serves D read-only over HTTP for peers (daemonizes; stops after S seconds).
  weights_tool.py stop --pidfile F
Prints one JSON line describing what it did.
"""

import argparse
import fcntl
import functools
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

MARKER = ".ascend-fleet-complete.json"


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_files(endpoint, model, revision, token):
    url = f"{endpoint.rstrip('/')}/api/v1/models/{model}/repo/files?" + urllib.parse.urlencode(
        {"Revision": revision, "Recursive": "True"}
    )
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
        req.add_header("Cookie", f"m_session_id={token}")
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = json.load(resp)
    files = (body.get("Data") or {}).get("Files") or []
    return [f for f in files if f.get("Type") != "tree"]


def write_marker(directory, model, revision, files):
    data = {"model": model, "revision": revision, "files": files}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".marker-")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(directory, MARKER))


def cmd_verify(a):
    token = os.environ.get(a.token_env, "") if a.token_env else ""
    try:
        listing = hub_files(a.endpoint, a.model, a.revision, token)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return 2, {"status": "hub-unreachable", "error": str(exc)}
    if not listing:
        return 2, {"status": "hub-empty", "error": f"no files listed for {a.model}"}
    missing, removed, good = [], [], {}
    for entry in listing:
        rel = entry["Path"]
        path = os.path.join(a.dir, rel)
        if not os.path.isfile(path):
            missing.append(rel)
            continue
        size_ok = entry.get("Size") is None or os.path.getsize(path) == int(entry["Size"])
        digest = sha256(path) if size_ok else None
        if not size_ok or (entry.get("Sha256") and digest != entry["Sha256"]):
            os.remove(path)
            removed.append(rel)
            continue
        good[rel] = {"size": os.path.getsize(path), "sha256": digest}
    if missing or removed:
        return 3, {"status": "incomplete", "missing": missing, "removed_corrupt": removed}
    write_marker(a.dir, a.model, a.revision, good)
    total = sum(f["size"] for f in good.values())
    return 0, {"status": "complete", "files": len(good), "bytes": total}


def read_marker(directory):
    try:
        with open(os.path.join(directory, MARKER), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def cmd_check(a):
    marker = read_marker(a.dir)
    if not marker or marker.get("model") != a.model or marker.get("revision") != a.revision:
        return 1, {"status": "absent"}
    for rel, meta in marker["files"].items():
        path = os.path.join(a.dir, rel)
        if not os.path.isfile(path) or os.path.getsize(path) != meta["size"]:
            return 1, {"status": "changed", "file": rel}
    return 0, {"status": "complete", "files": len(marker["files"])}


def cmd_fetch(a):
    base = a.source.rstrip("/")
    with urllib.request.urlopen(f"{base}/{MARKER}", timeout=60) as resp:
        marker = json.load(resp)
    fetched = 0
    for rel, meta in sorted(marker["files"].items()):
        path = os.path.join(a.dir, rel)
        if os.path.isfile(path) and os.path.getsize(path) == meta["size"] and sha256(path) == meta["sha256"]:
            continue
        os.makedirs(os.path.dirname(path) or a.dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or a.dir, prefix=".part-")
        digest = hashlib.sha256()
        try:
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(f"{base}/{urllib.parse.quote(rel)}", timeout=300) as resp,
            ):
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
            if digest.hexdigest() != meta["sha256"]:
                raise ValueError(f"{rel}: sha256 mismatch from {base}")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            fetched += 1
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    write_marker(a.dir, marker["model"], marker["revision"], marker["files"])
    return 0, {"status": "complete", "fetched": fetched, "files": len(marker["files"])}


def cmd_ensure(a):
    os.makedirs(a.dir, exist_ok=True)
    with open(a.lock, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one downloader per shared cache; others wait here
        if cmd_check(a)[0] == 0:
            return 0, {"status": "complete", "changed": False}
        attempts = []
        for attempt in range(1, a.retries + 1):
            proc = subprocess.run(a.command, capture_output=True, text=True)
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            attempts.append({"attempt": attempt, "download_rc": proc.returncode, "tail": tail})
            rc, info = cmd_verify(a)
            attempts[-1]["verify"] = info
            if rc == 0:
                return 0, {"status": "complete", "changed": True, "attempts": attempts}
            time.sleep(min(30, 2 * attempt))
        return 1, {"status": "failed", "changed": True, "attempts": attempts}


def cmd_serve(a):
    if os.fork():
        time.sleep(0.5)
        return 0, {"status": "serving", "url": f"http://{a.bind}:{a.port}/"}
    os.setsid()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=a.dir)
    server = http.server.ThreadingHTTPServer((a.bind, a.port), handler)
    with open(a.pidfile, "w") as fh:
        fh.write(str(os.getpid()))
    signal.signal(signal.SIGALRM, lambda *_: os._exit(0))
    signal.alarm(a.max_seconds)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    server.serve_forever()
    os._exit(0)


def cmd_stop(a):
    try:
        with open(a.pidfile, encoding="ascii") as fh:
            pid = int(fh.read().strip())
        os.kill(pid, signal.SIGTERM)
        os.remove(a.pidfile)
    except (OSError, ValueError):
        return 0, {"status": "not-running"}
    return 0, {"status": "stopped", "pid": pid}


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("verify", "check", "fetch", "ensure", "serve", "stop"):
        p = sub.add_parser(name)
        if name != "stop":
            p.add_argument("--dir", required=True)
        if name in ("verify", "check", "ensure"):
            p.add_argument("--model", required=True)
            p.add_argument("--revision", default="master")
        if name in ("verify", "ensure"):
            p.add_argument("--endpoint", required=True)
            p.add_argument("--token-env", default="")
        if name == "fetch":
            p.add_argument("--source", required=True)
        if name == "ensure":
            p.add_argument("--lock", required=True)
            p.add_argument("--retries", type=int, default=3)
            p.add_argument("command", nargs=argparse.REMAINDER)
        if name == "serve":
            p.add_argument("--bind", required=True)
            p.add_argument("--port", type=int, required=True)
            p.add_argument("--max-seconds", type=int, default=3600)
        if name in ("serve", "stop"):
            p.add_argument("--pidfile", required=True)
    a = parser.parse_args()
    if a.cmd == "ensure":
        a.command = a.command[1:] if a.command[:1] == ["--"] else a.command
        if not a.command:
            parser.error("ensure needs the download command after --")
    handlers = {
        "verify": cmd_verify,
        "check": cmd_check,
        "fetch": cmd_fetch,
        "ensure": cmd_ensure,
        "serve": cmd_serve,
        "stop": cmd_stop,
    }
    rc, info = handlers[a.cmd](a)
    print(json.dumps(info))
    return rc


if __name__ == "__main__":
    sys.exit(main())
