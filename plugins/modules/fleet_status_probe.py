#!/usr/bin/python
"""Ansible module: one host's status in one call (read only)."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ascend.fleet.plugins.module_utils.fleet_status import probe

DOCUMENTATION = r"""
module: fleet_status_probe
short_description: Probe one host of the fleet - containers, ranks, proxy and ports
description:
  - Reads, all at once, the state of our engine and proxy containers (docker container
    inspect), every rank's C(/health) (and C(/v1/models) with the API key, to check each rank
    accepts it), the proxy's C(/healthcheck) and the listening TCP ports, and returns the
    host's status record (the per-host part of the status.yml report).
  - The key is sent as C(Authorization) header only; it is never returned or logged.
  - Changes nothing; runs in check mode.
options:
  host: {type: str, required: true, description: Inventory name of the host.}
  role: {type: str, default: proxy, description: "prefill, decode, single, or proxy (a proxy-only host)."}
  instance: {type: str, description: Instance the host belongs to.}
  node_ip: {type: str, description: Address the ranks listen on.}
  engine_container: {type: str, description: Name of our engine container (omit when the host runs no engine).}
  proxy_container: {type: str, description: Name of our proxy container (omit when the host runs no proxy).}
  ranks: {type: list, elements: dict, default: [], description: "The host's ranks: {dp_rank, api_port, devices}."}
  proxy_url: {type: str, description: The proxy's /healthcheck URL.}
  planned_ports: {type: list, elements: int, default: [], description: Ports the plan binds on this host.}
  api_key: {type: str, default: "", no_log: true, description: The service's key (fleet_api_key), if any.}
  timeout: {type: float, default: 10, description: Seconds per HTTP request.}
author: ascend-fleet maintainers
"""

EXAMPLES = r"""
- name: Probe the host
  ascend.fleet.fleet_status_probe:
    host: decode-0
    role: decode
    instance: decode-0
    node_ip: 10.0.0.21
    engine_container: vllm-ascend-dsv4
    ranks: [{dp_rank: 0, api_port: 7100}]
    planned_ports: [7100]
  register: probe
"""

RETURN = r"""
status:
  description: "The host's record: reachable, engine, proxy (name, state, status, image), proxy_health,
    ranks (url, healthy, http_status, api_key_accepted), ports (planned, listening, missing)."
  returned: always
  type: dict
"""

ARGUMENT_SPEC = {
    "host": {"type": "str", "required": True},
    "role": {"type": "str", "default": "proxy"},
    "instance": {"type": "str"},
    "node_ip": {"type": "str"},
    "engine_container": {"type": "str"},
    "proxy_container": {"type": "str"},
    "ranks": {"type": "list", "elements": "dict", "default": []},
    "proxy_url": {"type": "str"},
    "planned_ports": {"type": "list", "elements": "int", "default": []},
    "api_key": {"type": "str", "default": "", "no_log": True},
    "timeout": {"type": "float", "default": 10},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = dict(module.params)
    api_key, timeout = p.pop("api_key"), p.pop("timeout")
    module.exit_json(changed=False, status=probe(p, api_key=api_key, timeout=timeout))


if __name__ == "__main__":
    main()
