#!/usr/bin/env python3
"""Model weights on a node: verify, download once under a lock, copy from a peer.

The code of the ascend.fleet modules ``fleet_weights`` and ``fleet_weights_serve`` (the
weights role). Standard library only: it runs on the node's system python3, and also as
a program, for an operator checking a cache by hand (``python3 fleet_weights.py verify
--dir D --endpoint URL --model O/N``) and for the lab tests that play "another download"
of the same cache. Each operation returns (code, result); the modules turn the code into
their result and ``failed``, the program into its exit status.

  verify   Lists the repository on the hub (ModelScope API), checks every file's size and
           sha256 in D, deletes any file that does not match (no corrupt file is left where
           a good one is expected) and writes D/.ascend-fleet-complete.json when all match.
           0: complete; 3: files missing or removed (download again); 2: hub unreachable or
           refusing; 4: the listing is unsafe (a path leaving D) or D holds a symlink.
  check    0 when the completion marker is present and names this model/revision and every
           file it lists has the recorded size (cheap; no hashing).
  fetch    Copies the files the HUB lists from a peer serving its verified weights over
           HTTP, checking each against the hub's size and sha256 (never the peer's claim).
  ensure   Under an exclusive lock on F (waiting at most S seconds while another download
           holds it, a progress line every 30 s; 6 naming the holder when it is still held;
           the holder writes its pid, host, model and start time into F): if the marker is
           valid, does nothing; otherwise checks the hub's listing is safe, runs the download
           command and verifies, retrying (a dropped connection resumes; a corrupt file is
           deleted and fetched again) until complete or out of retries. "@SECRETS_DIR@" in
           the download command is replaced by a private directory
           ($TMPDIR/ascend-fleet-secrets-*, mode 0700) that holds the file "token" (mode
           0600) when a token was given; it is removed afterwards, also on failure. The
           token is never on a command line or printed.
  serve    Serves the files of D's completion marker read-only over HTTP for peers
           (daemonizes, pidfile; stops after S seconds). 2, saying so, when it cannot bind.
  stop     Stops that server.
  lock-status  0 when the weights lock F is free, 1 (naming its holder) while it is held.
Every result is redacted: the token never appears in it.
"""

import argparse
import errno
import fcntl
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

MARKER = ".ascend-fleet-complete.json"
SECRETS_PLACEHOLDER = "@SECRETS_DIR@"
REDACTED = "********"
TOKEN = {"value": ""}  # the hub token of this run (read from stdin), redacted everywhere


class Refused(Exception):
    """Input from an untrusted place (hub listing, peer, local tree) that is refused."""


class HubError(Exception):
    """The hub did not give the listing; ``status`` is the HTTP status or None."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


def redact(value):
    """value with every occurrence of the token replaced (recursively for dicts/lists)."""
    token = TOKEN["value"]
    if isinstance(value, str):
        return value.replace(token, REDACTED) if token else value
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, dict):
        return {redact(k): redact(v) for k, v in value.items()}
    return value


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_path(directory, rel, origin):
    """The path of rel inside directory, refusing anything that could leave it.

    rel comes from an untrusted place (origin: the hub listing, a marker): it must be a
    relative path without '..', '.' or empty parts, and no existing part of it below
    directory may be a symlink (a symlink could point anywhere).
    """
    if not isinstance(rel, str) or not rel or "\0" in rel or "\\" in rel:
        raise Refused(f"{origin}: file name {rel!r} refused (not a plain relative path)")
    if rel.startswith("/"):
        raise Refused(f"{origin}: absolute path {rel!r} refused (files must stay in {directory})")
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise Refused(f"{origin}: path {rel!r} refused ('..', '.' or empty parts would leave "
                      f"or confuse {directory})")
    path = directory
    for part in parts:
        path = os.path.join(path, part)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            break
        if stat.S_ISLNK(mode):
            raise Refused(f"{path} is a symlink: refused (files must be plain files inside "
                          f"{directory}; remove the link)")
    return path


def hub_files(endpoint, model, revision):
    """The hub's file listing (blobs only), every path checked safe to use."""
    url = f"{endpoint.rstrip('/')}/api/v1/models/{model}/repo/files?" + urllib.parse.urlencode(
        {"Revision": revision, "Recursive": "True"}
    )
    req = urllib.request.Request(url)
    token = TOKEN["value"]
    if token:
        req.add_header("Authorization", f"Bearer {token}")
        req.add_header("Cookie", f"m_session_id={token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        hint = ""
        if exc.code in (401, 403):
            hint = (": the hub token is missing or wrong (set weights_token)" if not token
                    else ": the hub refused the token (check weights_token)")
        elif exc.code == 404:
            hint = f": no model {model} at revision {revision} on this hub"
        raise HubError(f"hub {endpoint} answered HTTP {exc.code} {exc.reason} for the file "
                       f"listing of {model}{hint}", exc.code) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise HubError(f"hub {endpoint} unreachable for the file listing of {model}: {exc}") from None
    files = (body.get("Data") or {}).get("Files") if isinstance(body, dict) else None
    if not isinstance(files, list):
        raise HubError(f"hub {endpoint} gave no file listing for {model}")
    blobs = [f for f in files if isinstance(f, dict) and f.get("Type") != "tree"]
    return blobs


def check_listing(directory, listing):
    """Refuse a listing with a path that would leave directory (before anything runs)."""
    for entry in listing:
        safe_path(directory, entry.get("Path"), "hub listing")


def write_marker(directory, model, revision, files):
    data = {"model": model, "revision": revision, "files": files}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".marker-")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(directory, MARKER))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def disk_error(exc, directory):
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"disk full: no space left on the filesystem of {directory}"
    return f"{type(exc).__name__}: {exc}"


def safe_listing(a):
    """The hub's listing for a.model, checked to stay inside a.dir: (listing, None), or
    (None, (exit code, result)) when the hub fails (2) or the listing is unsafe (4)."""
    try:
        listing = hub_files(a.endpoint, a.model, a.revision)
        check_listing(a.dir, listing)
    except HubError as exc:
        return None, (2, {"status": "hub-error", "http_status": exc.status, "error": str(exc)})
    except Refused as exc:
        return None, (4, {"status": "refused", "error": str(exc)})
    return listing, None


def verify(a, dry=False):
    """dry (check mode): says what it would delete or write, changes nothing."""
    listing, failure = safe_listing(a)
    if failure:
        return failure
    if not listing:
        return 2, {"status": "hub-empty", "error": f"no files listed for {a.model}"}
    missing, removed, good = [], [], {}
    try:
        for entry in listing:
            rel = entry["Path"]
            path = safe_path(a.dir, rel, "hub listing")
            if not os.path.isfile(path):
                missing.append(rel)
                continue
            size_ok = entry.get("Size") is None or os.path.getsize(path) == int(entry["Size"])
            digest = sha256(path) if size_ok else None
            if not size_ok or (entry.get("Sha256") and digest != entry["Sha256"]):
                if not dry:
                    os.remove(path)
                removed.append(rel)
                continue
            good[rel] = {"size": os.path.getsize(path), "sha256": digest}
    except Refused as exc:
        return 4, {"status": "refused", "error": str(exc)}
    if missing or removed:
        info = {"status": "incomplete", "missing": missing, "removed_corrupt": removed}
        parts = []
        if removed:
            parts.append(f"sha256 or size mismatch, deleted: {', '.join(removed[:5])}")
        if missing:
            parts.append(f"{len(missing)} file(s) missing (first: {missing[0]})")
        info["error"] = "; ".join(parts)
        return 3, info
    if dry:
        return 0, {"status": "complete", "files": len(good), "bytes": sum(f["size"] for f in good.values()),
                   "marker_written": read_marker(a.dir) != {"model": a.model, "revision": a.revision,
                                                             "files": good}}
    before = read_marker(a.dir)
    try:
        write_marker(a.dir, a.model, a.revision, good)
    except OSError as exc:
        return 5, {"status": "write-failed", "error": disk_error(exc, a.dir)}
    total = sum(f["size"] for f in good.values())
    return 0, {"status": "complete", "files": len(good), "bytes": total,
               "marker_written": before != read_marker(a.dir)}


def cmd_verify(a):
    return verify(a, dry=getattr(a, "dry", False))


def read_marker(directory):
    try:
        with open(os.path.join(directory, MARKER), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def cmd_check(a):
    marker = read_marker(a.dir)
    if (not isinstance(marker, dict) or marker.get("model") != a.model
            or marker.get("revision") != a.revision or not isinstance(marker.get("files"), dict)):
        return 1, {"status": "absent"}
    for rel, meta in marker["files"].items():
        try:
            path = safe_path(a.dir, rel, f"marker {MARKER}")
        except Refused as exc:
            return 1, {"status": "refused", "error": str(exc)}
        if (not os.path.isfile(path) or not isinstance(meta, dict)
                or os.path.getsize(path) != meta.get("size")):
            return 1, {"status": "changed", "file": rel}
    return 0, {"status": "complete", "files": len(marker["files"])}


def cmd_fetch(a):
    base = a.source.rstrip("/")
    os.makedirs(a.dir, exist_ok=True)
    listing, failure = safe_listing(a)
    if failure:
        return failure
    fetched = 0
    files = {}
    for entry in sorted(listing, key=lambda e: e["Path"]):
        rel = entry["Path"]
        want_size = entry.get("Size")
        want_sha = entry.get("Sha256")
        try:
            path = safe_path(a.dir, rel, "hub listing")
        except Refused as exc:
            return 4, {"status": "refused", "error": str(exc)}
        if (os.path.isfile(path) and (want_size is None or os.path.getsize(path) == int(want_size))
                and (not want_sha or sha256(path) == want_sha)):
            files[rel] = {"size": os.path.getsize(path), "sha256": sha256(path)}
            continue
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, exist_ok=True)
            safe_path(a.dir, rel, "hub listing")  # a directory just made is no symlink
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=".part-")
        except Refused as exc:
            return 4, {"status": "refused", "error": str(exc)}
        except OSError as exc:
            return 5, {"status": "write-failed", "file": rel, "error": disk_error(exc, a.dir)}
        digest = hashlib.sha256()
        size = 0
        try:
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(f"{base}/{urllib.parse.quote(rel)}", timeout=300) as resp,
            ):
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
                    size += len(block)
            if (want_size is not None and size != int(want_size)) or (want_sha and digest.hexdigest() != want_sha):
                return 3, {"status": "mismatch", "file": rel,
                           "error": f"{rel}: sha256 mismatch from {base} against the hub's listing "
                                    f"(got {size} bytes, sha256 {digest.hexdigest()}; the hub lists "
                                    f"{want_size} bytes, sha256 {want_sha}): not kept"}
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            fetched += 1
            files[rel] = {"size": size, "sha256": digest.hexdigest()}
        except urllib.error.HTTPError as exc:
            return 2, {"status": "peer-error", "file": rel,
                       "error": f"peer {base} answered HTTP {exc.code} for {rel}"}
        except (urllib.error.URLError, ConnectionError) as exc:
            return 2, {"status": "peer-error", "file": rel, "error": f"peer {base} unreachable: {exc}"}
        except OSError as exc:
            return 5, {"status": "write-failed", "file": rel, "error": disk_error(exc, a.dir)}
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    try:
        write_marker(a.dir, a.model, a.revision, files)
    except OSError as exc:
        return 5, {"status": "write-failed", "error": disk_error(exc, a.dir)}
    return 0, {"status": "complete", "fetched": fetched, "files": len(files)}


def private_secrets():
    """A 0700 directory on the node's local temporary filesystem (not the possibly shared
    cache) holding the token file (0600)."""
    secrets = tempfile.mkdtemp(prefix="ascend-fleet-secrets-")
    os.chmod(secrets, 0o700)
    if TOKEN["value"]:  # no token: an empty directory (the command tests for the file)
        fd = os.open(os.path.join(secrets, "token"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(TOKEN["value"])
    return secrets


def summarize(attempt):
    """One line saying what failed in an attempt (disk full, HTTP status, checksum...)."""
    tail = "\n".join(attempt.get("tail", []))
    verified = attempt.get("verify", {})
    if "No space left on device" in tail or "disk full" in verified.get("error", ""):
        return "disk full: no space left on device for the download"
    if attempt.get("download_rc") not in (0, None):
        last = attempt["tail"][-1] if attempt.get("tail") else "no output"
        what = f"download command exited with {attempt['download_rc']}: {last}"
        if verified.get("error"):
            what += f"; then {verified['error']}"
        return what
    return verified.get("error", verified.get("status", "?"))


def lock_holder(lock_path):
    """What the holder of the weights lock wrote into it (pid, host, since, model), or {}."""
    try:
        with open(lock_path, encoding="utf-8") as fh:
            holder = json.loads(fh.read() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def describe_holder(lock_path):
    h = lock_holder(lock_path)
    if not h:
        return f"weights lock {lock_path} is held by another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(h.get("since", 0)))
    return (f"weights lock {lock_path} is held by pid {h.get('pid', '?')} on {h.get('host', '?')} "
            f"(download of {h.get('model', '?')}) since {since}")


def to_stderr(line):
    print(line, file=sys.stderr, flush=True)


def take_lock(lock, lock_path, wait_s, say=to_stderr, every_s=30):
    """The exclusive lock on the open file, waiting at most wait_s seconds with a progress
    line (say) every every_s seconds. Returns None once held, else what holds it."""
    start = time.monotonic()
    said = 0.0
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            waited = time.monotonic() - start
            if waited >= wait_s:
                return describe_holder(lock_path)
            if waited - said >= every_s or said == 0.0:
                said = waited or 1e-9
                say(f"waiting: {describe_holder(lock_path)}: {int(waited)} s of at most "
                    f"{wait_s} s (weights_lock_wait_s)")
            time.sleep(min(1.0, max(0.05, wait_s - waited)))
    return None


def cmd_lock_status(a):
    """Exit 0 when the weights lock is free, 1 (naming the holder) while another process holds it."""
    if not os.path.exists(a.lock):
        return 0, {"status": "free"}
    with open(a.lock, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 1, {"status": "held", "holder": lock_holder(a.lock), "error": describe_holder(a.lock)}
    return 0, {"status": "free"}


def cmd_ensure(a):
    os.makedirs(a.dir, exist_ok=True)
    with open(a.lock, "a+") as lock:
        # One downloader per shared cache; the others wait here, a bounded time, saying so.
        held_by = take_lock(lock, a.lock, a.lock_wait, getattr(a, "say", to_stderr))
        if held_by:
            return 6, {"status": "lock-timeout", "changed": False,
                       "error": f"{held_by}; still held after {a.lock_wait} s (weights_lock_wait_s)"}
        lock.seek(0)
        lock.truncate()
        lock.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": int(time.time()),
                               "model": a.model}))
        lock.flush()
        if cmd_check(a)[0] == 0:
            return 0, {"status": "complete", "changed": False}
        # The hub's listing first: a bad token, a missing model or an unsafe path is said
        # before the client runs (the client would write wherever the listing points).
        try:
            check_listing(a.dir, hub_files(a.endpoint, a.model, a.revision))
        except HubError as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                return 2, {"status": "failed", "changed": False, "http_status": exc.status,
                           "error": str(exc)}
        except Refused as exc:
            return 4, {"status": "refused", "changed": False, "error": str(exc)}
        secrets = private_secrets()
        command = [arg.replace(SECRETS_PLACEHOLDER, secrets) for arg in a.command]
        attempts = []
        try:
            for attempt in range(1, a.retries + 1):
                try:
                    proc = subprocess.run(command, capture_output=True, text=True, errors="replace")
                    tail = (proc.stdout + proc.stderr).strip().splitlines()[-8:]
                    rc_download = proc.returncode
                except OSError as exc:
                    tail, rc_download = [f"cannot run {command[0]}: {exc}"], 127
                attempts.append({"attempt": attempt, "download_rc": rc_download, "tail": tail})
                rc, info = verify(a)
                attempts[-1]["verify"] = info
                if rc == 0:
                    return 0, {"status": "complete", "changed": True, "attempts": attempts}
                attempts[-1]["error"] = summarize(attempts[-1])
                if rc == 4 or (rc == 2 and 400 <= (info.get("http_status") or 0) < 500):
                    break  # refused, or the hub says no: retrying cannot help
                if attempt < a.retries:
                    time.sleep(min(30, 2 * attempt))
        finally:
            shutil.rmtree(secrets, ignore_errors=True)
        return 1, {"status": "failed", "changed": True, "error": attempts[-1]["error"],
                   "attempts": attempts}


class MarkerFilesHandler(http.server.BaseHTTPRequestHandler):
    """Serves only the files the completion marker lists, never a symlink."""

    directory = ""
    allowed = frozenset()

    def log_message(self, *_args):
        pass

    def do_GET(self):
        rel = urllib.parse.unquote(urllib.parse.urlparse(self.path).path).lstrip("/")
        if rel not in self.allowed:
            self.send_error(404, "not a verified file")
            return
        try:
            path = safe_path(self.directory, rel, "request")
            fh = open(path, "rb")  # noqa: SIM115 (closed by the with block below)
        except (Refused, OSError):
            self.send_error(404, "not a verified file")
            return
        with fh:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(os.fstat(fh.fileno()).st_size))
            self.end_headers()
            shutil.copyfileobj(fh, self.wfile, 1 << 20)


def cmd_serve(a):
    marker = read_marker(a.dir)
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), dict):
        return 1, {"status": "no-marker", "error": f"{a.dir}: no completion marker, nothing verified to serve"}
    handler = type("Bound", (MarkerFilesHandler,), {"directory": a.dir,
                                                    "allowed": frozenset(marker["files"])})
    try:
        server = http.server.ThreadingHTTPServer((a.bind, a.port), handler)
    except OSError as exc:
        return 2, {"status": "bind-failed",
                   "error": f"cannot serve the weights on {a.bind}:{a.port}: {exc.strerror or exc} "
                            f"(another process holds the port? set weights_peer_port)"}
    if os.fork():
        server.socket.close()
        return 0, {"status": "serving", "url": f"http://{a.bind}:{a.port}/"}
    os.setsid()
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


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)  # runs the finally blocks (the token file is removed)


def clean_up_on_signals():
    """An interrupted play (SIGTERM, SIGHUP, SIGINT) still removes the token file."""
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, _terminate)


HANDLERS = {
    "verify": cmd_verify,
    "check": cmd_check,
    "fetch": cmd_fetch,
    "ensure": cmd_ensure,
    "serve": cmd_serve,
    "stop": cmd_stop,
    "lock-status": cmd_lock_status,
}


def run(cmd, a, token=""):
    """(code, result) of one operation, the result redacted (token), never a traceback."""
    TOKEN["value"] = token or ""
    try:
        rc, info = HANDLERS[cmd](a)
    except Exception as exc:  # reported as a result, token redacted, no traceback
        rc, info = 70, {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    return rc, redact(info)


def main():
    parser = argparse.ArgumentParser(prog="fleet_weights.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in HANDLERS:
        p = sub.add_parser(name)
        if name not in ("stop", "lock-status"):
            p.add_argument("--dir", required=True)
        if name in ("verify", "check", "ensure", "fetch"):
            p.add_argument("--model", required=True)
            p.add_argument("--revision", default="master")
        if name in ("verify", "ensure", "fetch"):
            p.add_argument("--endpoint", required=True)
            p.add_argument("--token-stdin", action="store_true",
                           help="read the hub token from stdin (never from the command line)")
        if name == "fetch":
            p.add_argument("--source", required=True)
        if name in ("ensure", "lock-status"):
            p.add_argument("--lock", required=True)
        if name == "ensure":
            p.add_argument("--lock-wait", type=int, default=7200,
                           help="seconds to wait for the lock held by another download")
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
    token = sys.stdin.read().strip("\r\n") if getattr(a, "token_stdin", False) else ""
    clean_up_on_signals()
    rc, info = run(a.cmd, a, token)
    print(json.dumps(info))
    return rc


if __name__ == "__main__":
    sys.exit(main())
