"""The cluster-local pull-through image cache (roles/image, ``image_cache_*``).

One node of the fleet runs a CNCF Distribution registry in proxy mode; every node pulls the
engine image through it, so the upstream registry sends the image once per cluster instead
of once per node. This module checks the role's variables against the plan and works out
where the cache runs and what it proxies; ``registry_trusted`` reads a node's ``docker info``
to tell whether its Docker Engine will talk plain HTTP to the cache.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

#: A registry host[:port] (name, IPv4 or bracketed IPv6).
_REGISTRY = r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
_REMOTE_URL = re.compile(rf"https?://({_REGISTRY})/?")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*")
_PATH = re.compile(r"/[A-Za-z0-9._/+-]*")


class CacheError(ValueError):
    """A wrong image_cache_* value; the message names the variable, value and what to do."""


def _nodes(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {**(plan.get("hosts") or {}), **(plan.get("proxy_hosts") or {})}


def cache_settings(
    plan: dict[str, Any],
    *,
    enabled: bool,
    mirror: str,
    host: str,
    port: Any,
    remote_url: str,
    upstream_registry: str,
    image: str,
    data_dir: str,
    container: str,
) -> dict[str, Any]:
    """Where the cache runs and what it proxies, or CacheError.

    In use when ``enabled`` and no ``mirror`` is set (the operator's own mirror or Harbor
    is the cluster's cache then: one variable). ``host`` empty: the plan's first node.
    """
    if not enabled or mirror:
        reason = "image_registry_mirror is set" if enabled else "image_cache_enabled is false"
        return {"enabled": False, "reason": reason}
    nodes = _nodes(plan)
    if not nodes:
        raise CacheError("image_cache_enabled: the plan has no node to run the image cache on")
    name = host or next(iter(plan.get("hosts") or nodes))
    if name not in nodes:
        raise CacheError(
            f"image_cache_host={name!r} is not a node of this fleet (nodes: {', '.join(nodes)}). "
            "Set image_cache_host to one of them, or image_cache_enabled: false."
        )
    try:
        number = int(port)
        if isinstance(port, bool) or str(port).strip() != str(number) or not 1 <= number <= 65535:
            raise ValueError
    except (TypeError, ValueError):
        raise CacheError(f"image_cache_port={port!r}: expected a TCP port number 1..65535.") from None
    used = nodes[name].get("bound_ports") or []
    if number in used:
        raise CacheError(
            f"image_cache_port={number}: {name} already uses this port for the service "
            f"(its ports: {', '.join(map(str, sorted(used)))}). Choose another image_cache_port."
        )
    if not re.fullmatch(_REGISTRY, str(upstream_registry or "")):
        raise CacheError(
            f"image_upstream_registry={upstream_registry!r}: expected a registry host[:port] such as quay.io."
        )
    url = str(remote_url or f"https://{upstream_registry}")
    if not _REMOTE_URL.fullmatch(url):
        raise CacheError(
            f"image_cache_remote_url={remote_url!r}: expected http(s)://HOST[:PORT] of a registry, with "
            "no path or credentials (the cache proxies the whole registry; credentials go in "
            "image_registry_username/password)."
        )
    if not _IMAGE.fullmatch(str(image or "")):
        raise CacheError(
            f"image_cache_image={image!r}: expected an image reference such as registry:3 "
            "(a CNCF Distribution registry image)."
        )
    if not _PATH.fullmatch(str(data_dir or "")) or "/../" in f"{data_dir}/" or data_dir.rstrip("/") == "":
        raise CacheError(
            f"image_cache_dir={data_dir!r}: expected an absolute directory on {name} for the cached "
            "layers (letters, digits, . _ - + /), such as /var/lib/ascend-fleet/image-cache."
        )
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(container or "")):
        raise CacheError(f"image_cache_container={container!r}: expected a container name ([A-Za-z0-9_.-]).")
    node_ip = str(nodes[name]["node_ip"])
    address = f"[{node_ip}]:{number}" if ":" in node_ip else f"{node_ip}:{number}"
    return {
        "enabled": True,
        "host": name,
        "address": address,
        "remote_url": url.rstrip("/"),
        "image": image,
        "dir": data_dir.rstrip("/"),
        "container": container,
    }


def cache_repository(cache: dict[str, Any], repository: str, upstream_registry: str) -> str | None:
    """The cache's name for an upstream repository (None when the cache does not proxy it)."""
    if not cache.get("enabled") or not repository.startswith(f"{upstream_registry}/"):
        return None
    return f"{cache['address']}/{repository[len(upstream_registry) + 1 :]}"


def registry_trusted(registry_config: dict[str, Any] | None, address: str) -> bool:
    """Whether a Docker Engine (its ``docker info`` RegistryConfig) pulls from a plain-HTTP
    registry at address ``HOST:PORT``: listed as insecure, inside an insecure CIDR, or on
    loopback (which dockerd always trusts)."""
    config = registry_config or {}
    index = (config.get("IndexConfigs") or {}).get(address) or {}
    if index.get("Secure") is False:
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ip.is_loopback:
        return True
    for cidr in config.get("InsecureRegistryCIDRs") or []:
        try:
            if ip in ipaddress.ip_network(str(cidr), strict=False):
                return True
        except ValueError:
            continue
    return False
