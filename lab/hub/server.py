#!/usr/bin/env python3
"""A local model hub speaking the subset of the ModelScope API that ``modelscope download`` uses.

The real client (both >= 1.38, which downloads through ``modelscope-hub``, and <= 1.37) is
pointed at this server (``MODELSCOPE_ENDPOINT=http://H:P`` or ``--endpoint http://H:P``) and
downloads a generated stand-in of ``Eco-Tech/DeepSeek-V4-Flash-w8a8-mtp`` (see repo.py).

API served (paths as the clients call them):

- ``GET /api/v1/models/O/N/repo/files?Revision=..&Recursive=..``  file listing with Size/Sha256
- ``GET|HEAD /api/v1/models/O/N/repo?Revision=..&FilePath=..``     one file, ``Range`` -> 206
- ``GET /api/v1/models/O/N/revisions``                            branches/tags (<= 1.37)
- ``GET /api/v1/models/O/N``                                      model info
- ``GET /api/v1/repos/internalAccelerationInfo``                  404 (no region acceleration)

Lab administration (not part of ModelScope):

- ``GET /_lab/faults`` / ``POST /_lab/faults`` (JSON, see Faults.update) / ``POST /_lab/reset``
- ``GET /_lab/log``: every API request seen (path, file, Range header, status, bytes sent)
- ``GET /_lab/health``

Fault switches (start flags or the admin endpoint; faults.py is a small client):

- drop:     close the connection half-way through a file, a given number of times (default once)
- corrupt:  serve wrong bytes for a file while the listing keeps the true sha256
- error:    answer every API request with an HTTP 5xx (optionally only N times)
- throttle: limit file downloads to N MB/s
- token:    require this access token (``Authorization: Bearer T`` or the ``m_session_id``
            cookie, as the real clients send it) on every API call; 401 otherwise
- evil:     add a file with this (hostile) path to the listing, e.g. ``../../etc/evil`` or
            ``/tmp/evil``, served like any other file (a client must refuse it)

Stdlib only (``http.server.ThreadingHTTPServer``) so it runs on any Python 3.9+.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
import repo

DEFAULT_MODEL = "Eco-Tech/DeepSeek-V4-Flash-w8a8-mtp"
REVISION = "master"
CHUNK = 64 * 1024
# What the "evil" listing entry holds: a client that writes it left its directory.
EVIL_BODY = b"lab hub: written outside the model directory\n"


class Faults:
    """The fault switches, shared by all request threads (guarded by a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        # drop:    {"file": path|None, "times": int, "at": fraction of the body to send}
        # corrupt: {"file": path|None}
        # error:   {"code": int, "times": int|None (None = until cleared)}
        self.drop: dict | None = None
        self.corrupt: dict | None = None
        self.error: dict | None = None
        self.throttle_mbps: float | None = None
        self.token: str | None = None
        self.evil: str | None = None

    def update(self, body: dict) -> None:
        """Apply an admin request, e.g. ``{"drop": {"file": null}}``, ``{"clear": true}``.

        A key with value null switches that fault off; ``clear`` switches all off first.
        """
        with self.lock:
            if body.get("clear"):
                self.clear()
            if "drop" in body:
                d = body["drop"]
                self.drop = None if d is None else {
                    "file": d.get("file"), "times": int(d.get("times", 1)),
                    "at": float(d.get("at", 0.5))}
            if "corrupt" in body:
                c = body["corrupt"]
                self.corrupt = None if c is None else {"file": c.get("file")}
            if "error" in body:
                e = body["error"]
                self.error = None if e is None else {
                    "code": int(e.get("code", 503)), "times": e.get("times"),
                    "retry_after": int(e.get("retry_after", 1))}
            if "throttle_mbps" in body:
                t = body["throttle_mbps"]
                self.throttle_mbps = None if t in (None, 0) else float(t)
            if "token" in body:
                self.token = None if body["token"] in (None, "", "off") else str(body["token"])
            if "evil" in body:
                self.evil = None if body["evil"] in (None, "", "off") else str(body["evil"])

    def snapshot(self) -> dict:
        with self.lock:
            return {"drop": self.drop, "corrupt": self.corrupt, "error": self.error,
                    "throttle_mbps": self.throttle_mbps,
                    # Whether a token is required, never the token itself.
                    "token_required": self.token is not None, "evil": self.evil}

    def token_ok(self, headers) -> bool:
        """True when no token is required, or the request carries it (header or cookie)."""
        with self.lock:
            want = self.token
        if want is None:
            return True
        offered = []
        auth = headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            offered.append(auth[len("Bearer "):].strip())
        for part in (headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name in ("m_session_id", "modelscope_session"):
                offered.append(value)
        return any(hmac.compare_digest(o.encode(), want.encode()) for o in offered)

    def take_error(self) -> tuple[int, int] | None:
        """(status, Retry-After seconds) to answer with; consumes one use of a counted fault."""
        with self.lock:
            if not self.error:
                return None
            code = (self.error["code"], self.error["retry_after"])
            if self.error["times"] is not None:
                self.error["times"] = int(self.error["times"]) - 1
                if self.error["times"] <= 0:
                    self.error = None
            return code

    def take_drop(self, path: str, default_file: str) -> float | None:
        """The fraction of the body after which to drop this download, or None."""
        with self.lock:
            if not self.drop or (self.drop["file"] or default_file) != path:
                return None
            self.drop["times"] -= 1
            at = self.drop["at"]
            if self.drop["times"] <= 0:
                self.drop = None
            return at

    def corrupts(self, path: str, default_file: str) -> bool:
        with self.lock:
            return bool(self.corrupt) and (self.corrupt["file"] or default_file) == path


class Hub:
    """What the handler needs: the generated repo, its listing, the faults and a request log."""

    def __init__(self, model_id: str, manifest: dict) -> None:
        self.model_id = model_id
        self.files_dir = Path(manifest["dir"])
        self.files = {f["path"]: f for f in manifest["files"]}
        # "The first big file": the first shard, the default target of drop/corrupt.
        self.big_file = next(p for p in self.files if p.endswith(".safetensors"))
        # A fake but stable commit id for the listing.
        self.commit = uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(manifest["files"])).hex
        self.faults = Faults()
        self.log: list[dict] = []
        self.log_lock = threading.Lock()

    def record(self, entry: dict) -> None:
        with self.log_lock:
            self.log.append(entry)


def envelope(data, code: int = 200, message: str = "", success: bool = True) -> dict:
    """ModelScope's JSON answer envelope."""
    return {"Code": code, "Success": success, "Message": message,
            "RequestId": uuid.uuid4().hex, "Data": data}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients use a requests.Session
    server_version = "ascend-fleet-lab-hub/1"
    hub: Hub  # set on the subclass made in make_server

    # -- plumbing ----------------------------------------------------------------------
    def log_message(self, fmt: str, *args) -> None:  # one line per request on stderr
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def _read_body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw or b"{}")

    # -- dispatch ----------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        url = urlparse(self.path)
        if url.path == "/_lab/faults":
            try:
                self.hub.faults.update(self._read_body())
            except (ValueError, TypeError, AttributeError) as exc:
                self._json(400, {"error": str(exc)})
                return
            self._json(200, self.hub.faults.snapshot())
        elif url.path == "/_lab/reset":
            self._read_body()
            self.hub.faults.update({"clear": True})
            with self.hub.log_lock:
                self.hub.log.clear()
            self._json(200, {"ok": True})
        else:
            self._json(404, envelope(None, 404, "not found", False))

    def _dispatch(self) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        hub = self.hub
        if path.startswith("/_lab/"):
            self._admin(path)
            return
        entry = {"time": time.time(), "method": self.command, "path": path,
                 "file": query.get("FilePath"), "range": self.headers.get("Range"),
                 "status": None, "sent": 0}
        hub.record(entry)
        if not hub.faults.token_ok(self.headers):
            entry["status"] = 401
            self._json(401, envelope(None, 401, "Unauthorized: a valid access token is required",
                                     False))
            return
        error = hub.faults.take_error()
        if error is not None:
            # Retry-After keeps the clients' retry loops short (urllib3 honours it on 503).
            code, retry_after = error
            entry["status"] = code
            self._json(code, envelope(None, code, "lab hub: injected server error", False),
                       {"Retry-After": str(retry_after)})
            return
        prefix = f"/api/v1/models/{hub.model_id}"
        if path == "/api/v1/repos/internalAccelerationInfo":
            entry["status"] = 404
            self._json(404, envelope(None, 404, "not found", False))
        elif path == f"{prefix}/repo/files":
            entry["status"] = 200
            self._json(200, envelope({"Files": self._listing()}))
        elif path == f"{prefix}/repo":
            self._file(query.get("FilePath", ""), entry)
        elif path == f"{prefix}/revisions":
            entry["status"] = 200
            branch = {"Revision": REVISION, "CommitId": hub.commit, "CreatedAt": 1767225600}
            self._json(200, envelope({"RevisionMap": {"Branches": [branch], "Tags": []}}))
        elif path == prefix:
            entry["status"] = 200
            self._json(200, envelope(self._model_info()))
        else:
            entry["status"] = 404
            self._json(404, envelope(None, 404, f"lab hub: no such API {path}", False))

    def _admin(self, path: str) -> None:
        if path == "/_lab/faults":
            self._json(200, self.hub.faults.snapshot())
        elif path == "/_lab/log":
            with self.hub.log_lock:
                self._json(200, {"requests": list(self.hub.log)})
        elif path == "/_lab/health":
            self._json(200, {"ok": True, "model": self.hub.model_id,
                             "files": len(self.hub.files)})
        else:
            self._json(404, {"error": "not found"})

    # -- ModelScope answers ------------------------------------------------------------
    def _listing(self) -> list[dict]:
        out = []
        evil = self.hub.faults.snapshot()["evil"]
        if evil:
            out.append({"Name": Path(evil).name, "Path": evil, "Type": "blob",
                        "Size": len(EVIL_BODY), "Sha256": hashlib.sha256(EVIL_BODY).hexdigest(),
                        "IsLFS": False, "Revision": self.hub.commit,
                        "CommitId": self.hub.commit, "Mode": "100644"})
        for path, meta in self.hub.files.items():
            out.append({
                "Name": Path(path).name, "Path": path, "Type": "blob",
                "Size": meta["size"], "Sha256": meta["sha256"],
                "IsLFS": path.endswith(".safetensors"), "Revision": self.hub.commit,
                "CommitId": self.hub.commit, "Mode": "100644",
            })
        return out

    def _model_info(self) -> dict:
        owner, name = self.hub.model_id.split("/", 1)
        return {"Id": 1, "Name": name, "Path": owner, "ChineseName": name,
                "Revision": REVISION, "LatestCommitId": self.hub.commit,
                "ModelType": ["deepseek_v4"], "Tasks": [{"Name": "text-generation"}]}

    def _file(self, path: str, entry: dict) -> None:
        hub = self.hub
        meta = hub.files.get(path)
        if meta is None and path and path == hub.faults.snapshot()["evil"]:
            entry["status"] = 200
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(EVIL_BODY)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(EVIL_BODY)
            return
        if meta is None:
            entry["status"] = 404
            self._json(404, envelope(None, 404, f"file {path!r} not found", False))
            return
        size = meta["size"]
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not match or (not match.group(1) and not match.group(2)):
                entry["status"] = 416
                self._range_error(size)
                return
            if match.group(1):
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else size - 1
            else:  # suffix range "bytes=-N": the last N bytes
                start = max(0, size - int(match.group(2)))
            end = min(end, size - 1)
            if start >= size or start > end:
                entry["status"] = 416
                self._range_error(size)
                return
            status = 206
        length = end - start + 1
        entry["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Disposition", f'attachment; filename="{Path(path).name}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        drop_at = hub.faults.take_drop(path, hub.big_file)
        corrupt = hub.faults.corrupts(path, hub.big_file)
        limit = length if drop_at is None else int(length * drop_at)
        rate = hub.faults.snapshot()["throttle_mbps"]
        began = time.monotonic()
        sent = 0
        with (hub.files_dir / path).open("rb") as fh:
            fh.seek(start)
            while sent < limit:
                chunk = fh.read(min(CHUNK, limit - sent))
                if not chunk:
                    break
                if corrupt:
                    # Same length, different bytes: only the sha256 check can tell.
                    chunk = bytes(b ^ 0x5A for b in chunk)
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    entry["sent"] = sent
                    self.close_connection = True
                    return
                sent += len(chunk)
                entry["sent"] = sent
                if rate:
                    # Sleep until the average rate is back under the limit.
                    ahead = sent / (rate * repo.MIB) - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
        if drop_at is not None:
            # Close the socket mid-body: the client sees a short read and must resume.
            entry["dropped"] = True
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)

    def _range_error(self, size: int) -> None:
        self.send_response(416)
        self.send_header("Content-Range", f"bytes */{size}")
        self.send_header("Content-Length", "0")
        self.end_headers()


def make_server(host: str, port: int, hub: Hub) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"hub": hub})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8960, help="port to bind (0 = any free port)")
    p.add_argument("--root", required=True, help="cache directory for the generated repo")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model id (default {DEFAULT_MODEL})")
    p.add_argument("--size-mb", type=float, default=64, help="total shard size in MB")
    p.add_argument("--shards", type=int, default=4, help="number of safetensors shards")
    p.add_argument("--drop", nargs="?", const="", metavar="FILE",
                   help="drop the connection half-way through FILE once "
                        "(no FILE: the first shard)")
    p.add_argument("--corrupt", nargs="?", const="", metavar="FILE",
                   help="serve wrong bytes for FILE (no FILE: the first shard)")
    p.add_argument("--error", type=int, metavar="CODE", help="answer every API call with CODE")
    p.add_argument("--throttle-mbps", type=float, metavar="N", help="limit downloads to N MB/s")
    p.add_argument("--port-file", help="write the bound port to this file once listening")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    manifest = repo.generate(Path(args.root), args.model, args.size_mb, args.shards)
    hub = Hub(args.model, manifest)
    faults: dict = {}
    if args.drop is not None:
        faults["drop"] = {"file": args.drop or None}
    if args.corrupt is not None:
        faults["corrupt"] = {"file": args.corrupt or None}
    if args.error:
        faults["error"] = {"code": args.error}
    if args.throttle_mbps:
        faults["throttle_mbps"] = args.throttle_mbps
    hub.faults.update(faults)
    server = make_server(args.host, args.port, hub)
    port = server.server_address[1]
    total = sum(f["size"] for f in manifest["files"])
    if args.port_file:  # written before the banner: whoever sees the banner finds the port
        partial = Path(f"{args.port_file}.tmp")
        partial.write_text(f"{port}\n")
        partial.rename(args.port_file)
    print(f"lab hub: {args.model} ({len(hub.files)} files, {total / repo.MIB:.1f} MiB, "
          f"ready in {time.monotonic() - began:.1f}s) on http://{args.host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
