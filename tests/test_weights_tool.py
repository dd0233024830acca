"""The weights helper the weights role runs on the nodes (roles/weights/files/weights_tool.py).

Driven here against the lab hub on loopback with the real modelscope client (1.40) as the
download command, as the role does on a node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import REPO
from tests.lab.test_hub import MODEL, RunningHub, modelscope_cli

TOOL = REPO / "roles" / "weights" / "files" / "weights_tool.py"


def tool(*args: str, env: dict | None = None) -> tuple[int, dict]:
    proc = subprocess.run(
        [sys.executable, str(TOOL), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    running = RunningHub(tmp_path_factory.mktemp("hub"), size_mb=8)
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _reset(hub):
    hub.reset()


def ensure(hub: RunningHub, target, retries: int = 3) -> tuple[int, dict]:
    cli = modelscope_cli("1.40.2")
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
        "--",
        str(cli),
        "download",
        MODEL,
        "--local-dir",
        str(target),
        env={"MODELSCOPE_ENDPOINT": hub.url, "MODELSCOPE_CACHE": str(target.parent / "ms-cache")},
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
        rc, info = tool("fetch", "--dir", str(peer), "--source", f"http://127.0.0.1:{port}")
        assert rc == 0 and info["fetched"] == info["files"] > 0
        assert tool("check", "--dir", str(peer), "--model", MODEL)[0] == 0
        rc, info = tool("fetch", "--dir", str(peer), "--source", f"http://127.0.0.1:{port}")
        assert rc == 0 and info["fetched"] == 0  # already there and verified
        # a bad copy at the source is refused, and no partial file is left
        bad = shards(source)[0]
        bad.write_bytes(b"\0" * bad.stat().st_size)
        (peer / bad.name).unlink()
        proc = subprocess.run(
            [sys.executable, str(TOOL), "fetch", "--dir", str(peer), "--source", f"http://127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode != 0 and "sha256 mismatch" in proc.stderr
        assert not (peer / bad.name).exists()
        assert not [p for p in peer.iterdir() if p.name.startswith(".part-")]
    finally:
        assert tool("stop", "--pidfile", str(pidfile))[1]["status"] == "stopped"
