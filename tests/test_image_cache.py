"""The image role's cluster-local pull-through cache: its settings checked against the plan
(ascend_fleet.image_cache), the node trust check, and each host's image reference worked
out by the role on the controller (no host contacted)."""

from __future__ import annotations

import json

import pytest

from ascend_fleet.image_cache import CacheError, cache_repository, cache_settings, registry_trusted
from tests.conftest import run_playbook

PLAN = {
    "hosts": {
        "prefill-0": {"node_ip": "10.0.0.11", "bound_ports": [8000, 30000]},
        "decode-0": {"node_ip": "10.0.0.21", "bound_ports": [8100]},
    },
    "proxy_hosts": {"proxy-0": {"node_ip": "10.0.0.5", "bound_ports": [8080]}},
}
DEFAULTS = {
    "enabled": True, "mirror": "", "host": "", "port": 5000, "remote_url": "",
    "upstream_registry": "quay.io", "image": "registry:3",
    "data_dir": "/var/lib/ascend-fleet/image-cache", "container": "ascend-fleet-image-cache",
}


def settings(**changes):
    return cache_settings(PLAN, **{**DEFAULTS, **changes})


def test_default_cache_runs_on_the_first_node_and_proxies_the_upstream_registry():
    cache = settings()
    assert cache == {
        "enabled": True, "host": "prefill-0", "address": "10.0.0.11:5000",
        "remote_url": "https://quay.io", "image": "registry:3",
        "dir": "/var/lib/ascend-fleet/image-cache", "container": "ascend-fleet-image-cache",
    }
    assert cache_repository(cache, "quay.io/ascend/vllm-ascend", "quay.io") == "10.0.0.11:5000/ascend/vllm-ascend"
    # An image from another registry is not proxied by this cache: pulled as it is.
    assert cache_repository(cache, "docker.io/library/x", "quay.io") is None


def test_a_mirror_or_the_switch_turns_the_cache_off():
    assert settings(mirror="harbor.example/quay.io")["enabled"] is False
    assert settings(enabled=False)["enabled"] is False
    assert cache_repository(settings(enabled=False), "quay.io/ascend/vllm-ascend", "quay.io") is None


def test_chosen_host_port_and_remote():
    cache = settings(host="proxy-0", port="5050", remote_url="http://198.18.0.1:5002/")
    assert (cache["host"], cache["address"], cache["remote_url"]) == ("proxy-0", "10.0.0.5:5050", "http://198.18.0.1:5002")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"host": "node-9"},
         "image_cache_host='node-9' is not a node of this fleet (nodes: prefill-0, decode-0, proxy-0)"),
        ({"port": 0}, "image_cache_port=0: expected a TCP port number 1..65535"),
        ({"port": "5000; rm -rf /"}, "image_cache_port='5000; rm -rf /'"),
        ({"port": True}, "image_cache_port=True"),
        ({"port": 30000}, "image_cache_port=30000: prefill-0 already uses this port"),
        ({"remote_url": "quay.io"}, "image_cache_remote_url='quay.io': expected http(s)://HOST[:PORT]"),
        ({"remote_url": "https://user:pw@quay.io"}, "image_cache_remote_url="),
        ({"remote_url": "https://m.example/quay.io"}, "no path or credentials"),
        ({"upstream_registry": "quay.io/$(x)"}, "image_upstream_registry='quay.io/$(x)'"),
        ({"image": ""}, "image_cache_image='': expected an image reference"),
        ({"image": "registry:3 --privileged"}, "image_cache_image='registry:3 --privileged'"),
        ({"data_dir": "relative/dir"}, "image_cache_dir='relative/dir': expected an absolute directory on prefill-0"),
        ({"data_dir": "/var/../etc"}, "image_cache_dir='/var/../etc'"),
        ({"data_dir": "/"}, "image_cache_dir='/'"),
        ({"container": "a b"}, "image_cache_container='a b'"),
    ],
)
def test_wrong_values_are_named_with_what_to_do(change, named):
    with pytest.raises(CacheError) as err:
        settings(**change)
    assert named in str(err.value)


def test_registry_trust_from_docker_info():
    info = {
        "InsecureRegistryCIDRs": ["127.0.0.0/8", "198.18.0.0/20"],
        "IndexConfigs": {"10.0.0.11:5000": {"Name": "10.0.0.11:5000", "Secure": False},
                         "10.0.0.21:5000": {"Name": "10.0.0.21:5000", "Secure": True}},
    }
    assert registry_trusted(info, "10.0.0.11:5000")  # listed by address
    assert registry_trusted(info, "198.18.1.10:5000")  # inside an insecure CIDR
    assert registry_trusted({}, "127.0.0.1:5000")  # loopback: dockerd always trusts it
    assert not registry_trusted(info, "10.0.0.21:5000")
    assert not registry_trusted(info, "10.0.0.12:5000")
    assert not registry_trusted(None, "10.0.0.12:5000")
    assert not registry_trusted(info, "cache.example:5000")


def image_refs(*extra: str, check: bool = True):
    proc = run_playbook("tests/data/image_cache_ref.yml", "-i", "a2-4p4d", *extra, check=check,
                        env={"ANSIBLE_STDOUT_CALLBACK": "json", "ANSIBLE_CALLBACKS_ENABLED": "fleet_summary"})
    if not check:
        return proc
    out = json.loads(proc.stdout)
    task = next(t for p in out["plays"] for t in p["tasks"] if t["task"]["name"] == "Show them")
    return {h: r["msg"] for h, r in task["hosts"].items()}


def test_role_pulls_every_node_through_the_cache_on_the_first_node():
    refs = image_refs()
    assert len(refs) == 8
    first = refs["prefill-0"]["cache"]
    assert first["host"] == "prefill-0" and first["address"] == "198.51.100.11:5000"
    assert {r["ref"] for r in refs.values()} == {"198.51.100.11:5000/ascend/vllm-ascend:v0.21.0rc1"}


def test_role_cache_host_and_mirror_are_one_variable_each():
    refs = image_refs("-e", "image_cache_host=decode-2")
    assert {r["ref"] for r in refs.values()} == {"203.0.113.23:5000/ascend/vllm-ascend:v0.21.0rc1"}
    refs = image_refs("-e", "image_registry_mirror=harbor.example/quay.io")
    assert {r["ref"] for r in refs.values()} == {"harbor.example/quay.io/ascend/vllm-ascend:v0.21.0rc1"}
    assert all(r["cache"]["enabled"] is False for r in refs.values())
    refs = image_refs("-e", '{"image_cache_enabled": false}')
    assert {r["ref"] for r in refs.values()} == {"quay.io/ascend/vllm-ascend:v0.21.0rc1"}


def test_role_stops_on_a_wrong_cache_setting_naming_it():
    proc = image_refs("-e", "image_cache_remote_url=ftp://quay.io", check=False)
    assert proc.returncode != 0
    assert "prefill-0: image_cache_remote_url='ftp://quay.io': expected http(s)://HOST[:PORT]" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
