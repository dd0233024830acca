"""The weights modules the weights role runs on the nodes (ascend.fleet.fleet_weights and
fleet_weights_serve, their code in plugins/module_utils/fleet_weights.py).

Each module is run as Ansible runs it on a node (its file, with the arguments file of the
task), against the lab hub on loopback with the real modelscope client (1.40) as the
download command, as the role does on a node.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.lab.test_hub import MODEL, RunningHub, modelscope_cli

MODULES = REPO / "plugins" / "modules"


def module_cmd(name: str, args: dict, workdir: Path, check_mode: bool = False) -> list[str]:
    """The command running module name with args, as Ansible does (an arguments file; the
    token is in it, never on a command line)."""
    workdir.mkdir(parents=True, exist_ok=True)
    fd, path = __import__("tempfile").mkstemp(dir=workdir, prefix="args-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump({"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check_mode}}, fh)
    return [sys.executable, str(MODULES / f"{name}.py"), path]


def module(name: str, args: dict, workdir: Path, env: dict | None = None, check_mode: bool = False) -> dict:
    """The module's result (failed: true when it failed); no traceback, ever."""
    proc = subprocess.run(module_cmd(name, args, workdir, check_mode), capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})}, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == (1 if result.get("failed") else 0), (proc.returncode, result)
    return result


def weights(state: str, target, env: dict | None = None, check_mode: bool = False, **args) -> dict:
    return module("fleet_weights", {"state": state, "path": str(target), "model": MODEL, **args},
                  Path(target).parent / ".args", env=env, check_mode=check_mode)


def complete(target) -> bool:
    """The cheap check (marker and sizes) the role runs first."""
    result = weights("checked", target)
    assert result["changed"] is False and not result.get("failed")
    return result["complete"]


def verify(hub: RunningHub, target, **kw) -> dict:
    return weights("verified", target, endpoint=hub.url, **kw)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    running = RunningHub(tmp_path_factory.mktemp("hub"), size_mb=8)
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _reset(hub):
    hub.reset()


# The role's download command reads the token from the private directory the tool makes
# (@SECRETS_DIR@, here passed as $0): never from its own command line.
WITH_TOKEN = (
    'if [ -f "$0/token" ]; then MODELSCOPE_API_TOKEN="$(cat "$0/token")"; '
    'export MODELSCOPE_API_TOKEN; fi; exec "$@"'
)


def ensure(hub: RunningHub, target, retries: int = 3, token: str | None = None, command=None,
           env: dict | None = None, check_mode: bool = False) -> dict:
    cli = modelscope_cli("1.40.2")
    download = command or [str(cli), "download", MODEL, "--local-dir", str(target)]
    return weights(
        "present", target, endpoint=hub.url, lock=str(target.parent / ".lock"), retries=retries,
        token=token or "", download_command=["sh", "-c", WITH_TOKEN, "@SECRETS_DIR@", *download],
        env={
            "MODELSCOPE_ENDPOINT": hub.url,
            "MODELSCOPE_CACHE": str(target.parent / "ms-cache"),
            "HOME": str(target.parent / "home"),
            **(env or {}),
        },
        check_mode=check_mode,
    )


def shards(target):
    return sorted(p for p in target.iterdir() if p.name.endswith(".safetensors"))


def test_ensure_downloads_verifies_and_is_then_a_no_op(hub, tmp_path):
    target = tmp_path / "model"
    assert not complete(target)
    # check mode: says it would download, downloads nothing
    info = ensure(hub, target, check_mode=True)
    assert info["changed"] is True and info["status"] == "would-download" and not target.exists()
    assert hub.downloads() == []
    info = ensure(hub, target)
    assert not info.get("failed") and info["status"] == "complete" and info["changed"] is True
    marker = json.loads((target / ".ascend-fleet-complete.json").read_text())
    assert {rel: (m["size"], m["sha256"]) for rel, m in marker["files"].items()} == {
        f["path"]: (f["size"], f["sha256"]) for f in hub.manifest["files"]
    }
    for rel, meta in marker["files"].items():
        assert (target / rel).stat().st_size == meta["size"]
    hub.reset()
    info = ensure(hub, target)
    assert not info.get("failed") and info["changed"] is False
    assert hub.downloads() == []  # nothing fetched again
    assert complete(target)
    assert ensure(hub, target, check_mode=True)["changed"] is False


def test_verify_deletes_a_corrupt_file_and_ensure_fetches_it_again(hub, tmp_path):
    target = tmp_path / "model"
    assert not ensure(hub, target).get("failed")
    victim = shards(target)[0]
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert complete(target)  # size unchanged: check is cheap
    # check mode names the corrupt file and keeps it
    info = verify(hub, target, check_mode=True)
    assert info["status"] == "incomplete" and info["removed_corrupt"] == [victim.name] and victim.exists()
    info = verify(hub, target)
    assert info["failed"] and info["status"] == "incomplete" and info["removed_corrupt"] == [victim.name]
    assert victim.name in info["msg"] and "deleted" in info["msg"]
    assert not victim.exists()  # no corrupt file left where a good one is expected
    assert not complete(target)
    info = ensure(hub, target)
    assert not info.get("failed") and info["changed"] is True and victim.exists()
    info = verify(hub, target)
    assert not info.get("failed") and info["complete"] and info["changed"] is False


def test_corrupt_hub_fails_without_leaving_the_bad_file(hub, tmp_path):
    target = tmp_path / "model"
    urllib.request.urlopen(
        urllib.request.Request(
            hub.url + "/_lab/faults",
            data=json.dumps({"corrupt": {"file": None}}).encode(),
            headers={"Content-Type": "application/json"},
        ),
        timeout=10,
    ).read()
    info = ensure(hub, target, retries=2)
    assert info["failed"] and info["status"] == "failed" and len(info["attempts"]) == 2
    first = sorted(f["path"] for f in hub.manifest["files"] if f["path"].endswith(".safetensors"))[0]
    assert not (target / first).exists()
    assert not (target / ".ascend-fleet-complete.json").exists()


def serve(source, port: int, pidfile, max_seconds: int = 120) -> dict:
    return module("fleet_weights_serve", {"path": str(source), "bind": "127.0.0.1", "port": port,
                                          "pidfile": str(pidfile), "max_seconds": max_seconds},
                  Path(pidfile).parent / ".args")


def stop(pidfile) -> dict:
    return module("fleet_weights_serve", {"state": "stopped", "pidfile": str(pidfile)}, Path(pidfile).parent / ".args")


def test_peer_copy_verifies_every_file(hub, tmp_path):
    source = tmp_path / "source" / "model"
    assert not ensure(hub, source).get("failed")
    pidfile = tmp_path / "serve.pid"
    port = free_port()
    info = serve(source, port, pidfile)
    assert not info.get("failed") and info["status"] == "serving", info
    try:
        peer = tmp_path / "peer" / "model"
        info = fetch(hub, peer, f"http://127.0.0.1:{port}", check_mode=True)
        assert info["changed"] is True and info["status"] == "would-copy" and not peer.exists()
        info = fetch(hub, peer, f"http://127.0.0.1:{port}")
        assert not info.get("failed") and info["fetched"] == info["files"] > 0 and info["changed"] is True
        assert complete(peer)
        info = fetch(hub, peer, f"http://127.0.0.1:{port}")
        assert not info.get("failed") and info["fetched"] == 0 and info["changed"] is False  # already there
        # a bad copy at the source is refused, and no partial file is left
        bad = shards(source)[0]
        bad.write_bytes(b"\0" * bad.stat().st_size)
        (peer / bad.name).unlink()
        info = fetch(hub, peer, f"http://127.0.0.1:{port}")
        assert info["failed"] and "sha256 mismatch" in info["msg"] and bad.name in info["msg"]
        assert not (peer / bad.name).exists()
        assert not [p for p in peer.iterdir() if p.name.startswith(".part-")]
    finally:
        assert stop(pidfile)["status"] == "stopped"
    again = stop(pidfile)
    assert again["status"] == "not-running" and again["changed"] is False


def fetch(hub: RunningHub, target, source: str, token: str | None = None, check_mode: bool = False) -> dict:
    return weights("copied", target, source=source, endpoint=hub.url, token=token or "", check_mode=check_mode)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_lock_wait_is_bounded_with_progress_and_names_the_holder(hub, tmp_path):
    """Another download holds the weights lock: lock_status names it at once; present waits
    lock_wait_s, saying so, then fails naming the holder; once free, lock_status says so."""
    target = tmp_path / "model"
    lock = target.parent / ".lock"
    holder = subprocess.Popen(
        module_cmd("fleet_weights", {"state": "present", "path": str(tmp_path / "other"), "model": MODEL,
                                     "endpoint": hub.url, "lock": str(lock), "download_command": ["sleep", "60"]},
                   tmp_path / ".args"),
        stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(300):  # until the holder has written its record
            status = module("fleet_weights", {"state": "lock_status", "lock": str(lock)}, tmp_path / ".args")
            if not status["free"] and status.get("holder", {}).get("pid"):
                break
            time.sleep(0.1)
        assert status["free"] is False and status["changed"] is False and not status.get("failed")
        assert f"is held by pid {holder.pid} on " in status["error"] and f"(download of {MODEL})" in status["error"]
        waited = weights("present", target, endpoint=hub.url, lock=str(lock), lock_wait_s=1,
                         download_command=["true"])
    finally:
        holder.terminate()
        holder.communicate(timeout=120)
    assert waited["failed"] and waited["status"] == "lock-timeout", waited
    assert f"is held by pid {holder.pid} on " in waited["msg"] and f"(download of {MODEL})" in waited["msg"]
    assert "still held after 1 s (weights_lock_wait_s)" in waited["msg"]
    assert any(f"waiting: weights lock {lock} is held by pid {holder.pid}" in line for line in waited["progress"])
    free = module("fleet_weights", {"state": "lock_status", "lock": str(lock)}, tmp_path / ".args")
    assert free["free"] is True and free["status"] == "free"


def test_bad_input_is_refused_before_anything_runs(tmp_path):
    info = module("fleet_weights", {"state": "present", "path": str(tmp_path / "m"), "model": MODEL},
                  tmp_path / ".args")
    assert info["failed"] and "endpoint" in info["msg"] and "download_command" in info["msg"]
    info = module("fleet_weights", {"state": "sideways"}, tmp_path / ".args")
    assert info["failed"] and "sideways" in info["msg"] and "checked" in info["msg"]
    assert not (tmp_path / "m").exists()


# -- secrets ----------------------------------------------------------------------------

TOKEN = "ms-tok-7f3a9c1e2b4d4e6f8a0b"


def test_token_comes_on_stdin_never_on_a_command_line_and_its_file_is_removed(hub, tmp_path):
    """The token reaches the client through a 0600 file in a 0700 directory, removed after.

    Every process's command line is sampled while a throttled download runs: the token is in
    none of them (today's role puts it into the environment of ``sh -c`` and ssh's argv).
    """
    hub.set(token=TOKEN, throttle_mbps=4)
    target = tmp_path / "model"
    seen: set[str] = set()
    done = threading.Event()

    def sample():
        while not done.is_set():
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    with contextlib.suppress(OSError):  # the process ended meanwhile
                        seen.add((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # The client records the modes of the private directory and token file it was given.
    probe = tmp_path / "modes"
    cli = modelscope_cli("1.40.2")
    wrapped = ["sh", "-c", f'stat -c %a "$(dirname "$0")" "$0" > {probe}; exec "$@"',
               "@SECRETS_DIR@/token", str(cli), "download", MODEL, "--local-dir", str(target)]
    try:
        info = ensure(hub, target, token=TOKEN, command=wrapped, env={"TMPDIR": str(tmp_path)})
    finally:
        done.set()
        sampler.join()
    assert not info.get("failed") and info["status"] == "complete", info
    assert probe.read_text().split() == ["700", "600"]
    assert any("modelscope" in c and "download" in c for c in seen)  # the sampler saw the client
    assert not [c for c in seen if TOKEN in c]
    assert not list(tmp_path.glob("ascend-fleet-secrets-*"))  # removed afterwards
    assert hub.downloads() and 401 not in [r["status"] for r in hub.log()]  # token sent and accepted


def test_wrong_token_says_401_and_names_the_variable_without_printing_the_token(hub, tmp_path):
    hub.set(token=TOKEN)
    target = tmp_path / "model"
    for given in ("wrong-" + TOKEN, ""):
        proc = subprocess.run(
            module_cmd("fleet_weights", {"state": "present", "path": str(target), "model": MODEL,
                                         "endpoint": hub.url, "lock": str(tmp_path / ".lock"), "token": given,
                                         "download_command": ["true"]}, tmp_path / ".args"),
            capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp_path)}, check=False, timeout=300,
        )
        info = json.loads(proc.stdout)
        assert proc.returncode != 0 and info["failed"] and info["http_status"] == 401
        assert "401" in info["msg"] and "weights_token" in info["msg"], info
        assert TOKEN not in proc.stdout + proc.stderr
    assert not list(tmp_path.glob("ascend-fleet-secrets-*"))


def test_failed_download_says_what_failed_with_the_token_redacted(hub, tmp_path):
    """Not one censored line: the client's own error (which may quote the token), the
    checksum failure and a full disk are each named, the token replaced by asterisks."""
    hub.set(token=TOKEN)
    target = tmp_path / "model"
    # a client that fails loudly and quotes its token
    chatty = ["sh", "-c", 'echo "GET failed: HTTP 403 for config.json with token $MODELSCOPE_API_TOKEN" >&2; exit 1']
    info = ensure(hub, target, retries=1, token=TOKEN, command=chatty, env={"TMPDIR": str(tmp_path)})
    text = json.dumps(info)
    assert info["failed"] and TOKEN not in text and "********" in text
    assert "HTTP 403 for config.json" in info["error"] and "exited with 1" in info["error"]
    assert "missing" in info["error"]
    # a full disk
    full = ["sh", "-c", 'echo "OSError: [Errno 28] No space left on device: model.safetensors" >&2; exit 1']
    info = ensure(hub, target, retries=1, token=TOKEN, command=full, env={"TMPDIR": str(tmp_path)})
    assert info["failed"] and info["msg"].startswith("disk full")
    # a checksum failure (the hub serves wrong bytes)
    hub.set(corrupt={"file": None})
    info = ensure(hub, target, retries=1, token=TOKEN, env={"TMPDIR": str(tmp_path)})
    first = sorted(f["path"] for f in hub.manifest["files"] if f["path"].endswith(".safetensors"))[0]
    assert info["failed"] and "mismatch" in info["msg"].lower() and first in info["msg"], info
    assert TOKEN not in json.dumps(info)
    assert not list(tmp_path.glob("ascend-fleet-secrets-*"))  # removed on failure too


def test_token_file_is_removed_when_the_module_is_terminated(hub, tmp_path):
    target = tmp_path / "model"
    started = tmp_path / "started"
    proc = subprocess.Popen(
        module_cmd("fleet_weights", {"state": "present", "path": str(target), "model": MODEL, "endpoint": hub.url,
                                     "lock": str(tmp_path / ".lock"), "token": TOKEN,
                                     "download_command": ["sh", "-c", f"touch {started}; sleep 60"]},
                   tmp_path / ".args"),
        stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    while not started.exists():
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    assert len(list(tmp_path.glob("ascend-fleet-secrets-*/token"))) == 1
    proc.terminate()  # as when the play is interrupted
    out, _ = proc.communicate(timeout=90)
    assert not list(tmp_path.glob("ascend-fleet-secrets-*"))
    assert TOKEN not in out


# -- weights from untrusted places ---------------------------------------------------------

@pytest.mark.parametrize("evil", ["../escaped.txt", "sub/../../escaped.txt", "/tmp/ascend-fleet-escaped.txt"])
def test_hostile_hub_listing_is_refused_before_anything_runs(hub, tmp_path, evil):
    hub.set(evil=evil if not evil.startswith("/") else str(tmp_path / "abs-escaped.txt"))
    target = tmp_path / "cache" / "model"
    ran = tmp_path / "client-ran"
    info = ensure(hub, target, command=["touch", str(ran)])
    assert info["failed"] and info["status"] == "refused", info
    assert "refused" in info["error"] and "hub listing" in info["error"]
    assert not ran.exists()  # the client never ran
    info = verify(hub, target)
    assert info["failed"] and info["status"] == "refused" and "refused" in info["msg"]
    peer = tmp_path / "peer" / "model"
    info = fetch(hub, peer, "http://127.0.0.1:9")
    assert info["failed"] and info["status"] == "refused" and "refused" in info["msg"]
    assert not [p for p in tmp_path.rglob("*escaped*")]


def test_a_symlink_in_the_model_directory_is_refused_not_followed(hub, tmp_path):
    target = tmp_path / "model"
    assert not ensure(hub, target).get("failed")
    outside = tmp_path / "outside.json"
    outside.write_text("keep me")
    (target / "config.json").unlink()
    (target / "config.json").symlink_to(outside)
    info = verify(hub, target)
    assert info["failed"] and info["status"] == "refused"
    assert "symlink" in info["msg"] and "config.json" in info["msg"]
    assert outside.read_text() == "keep me"
    # a marker naming a path outside, or through a symlink, is not trusted either
    (target / "config.json").unlink()
    marker = json.loads((target / ".ascend-fleet-complete.json").read_text())
    outside.write_text("x" * 7)
    marker["files"] = {"../outside.json": {"size": 7, "sha256": "0" * 64}}
    (target / ".ascend-fleet-complete.json").write_text(json.dumps(marker))
    info = weights("checked", target)
    assert not info.get("failed") and info["complete"] is False
    assert info["status"] == "refused" and "../outside.json" in info["error"]


class _Peer:
    """A malicious peer: serves a directory of its choosing (no checks) on loopback."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        handler.log_message = lambda *a: None
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_peer_copy_trusts_the_hub_listing_not_the_peer(hub, tmp_path):
    """A peer whose marker vouches for its own wrong bytes, and lists a path outside the
    model directory, gets nothing past the fetch."""
    source = tmp_path / "source" / "model"
    assert not ensure(hub, source).get("failed")
    bad = shards(source)[0]
    forged = b"\x01" * bad.stat().st_size
    bad.write_bytes(forged)
    marker = json.loads((source / ".ascend-fleet-complete.json").read_text())
    marker["files"][bad.name]["sha256"] = hashlib.sha256(forged).hexdigest()  # the peer's claim
    marker["files"]["../../escaped.txt"] = {"size": 4, "sha256": hashlib.sha256(b"evil").hexdigest()}
    (source / ".ascend-fleet-complete.json").write_text(json.dumps(marker))
    (tmp_path / "escaped.txt").write_bytes(b"evil")  # what ../../escaped.txt serves
    peer = _Peer(tmp_path / "source" / "model")
    try:
        target = tmp_path / "node" / "inner" / "model"
        info = fetch(hub, target, peer.url)
    finally:
        peer.stop()
    assert info["failed"] and info["status"] == "mismatch", info
    assert info["file"] == bad.name and "against the hub's listing" in info["msg"], info
    assert not (target / bad.name).exists()
    assert not (tmp_path / "node" / "escaped.txt").exists()
    assert not [p for p in target.iterdir() if p.name.startswith(".part-")]
    assert not complete(target)


def test_copy_server_serves_only_verified_files_and_says_when_it_cannot_bind(hub, tmp_path):
    source = tmp_path / "model"
    assert not ensure(hub, source).get("failed")
    (source / "leak").symlink_to("/etc/hostname")
    (source / "unlisted.txt").write_text("not verified")
    port = free_port()
    pidfile = tmp_path / "serve.pid"
    info = serve(source, port, pidfile, max_seconds=60)
    assert not info.get("failed") and info["changed"] is True, info
    assert int(pidfile.read_text()) > 0
    try:
        for name in ("leak", "unlisted.txt", "../" + source.name + "/config.json", ".ascend-fleet-complete.json"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/{name}", timeout=10)
            assert err.value.code == 404
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config.json", timeout=10) as resp:
            assert resp.read() == (source / "config.json").read_bytes()
        # a second server on the same port cannot bind: it says so and fails
        info = serve(source, port, tmp_path / "second.pid", max_seconds=60)
        assert info["failed"] and info["status"] == "bind-failed"
        assert f"127.0.0.1:{port}" in info["msg"] and "weights_peer_port" in info["msg"]
    finally:
        assert stop(pidfile)["status"] == "stopped"
