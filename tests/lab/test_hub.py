"""The lab's model hub against the REAL ``modelscope`` download clients.

Two client generations behave differently (see the lab notes): >= 1.38 downloads through
``modelscope-hub`` and is redirected with ``MODELSCOPE_ENDPOINT``; <= 1.37 takes
``--endpoint`` and first asks for the revisions. Each is installed from PyPI into its own
venv under ``lab/.cache/venvs`` (once; later runs reuse it). Without PyPI those tests skip.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HUB = REPO / "lab" / "hub"
CACHE = REPO / "lab" / ".cache"
MODEL = "Eco-Tech/DeepSeek-V4-Flash-w8a8-mtp"
# One client of each generation (keep in step with .ci/run, which may pre-install them).
NEW_CLIENT = "1.40.2"
OLD_CLIENT = "1.37.1"

sys.path.insert(0, str(HUB))
import faults  # noqa: E402  (lab/hub/faults.py: the admin client)


def modelscope_cli(version: str) -> Path:
    """The ``modelscope`` executable of a venv holding that client version (made once).

    A lock file serializes test runs that start at the same time; the ``.complete`` marker
    tells a finished venv from one whose install was interrupted.
    """
    venv = CACHE / "venvs" / f"modelscope-{version}"
    exe = venv / "bin" / "modelscope"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".complete").exists():
            return exe
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        proc = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", f"modelscope=={version}"],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.skip(f"cannot install modelscope=={version} from PyPI: {proc.stderr[-500:]}")
        (venv / ".complete").touch()
    return exe


class RunningHub:
    """A hub server process on 127.0.0.1 with its generated repository."""

    def __init__(self, root: Path, size_mb: float = 8) -> None:
        port_file = root / "port"
        self.proc = subprocess.Popen(
            [sys.executable, str(HUB / "server.py"), "--host", "127.0.0.1", "--port", "0",
             "--root", str(root / "repo"), "--model", MODEL, "--size-mb", str(size_mb),
             "--port-file", str(port_file)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.banner = self.proc.stdout.readline()  # printed once the repo is ready
        if not port_file.exists():
            self.stop()
            raise AssertionError(f"hub did not start: {self.banner!r}")
        self.url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        self.manifest = json.loads(next((root / "repo").glob("*/manifest.json")).read_text())
        self.files_dir = next((root / "repo").glob("*/manifest.json")).parent / "files"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def reset(self) -> None:
        faults.call(self.url, "/_lab/reset", {})

    def set(self, **switches) -> dict:
        """Switch faults/settings on, e.g. ``set(token="T", throttle_mbps=4)``."""
        return faults.set_faults(self.url, **switches)

    def log(self) -> list[dict]:
        return faults.call(self.url, "/_lab/log")["requests"]

    def downloads(self) -> list[dict]:
        """The per-file download requests seen since the last reset."""
        return [r for r in self.log() if r["file"]]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    running = RunningHub(tmp_path_factory.mktemp("hub"))
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _clean_hub(request):
    # Every test starts with no faults and an empty request log.
    if "hub" in request.fixturenames:
        request.getfixturevalue("hub").reset()


def download(version: str, hub: RunningHub, dest: Path) -> subprocess.CompletedProcess:
    """Run the real client the way the toolkit does: whole repo, explicit --local_dir."""
    exe = modelscope_cli(version)
    cmd = [str(exe), "download", "--model", MODEL, "--local_dir", str(dest)]
    env = dict(os.environ, HOME=str(dest.parent / "home"), NO_PROXY="*")
    env.pop("MODELSCOPE_ENDPOINT", None)
    if version == NEW_CLIENT:
        env["MODELSCOPE_ENDPOINT"] = hub.url  # >= 1.38
    else:
        cmd += ["--endpoint", hub.url]  # <= 1.37: MODELSCOPE_DOMAIN would force https
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                          check=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_complete(hub: RunningHub, dest: Path) -> None:
    """Every repository file is in dest with the listed size and sha256."""
    for meta in hub.manifest["files"]:
        got = dest / meta["path"]
        assert got.is_file(), f"{meta['path']} missing"
        assert got.stat().st_size == meta["size"]
        assert sha256(got) == meta["sha256"], f"{meta['path']} has wrong content"


CLIENTS = pytest.mark.parametrize("version", [NEW_CLIENT, OLD_CLIENT])


# -- the repository itself (no client needed) ----------------------------------------------

def test_repo_is_a_loadable_checkpoint(hub):
    """Index names every shard, and every shard has a valid safetensors header."""
    files = hub.files_dir
    index = json.loads((files / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 4 and shards[0] == "model-00001-of-00004.safetensors"
    config = json.loads((files / "config.json").read_text())
    assert config["architectures"] == ["DeepseekV4ForCausalLM"]
    total = 0
    for shard in shards:
        raw = (files / shard).read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        assert {k for k, v in index["weight_map"].items() if v == shard} == set(tensors)
        end = max(t["data_offsets"][1] for t in tensors.values())
        assert 8 + n + end == len(raw)  # the data section is exactly covered
        total += end
    assert index["metadata"]["total_size"] == total


def test_range_requests_and_admin(hub):
    url = f"{hub.url}/api/v1/models/{MODEL}/repo?Revision=master&FilePath=config.json"
    full = urllib.request.urlopen(url).read()
    req = urllib.request.Request(url, headers={"Range": "bytes=10-"})
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 10-{len(full) - 1}/{len(full)}"
        assert resp.read() == full[10:]
    bad = urllib.request.Request(url, headers={"Range": f"bytes={len(full)}-"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad)
    assert err.value.code == 416
    shown = faults.set_faults(hub.url, throttle_mbps=3, error={"code": 502, "times": 1})
    assert shown["throttle_mbps"] == 3 and shown["error"]["code"] == 502
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url)
    assert err.value.code == 502
    assert urllib.request.urlopen(url).read() == full  # the counted error is used up
    # Throttled, a shard still arrives whole and right.
    shard = next(f for f in hub.manifest["files"] if f["path"].endswith(".safetensors"))
    data = urllib.request.urlopen(url.replace("config.json", shard["path"])).read()
    assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    assert faults.set_faults(hub.url, clear=True)["throttle_mbps"] is None


def test_fault_flags_at_start(tmp_path):
    """--error at start: the hub answers 503 until the fault is cleared at run time."""
    proc = subprocess.Popen(
        [sys.executable, str(HUB / "server.py"), "--port", "0", "--root", str(tmp_path / "repo"),
         "--size-mb", "1", "--error", "503", "--port-file", str(tmp_path / "port2")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        proc.stdout.readline()
        url = f"http://127.0.0.1:{(tmp_path / 'port2').read_text().strip()}"
        listing = f"{url}/api/v1/models/{MODEL}/repo/files?Revision=master"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(listing)
        assert err.value.code == 503
        assert faults.call(url, "/_lab/faults")["error"]["code"] == 503
        faults.set_faults(url, error=None)
        data = json.loads(urllib.request.urlopen(listing).read())["Data"]["Files"]
        assert {f["Path"] for f in data} >= {"config.json", "model.safetensors.index.json"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- the real clients -----------------------------------------------------------------------

@CLIENTS
def test_full_download_then_rerun_fetches_nothing(hub, version, tmp_path):
    dest = tmp_path / "model"
    proc = download(version, hub, dest)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_complete(hub, dest)
    fetched = {r["file"] for r in hub.downloads()}
    assert fetched == {f["path"] for f in hub.manifest["files"]}

    hub.reset()
    again = download(version, hub, dest)
    assert again.returncode == 0, again.stdout + again.stderr
    assert hub.downloads() == [], "a re-run must not fetch any file again"
    assert_complete(hub, dest)


@CLIENTS
def test_dropped_connection_is_resumed_with_range(hub, version, tmp_path):
    shard = "model-00001-of-00004.safetensors"
    faults.set_faults(hub.url, drop={"file": None})  # None: the first big file, once
    dest = tmp_path / "model"
    proc = download(version, hub, dest)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tries = [r for r in hub.downloads() if r["file"] == shard]
    assert tries[0].get("dropped"), "the first transfer of the shard was cut"
    resumed = [r for r in tries[1:] if r["range"] and not r["range"].startswith("bytes=0-")]
    assert resumed, f"no resuming Range request after the drop: {tries}"
    assert resumed[0]["status"] == 206
    assert_complete(hub, dest)


@CLIENTS
def test_corrupted_file_is_rejected(hub, version, tmp_path):
    shard = "model-00001-of-00004.safetensors"
    faults.set_faults(hub.url, corrupt={"file": shard})
    dest = tmp_path / "model"
    proc = download(version, hub, dest)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert shard in output
    assert any(word in output.lower() for word in ("hash", "integrity", "sha256")), output
    good = next(f for f in hub.manifest["files"] if f["path"] == shard)["sha256"]
    bad = dest / shard
    # The client may leave the shard out, but must never keep wrong bytes under its name.
    assert not (bad.exists() and sha256(bad) != good), "a corrupted shard was kept"


@CLIENTS
def test_server_error_fails_clearly(hub, version, tmp_path):
    faults.set_faults(hub.url, error={"code": 503})
    dest = tmp_path / "model"
    began = time.monotonic()
    proc = download(version, hub, dest)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "503" in output, output
    assert not any(dest.glob("*.safetensors"))
    # Informational only: how long the client retried before giving up.
    print(f"modelscope {version} gave up after {time.monotonic() - began:.1f}s")
