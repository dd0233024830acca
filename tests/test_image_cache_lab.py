"""The image phase's pull-through cache on the lab (a3-1p1d): the first node runs
Distribution in proxy mode (the lab's image of Debian's docker-registry), every node pulls
the engine image through it, and a second run changes nothing. The module leaves the nodes
as it found them (no cache container, no image under the cache's name)."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import run_playbook
from tests.lab.conftest import Lab, lab_unavailable, labctl

pytestmark = pytest.mark.lab

TOPOLOGY = "a3-1p1d"
INVENTORY = ["-i", TOPOLOGY, "-i", f"lab/.state/{TOPOLOGY}/hosts.yml"]
CACHE = "ascend-fleet-image-cache"
# No mirror: the fleet's own cache. The image of the v0.23.0 recipe, which the served lab
# does not run: its layers are not on the nodes, so the pulls through the cache fetch them
# (a node that already holds every layer of an image only asks the cache for the manifest).
NEW = "dsv4-flash-w8a8-mtp@v0.23.0"
CACHE_ON = ["-e", "image_registry_mirror=", "-e", f"fleet_recipe={NEW}"]
NEW_TAG = "ascend/vllm-ascend:v0.23.0-a3"
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def remove_cache(lab: Lab) -> None:
    """The cache container, its layers and every image pulled under a node address."""
    for host in lab.nodes:
        lab.ssh(host, f"docker rm -f {CACHE} >/dev/null 2>&1; rm -rf /var/lib/ascend-fleet/image-cache; "
                      "docker images --format '{{.Repository}}:{{.Tag}}' "
                      "| grep -E '^198[.]18[.]([1-9]|1[0-5])[.]|/distribution/registry:|/" + NEW_TAG + "$' "
                      "| xargs -r docker rmi")


@pytest.fixture(scope="module")
def lab():
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    labctl("up", TOPOLOGY)
    lab = Lab(TOPOLOGY)
    remove_cache(lab)
    yield lab
    remove_cache(lab)


def test_every_node_pulls_through_the_cache_on_the_first_node_and_a_rerun_changes_nothing(lab):
    first = run_playbook("playbooks/image.yml", *INVENTORY, *CACHE_ON)
    cache_ip = lab.nodes["prefill-0"]["mgmt_ip"]
    address = f"{cache_ip}:5000"
    overlay_remote = "http://198.18.0.1:5000"
    # The cache runs on the first node, proxying the registry of the overlay.
    info = json.loads(lab.ssh("prefill-0", f"docker inspect {CACHE}").stdout)[0]
    assert info["State"]["Running"] and info["HostConfig"]["NetworkMode"] == "host"
    assert f"REGISTRY_PROXY_REMOTEURL={overlay_remote}" in info["Config"]["Env"]
    assert f"REGISTRY_HTTP_ADDR={address}" in info["Config"]["Env"]
    assert lab.ssh("decode-0", f"docker ps -a --format '{{{{.Names}}}}' | grep -x {CACHE}").returncode == 1
    # Every node has the engine image under the cache's name, and the cache holds it.
    for host in lab.nodes:
        images = lab.ssh(host, "docker images --format '{{.Repository}}:{{.Tag}}'").stdout.split()
        assert f"{address}/{NEW_TAG}" in images, (host, images)
    catalog = lab.ssh("decode-0", f"curl -fsS http://{address}/v2/_catalog").stdout
    assert "ascend/vllm-ascend" in json.loads(catalog)["repositories"]
    assert "Pull the engine image through the cache on its own node first" in first.stdout

    again = run_playbook("playbooks/image.yml", *INVENTORY, *CACHE_ON)
    recap = {h: int(ch) for h, _, ch, _, _ in RECAP.findall(again.stdout)}
    assert set(recap) >= set(lab.nodes) and all(v == 0 for v in recap.values()), again.stdout[-3000:]


def test_with_the_mirror_set_nodes_pull_from_it_and_no_cache_starts(lab):
    # The overlay's image_registry_mirror (the lab registry as the operator's mirror).
    lab.ssh("prefill-0", f"docker rm -f {CACHE}")
    run_playbook("playbooks/image.yml", *INVENTORY)  # succeeds (asserted by run_playbook)
    for host in lab.nodes:
        names = lab.ssh(host, "docker ps -a --format '{{.Names}}'").stdout.split()
        assert CACHE not in names, (host, names)
        images = lab.ssh(host, "docker images --format '{{.Repository}}:{{.Tag}}'").stdout.split()
        assert "198.18.0.1:5000/ascend/vllm-ascend:v0.21.0rc1-a3" in images, (host, images)
