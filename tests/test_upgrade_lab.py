"""Rolling upgrade on the a3-1p1d lab (marker `lab`), under a steady trickle of requests to
the lab's PD proxy: a good upgrade loses no request and a second run changes nothing; a new
version whose engine dies at start is rolled back with no request lost and the fleet keeps
serving the old version; a missing image tag stops before anything is stopped.

One deployment for the module (the tests of tests/test_ops.py's pattern); the lab is left
serving the default recipe at the end.

The new version is the v0.23.0 recipe (the lab registry serves both engine versions). The
broken version: the default recipe under another id and image tag, the default image with
one more layer whose `vllm` exits at once, pushed under that tag.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, run_playbook
from tests.lab.conftest import Lab, lab_unavailable, labctl, leave_serving, serving

pytestmark = pytest.mark.lab

TOPOLOGY = "a3-1p1d"
INVENTORY = ["-i", TOPOLOGY, "-i", f"lab/.state/{TOPOLOGY}/hosts.yml"]
HOSTS = ["prefill-0", "decode-0"]
OLD = "dsv4-flash-w8a8-mtp@v0.21.0rc1"
OLD_RECIPE = REPO / "ascend_fleet" / "recipes" / "dsv4-flash-w8a8-mtp_v0.21.0rc1.yml"
V023 = "dsv4-flash-w8a8-mtp@v0.23.0"
REGISTRY = "http://198.18.0.1:5000"
REPO_PATH = "ascend/vllm-ascend"
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


# ---- the lab registry (Docker Registry HTTP API v2) -------------------------------------
def _req(method: str, path: str, data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(f"{REGISTRY}{path}", data=data, method=method, headers=headers or {})
    return urllib.request.urlopen(req, timeout=120)


def registry_tags() -> list[str]:
    with _req("GET", f"/v2/{REPO_PATH}/tags/list") as resp:
        return json.load(resp).get("tags") or []


def get_manifest(tag: str) -> dict:
    with _req("GET", f"/v2/{REPO_PATH}/manifests/{tag}", headers={"Accept": MANIFEST}) as resp:
        return json.load(resp)


def put_manifest(tag: str, manifest: dict) -> None:
    body = json.dumps(manifest).encode()
    with _req("PUT", f"/v2/{REPO_PATH}/manifests/{tag}", body, {"Content-Type": MANIFEST}) as resp:
        assert resp.status in (200, 201), resp.status


def put_blob(data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with _req("POST", f"/v2/{REPO_PATH}/blobs/uploads/") as resp:
        location = resp.headers["Location"]
    sep = "&" if "?" in location else "?"
    url = location if location.startswith("http") else f"{REGISTRY}{location}"
    req = urllib.request.Request(
        f"{url}{sep}digest={digest}", data=data, method="PUT", headers={"Content-Type": "application/octet-stream"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.status in (201, 204), resp.status
    return digest


def tag_broken(src: str, dst: str) -> None:
    """src plus one layer: /usr/local/bin/vllm fails at once (a new version that cannot start)."""
    script = b"#!/bin/sh\necho 'RuntimeError: lab: this engine build cannot start' >&2\nexit 1\n"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name in ("usr/", "usr/local/", "usr/local/bin/"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("usr/local/bin/vllm")
        info.size, info.mode = len(script), 0o755
        tar.addfile(info, io.BytesIO(script))
    layer_tar = raw.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    manifest = get_manifest(src)
    with _req("GET", f"/v2/{REPO_PATH}/blobs/{manifest['config']['digest']}") as resp:
        config = json.load(resp)
    config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(layer_tar).hexdigest())
    config.setdefault("history", []).append({"created_by": "lab: a vllm that cannot start"})
    config_raw = json.dumps(config).encode()
    manifest["config"] = {**manifest["config"], "digest": put_blob(config_raw), "size": len(config_raw)}
    manifest["layers"] = [
        *manifest["layers"],
        {
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": len(layer),
            "digest": put_blob(layer),
        },
    ]
    put_manifest(dst, manifest)


def write_recipe(directory: Path, rid: str, tag: str) -> None:
    """The default recipe under another id and image tag."""
    text = OLD_RECIPE.read_text()
    text = re.sub(r"(?m)^id: .*$", f"id: {rid}", text, count=1)
    text = re.sub(r"(?m)^(  tag: )v0\.21\.0rc1\b", rf"\g<1>{tag}", text, count=1)
    assert f"id: {rid}" in text and f"tag: {tag}" in text
    (directory / f"{rid.replace('@', '_')}.yml").write_text(text)


# ---- the trickle ------------------------------------------------------------------------
class Trickle:
    """One chat request every `every` seconds to the lab's proxy (bounded count and time)."""

    def __init__(self, url: str, model: str, every: float = 0.5, max_requests: int = 600, max_s: float = 600):
        self.url, self.model, self.every = url, model, every
        self.max_requests, self.max_s = max_requests, max_s
        self.results: list[tuple[float, int | str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self) -> int | str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "Who are you?"}],
            "max_tokens": 8,
            "temperature": 0,
        }
        req = urllib.request.Request(
            f"{self.url}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            # Long enough for a request held by the proxy during the switch.
            with urllib.request.urlopen(req, timeout=300) as resp:
                answer = json.load(resp)
                return resp.status if answer.get("choices") else f"no choices: {answer}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except (urllib.error.URLError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        start = time.monotonic()
        workers = []
        while not self._stop.is_set() and len(workers) < self.max_requests and time.monotonic() - start < self.max_s:
            t0 = time.monotonic()
            worker = threading.Thread(target=lambda t0=t0: self.results.append((t0, self._one())), daemon=True)
            worker.start()
            workers.append(worker)
            self._stop.wait(self.every)
        for worker in workers:
            worker.join(330)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(400)

    @property
    def failed(self) -> list:
        return [r for r in self.results if r[1] != 200]


# ---- helpers ----------------------------------------------------------------------------
def recap(proc) -> dict[str, dict[str, int]]:
    found = {
        h: {"ok": int(o), "changed": int(c), "unreachable": int(u), "failed": int(f)}
        for h, o, c, u, f in RECAP.findall(proc.stdout)
    }
    assert set(found) >= set(HOSTS), proc.stdout[-3000:]
    return found


def engines() -> dict[str, tuple[str, str, str]]:
    """host -> (engine container id, image, start time) as the node's Docker sees it."""
    out = {}
    for host in HOSTS:
        line = labctl(
            "ssh",
            TOPOLOGY,
            host,
            "docker inspect -f '{{.Id}} {{.Config.Image}} {{.State.StartedAt}} {{.State.Running}}' vllm-ascend",
        ).stdout.strip()
        cid, image, started, running = line.split()
        assert running == "true", (host, line)
        out[host] = (cid, image, started)
    return out


def proxy_id() -> str:
    command = "docker inspect -f '{{.Id}} {{.State.Paused}}' vllm-ascend-proxy"
    return labctl("ssh", TOPOLOGY, "prefill-0", command).stdout.strip()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    labctl("up", TOPOLOGY)
    recipes = tmp_path_factory.mktemp("recipes")
    # labctl up pushes both engine versions (v0.21.0rc1 and v0.23.0) to the lab registry.
    assert {"v0.21.0rc1-a3", "v0.23.0-a3"} <= set(registry_tags()), registry_tags()
    tag_broken("v0.21.0rc1-a3", "lab-broken-a3")
    write_recipe(recipes, "dsv4-flash-w8a8-mtp@lab-broken", "lab-broken")
    write_recipe(recipes, "dsv4-flash-w8a8-mtp@lab-missing", "lab-no-such-tag")
    serving(TOPOLOGY, "-e", f"fleet_recipe={OLD}")
    lab = Lab(TOPOLOGY)
    entry = f"http://{lab.nodes['prefill-0']['mgmt_ip']}:1999"
    yield {"lab": lab, "new": V023, "paths": ["-e", json.dumps({"fleet_recipe_paths": [str(recipes)]})], "url": entry}
    # Leave the shared lab serving the default recipe, whatever happened above.
    leave_serving(TOPOLOGY, "-e", f"fleet_recipe={OLD}")


def upgrade(fleet, recipe: str, *extra: str, check: bool = True):
    return run_playbook(
        "playbooks/upgrade.yml", *INVENTORY, *fleet["paths"], "-e", f"fleet_recipe={recipe}", *extra, check=check
    )


def test_missing_image_tag_stops_before_anything_is_stopped(fleet):
    before, proxy_before = engines(), proxy_id()
    proc = upgrade(fleet, "dsv4-flash-w8a8-mtp@lab-missing", "-e", "image_pull_retries=0", check=False)
    assert proc.returncode != 0
    out = proc.stdout
    assert "pre-pull of the new image for dsv4-flash-w8a8-mtp@lab-missing failed" in out, out[-3000:]
    assert "lab-no-such-tag-a3" in out and f"Nothing was stopped: the fleet still serves {OLD}" in out
    assert "Move the instances" not in out
    assert engines() == before
    assert proxy_id() == proxy_before  # same container, not paused


def test_failed_upgrade_rolls_back_with_no_request_lost(fleet):
    before = engines()
    with Trickle(fleet["url"], "dsv4") as trickle:
        proc = upgrade(fleet, "dsv4-flash-w8a8-mtp@lab-broken", check=False)
    assert proc.returncode != 0
    out = proc.stdout
    assert "FAILED and was rolled back" in out, out[-4000:]
    assert re.search(r"the fleet serves\s+" + re.escape(OLD) + r"\s+again", out), out[-4000:]
    assert "held: proxy container vllm-ascend-proxy paused" in out
    assert "released: proxy container vllm-ascend-proxy serves again" in out
    after = engines()
    for host in HOSTS:
        assert after[host][1] == before[host][1]  # the old image again ...
        assert after[host][2] != before[host][2]  # ... started again
    assert proxy_id().endswith(" false")
    assert trickle.results, "no request was sent"
    assert trickle.failed == [], trickle.failed[:5]


def test_upgrade_under_a_trickle_loses_no_request_and_runs_once(fleet):
    new = fleet["new"]
    before = engines()
    with Trickle(fleet["url"], "dsv4") as trickle:
        proc = upgrade(fleet, new)
    assert f"the fleet serves {new}" in proc.stdout
    assert "held: proxy container vllm-ascend-proxy paused with no request in flight" in proc.stdout
    after = engines()
    for host in HOSTS:
        assert after[host][1] != before[host][1] and after[host][1].endswith("-a3")
    assert len(trickle.results) >= 10, len(trickle.results)
    assert trickle.failed == [], trickle.failed[:5]
    # The same recipe again: nothing moves.
    again = upgrade(fleet, new)
    assert f"nothing to do: the fleet already runs {new}" in again.stdout
    assert all(c["changed"] == 0 for c in recap(again).values()), again.stdout[-3000:]
    assert engines() == after


def test_restart_drains_through_the_proxy_with_no_request_lost(fleet):
    before = engines()
    with Trickle(fleet["url"], "dsv4") as trickle:
        proc = run_playbook("playbooks/restart.yml", *INVENTORY, *fleet["paths"], "-e", f"fleet_recipe={fleet['new']}")
    out = proc.stdout
    # 1P1D: each instance is the last of its role, so the proxy is held while it restarts.
    assert out.count("held: proxy container vllm-ascend-proxy paused") == 2, out[-3000:]
    assert out.count("released: proxy container vllm-ascend-proxy serves again") == 2
    after = engines()
    for host in HOSTS:
        assert after[host][2] != before[host][2] and after[host][1] == before[host][1]
    assert len(trickle.results) >= 10, len(trickle.results)
    assert trickle.failed == [], trickle.failed[:5]
