"""The weights helper the weights role runs on the nodes (roles/weights/files/weights_tool.py).

Driven here against the lab hub on loopback with the real modelscope client (1.40) as the
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

TOOL = REPO / "roles" / "weights" / "files" / "weights_tool.py"


def tool(*args: str, env: dict | None = None, stdin: str | None = None) -> tuple[int, dict]:
    proc = subprocess.run(
        [sys.executable, str(TOOL), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        input=stdin,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def tool_raw(*args: str, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        input=stdin,
    )


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
           env: dict | None = None) -> tuple[int, dict]:
    cli = modelscope_cli("1.40.2")
    download = command or [str(cli), "download", MODEL, "--local-dir", str(target)]
    return tool(
        "ensure",
        "--dir",
        str(target),
        "--model",
        MODEL,
        "--endpoint",
        hub.url,
        "--lock",
        str(target.parent / ".lock"),
        "--retries",
        str(retries),
        *(["--token-stdin"] if token is not None else []),
        "--",
        "sh",
        "-c",
        WITH_TOKEN,
        "@SECRETS_DIR@",
        *download,
        env={
            "MODELSCOPE_ENDPOINT": hub.url,
            "MODELSCOPE_CACHE": str(target.parent / "ms-cache"),
            "HOME": str(target.parent / "home"),
            **(env or {}),
        },
        stdin=token,
    )


def shards(target):
    return sorted(p for p in target.iterdir() if p.name.endswith(".safetensors"))


def test_ensure_downloads_verifies_and_is_then_a_no_op(hub, tmp_path):
    target = tmp_path / "model"
    rc, info = ensure(hub, target)
    assert rc == 0 and info["status"] == "complete" and info["changed"] is True
    marker = json.loads((target / ".ascend-fleet-complete.json").read_text())
    assert {rel: (m["size"], m["sha256"]) for rel, m in marker["files"].items()} == {
        f["path"]: (f["size"], f["sha256"]) for f in hub.manifest["files"]
    }
    for rel, meta in marker["files"].items():
        assert (target / rel).stat().st_size == meta["size"]
    hub.reset()
    rc, info = ensure(hub, target)
    assert rc == 0 and info["changed"] is False
    assert hub.downloads() == []  # nothing fetched again
    assert tool("check", "--dir", str(target), "--model", MODEL)[0] == 0


def test_verify_deletes_a_corrupt_file_and_ensure_fetches_it_again(hub, tmp_path):
    target = tmp_path / "model"
    assert ensure(hub, target)[0] == 0
    victim = shards(target)[0]
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert tool("check", "--dir", str(target), "--model", MODEL)[0] == 0  # size unchanged: check is cheap
    rc, info = tool("verify", "--dir", str(target), "--model", MODEL, "--endpoint", hub.url)
    assert rc == 3 and info["removed_corrupt"] == [victim.name]
    assert not victim.exists()  # no corrupt file left where a good one is expected
    assert tool("check", "--dir", str(target), "--model", MODEL)[0] == 1
    rc, info = ensure(hub, target)
    assert rc == 0 and info["changed"] is True and victim.exists()


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
    rc, info = ensure(hub, target, retries=2)
    assert rc == 1 and info["status"] == "failed" and len(info["attempts"]) == 2
    first = sorted(f["path"] for f in hub.manifest["files"] if f["path"].endswith(".safetensors"))[0]
    assert not (target / first).exists()
    assert not (target / ".ascend-fleet-complete.json").exists()


def test_peer_copy_verifies_every_file(hub, tmp_path):
    source = tmp_path / "source" / "model"
    assert ensure(hub, source)[0] == 0
    pidfile = tmp_path / "serve.pid"
    port = 18000 + os.getpid() % 1000
    rc, info = tool(
        "serve",
        "--dir",
        str(source),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--pidfile",
        str(pidfile),
        "--max-seconds",
        "120",
    )
    assert rc == 0
    try:
        peer = tmp_path / "peer" / "model"
        rc, info = fetch(hub, peer, f"http://127.0.0.1:{port}")
        assert rc == 0 and info["fetched"] == info["files"] > 0
        assert tool("check", "--dir", str(peer), "--model", MODEL)[0] == 0
        rc, info = fetch(hub, peer, f"http://127.0.0.1:{port}")
        assert rc == 0 and info["fetched"] == 0  # already there and verified
        # a bad copy at the source is refused, and no partial file is left
        bad = shards(source)[0]
        bad.write_bytes(b"\0" * bad.stat().st_size)
        (peer / bad.name).unlink()
        rc, info = fetch(hub, peer, f"http://127.0.0.1:{port}")
        assert rc != 0 and "sha256 mismatch" in info["error"] and bad.name in info["error"]
        assert not (peer / bad.name).exists()
        assert not [p for p in peer.iterdir() if p.name.startswith(".part-")]
    finally:
        assert tool("stop", "--pidfile", str(pidfile))[1]["status"] == "stopped"


def fetch(hub: RunningHub, target, source: str, token: str | None = None) -> tuple[int, dict]:
    return tool(
        "fetch", "--dir", str(target), "--source", source, "--endpoint", hub.url, "--model", MODEL,
        *(["--token-stdin"] if token is not None else []),
        stdin=token,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        rc, info = ensure(hub, target, token=TOKEN, command=wrapped, env={"TMPDIR": str(tmp_path)})
    finally:
        done.set()
        sampler.join()
    assert rc == 0 and info["status"] == "complete", info
    assert probe.read_text().split() == ["700", "600"]
    assert any("modelscope" in c and "download" in c for c in seen)  # the sampler saw the client
    assert not [c for c in seen if TOKEN in c]
    assert not list(tmp_path.glob("ascend-fleet-secrets-*"))  # removed afterwards
    assert hub.downloads() and 401 not in [r["status"] for r in hub.log()]  # token sent and accepted


def test_wrong_token_says_401_and_names_the_variable_without_printing_the_token(hub, tmp_path):
    hub.set(token=TOKEN)
    target = tmp_path / "model"
    for given in ("wrong-" + TOKEN, ""):
        proc = tool_raw(
            "ensure", "--dir", str(target), "--model", MODEL, "--endpoint", hub.url,
            "--lock", str(tmp_path / ".lock"), "--token-stdin", "--", "true",
            stdin=given, env={"TMPDIR": str(tmp_path)},
        )
        info = json.loads(proc.stdout)
        assert proc.returncode != 0 and info["http_status"] == 401
        assert "401" in info["error"] and "weights_token" in info["error"], info
        assert TOKEN not in proc.stdout + proc.stderr
    assert not list(tmp_path.glob("ascend-fleet-secrets-*"))


def test_failed_download_says_what_failed_with_the_token_redacted(hub, tmp_path):
    """Not one censored line: the client's own error (which may quote the token), the
    checksum failure and a full disk are each named, the token replaced by asterisks."""
    hub.set(token=TOKEN)
    target = tmp_path / "model"
    # a client that fails loudly and quotes its token
    chatty = ["sh", "-c", 'echo "GET failed: HTTP 403 for config.json with token $MODELSCOPE_API_TOKEN" >&2; exit 1']
    rc, info = ensure(hub, target, retries=1, token=TOKEN, command=chatty, env={"TMPDIR": str(tmp_path)})
    text = json.dumps(info)
    assert rc == 1 and TOKEN not in text and "********" in text
    assert "HTTP 403 for config.json" in info["error"] and "exited with 1" in info["error"]
    assert "missing" in info["error"]
    # a full disk
    full = ["sh", "-c", 'echo "OSError: [Errno 28] No space left on device: model.safetensors" >&2; exit 1']
    rc, info = ensure(hub, target, retries=1, token=TOKEN, command=full, env={"TMPDIR": str(tmp_path)})
    assert rc == 1 and info["error"].startswith("disk full")
    # a checksum failure (the hub serves wrong bytes)
    hub.set(corrupt={"file": None})
    rc, info = ensure(hub, target, retries=1, token=TOKEN, env={"TMPDIR": str(tmp_path)})
    first = sorted(f["path"] for f in hub.manifest["files"] if f["path"].endswith(".safetensors"))[0]
    assert rc == 1 and "mismatch" in info["error"].lower() and first in info["error"], info
    assert TOKEN not in json.dumps(info)
    assert not list(tmp_path.glob("ascend-fleet-secrets-*"))  # removed on failure too


def test_token_file_is_removed_when_the_tool_is_terminated(hub, tmp_path):
    target = tmp_path / "model"
    started = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, str(TOOL), "ensure", "--dir", str(target), "--model", MODEL, "--endpoint", hub.url,
         "--lock", str(tmp_path / ".lock"), "--token-stdin", "--", "sh", "-c", f"touch {started}; sleep 60"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    proc.stdin.write(TOKEN)
    proc.stdin.close()
    while not started.exists():
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    assert len(list(tmp_path.glob("ascend-fleet-secrets-*/token"))) == 1
    proc.terminate()  # as when the play is interrupted
    proc.wait(timeout=90)
    assert not list(tmp_path.glob("ascend-fleet-secrets-*"))


# -- weights from untrusted places ---------------------------------------------------------

@pytest.mark.parametrize("evil", ["../escaped.txt", "sub/../../escaped.txt", "/tmp/ascend-fleet-escaped.txt"])
def test_hostile_hub_listing_is_refused_before_anything_runs(hub, tmp_path, evil):
    hub.set(evil=evil if not evil.startswith("/") else str(tmp_path / "abs-escaped.txt"))
    target = tmp_path / "cache" / "model"
    ran = tmp_path / "client-ran"
    rc, info = ensure(hub, target, command=["touch", str(ran)])
    assert rc == 4 and info["status"] == "refused", info
    assert "refused" in info["error"] and "hub listing" in info["error"]
    assert not ran.exists()  # the client never ran
    rc, info = tool("verify", "--dir", str(target), "--model", MODEL, "--endpoint", hub.url)
    assert rc == 4 and "refused" in info["error"]
    peer = tmp_path / "peer" / "model"
    rc, info = fetch(hub, peer, "http://127.0.0.1:9")
    assert rc == 4 and "refused" in info["error"]
    assert not [p for p in tmp_path.rglob("*escaped*")]


def test_a_symlink_in_the_model_directory_is_refused_not_followed(hub, tmp_path):
    target = tmp_path / "model"
    assert ensure(hub, target)[0] == 0
    outside = tmp_path / "outside.json"
    outside.write_text("keep me")
    (target / "config.json").unlink()
    (target / "config.json").symlink_to(outside)
    rc, info = tool("verify", "--dir", str(target), "--model", MODEL, "--endpoint", hub.url)
    assert rc == 4 and "symlink" in info["error"] and "config.json" in info["error"]
    assert outside.read_text() == "keep me"
    # a marker naming a path outside, or through a symlink, is not trusted either
    (target / "config.json").unlink()
    marker = json.loads((target / ".ascend-fleet-complete.json").read_text())
    outside.write_text("x" * 7)
    marker["files"] = {"../outside.json": {"size": 7, "sha256": "0" * 64}}
    (target / ".ascend-fleet-complete.json").write_text(json.dumps(marker))
    rc, info = tool("check", "--dir", str(target), "--model", MODEL)
    assert rc == 1 and info["status"] == "refused" and "../outside.json" in info["error"]


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
    assert ensure(hub, source)[0] == 0
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
        rc, info = fetch(hub, target, peer.url)
    finally:
        peer.stop()
    assert rc == 3 and info["file"] == bad.name and "against the hub's listing" in info["error"], info
    assert not (target / bad.name).exists()
    assert not (tmp_path / "node" / "escaped.txt").exists()
    assert not [p for p in target.iterdir() if p.name.startswith(".part-")]
    assert tool("check", "--dir", str(target), "--model", MODEL)[0] == 1


def test_copy_server_serves_only_verified_files_and_says_when_it_cannot_bind(hub, tmp_path):
    source = tmp_path / "model"
    assert ensure(hub, source)[0] == 0
    (source / "leak").symlink_to("/etc/hostname")
    (source / "unlisted.txt").write_text("not verified")
    port = free_port()
    pidfile = tmp_path / "serve.pid"
    rc, info = tool("serve", "--dir", str(source), "--bind", "127.0.0.1", "--port", str(port),
                    "--pidfile", str(pidfile), "--max-seconds", "60")
    assert rc == 0, info
    try:
        for name in ("leak", "unlisted.txt", "../" + source.name + "/config.json", ".ascend-fleet-complete.json"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/{name}", timeout=10)
            assert err.value.code == 404
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config.json", timeout=10) as resp:
            assert resp.read() == (source / "config.json").read_bytes()
        # a second server on the same port cannot bind: it says so and fails
        rc, info = tool("serve", "--dir", str(source), "--bind", "127.0.0.1", "--port", str(port),
                        "--pidfile", str(tmp_path / "second.pid"), "--max-seconds", "60")
        assert rc == 2 and info["status"] == "bind-failed"
        assert f"127.0.0.1:{port}" in info["error"] and "weights_peer_port" in info["error"]
    finally:
        assert tool("stop", "--pidfile", str(pidfile))[1]["status"] == "stopped"
