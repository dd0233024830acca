#!/usr/bin/python
"""Ansible module: what preflight needs to know of a node, in one call (read only)."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ascend.fleet.plugins.module_utils.fleet_node import node_probe

DOCUMENTATION = r"""
module: fleet_node_probe
short_description: Free space, weights and image in place, own containers and listening sockets
description:
  - C(disk) free bytes and filesystem id of the nearest existing directory of each path.
  - C(weights) whether the model directory holds complete weights (the weights role's
    completion marker naming this model and revision, every listed file at its recorded
    size) and how many bytes are already there (a partial download).
  - C(image) whether the engine image reference is present in the Docker Engine.
  - C(own) the ids of our engine and proxy containers, when they exist.
  - C(ss) listening TCP sockets (ss -Htlnp) and, in C(owners), each pid's command line and
    the container it runs in, so a port held by a stranger is named with its process.
  - The decisions are made on the controller (ascend_fleet/checks.py). Changes nothing;
    runs in check mode.
options:
  paths: {type: list, elements: path, required: true, description: Directories whose free space is read.}
  model_dir: {type: path, required: true, description: Directory of the model weights.}
  model: {type: str, required: true, description: Hub model id the completion marker must name.}
  revision: {type: str, required: true, description: Revision the completion marker must name.}
  image: {type: str, required: true, description: Engine image reference (tag or digest).}
  containers: {type: dict, default: {}, description: "Our containers by role, e.g. {engine: NAME, proxy: NAME}."}
author: ascend-fleet maintainers
"""

EXAMPLES = r"""
- name: Probe the node
  ascend.fleet.fleet_node_probe:
    paths: [/var/lib/docker, /root/.cache]
    model_dir: /root/.cache/modelscope/hub/models/vllm-ascend/DeepSeek-V4-Flash-w8a8-mtp
    model: Eco-Tech/DeepSeek-V4-Flash-w8a8-mtp
    revision: master
    image: quay.io/ascend/vllm-ascend:v0.21.0rc1
    containers: {engine: vllm-ascend-dsv4, proxy: vllm-ascend-proxy}
  register: probe
"""

RETURN = r"""
disk: {description: path -> free (bytes), fs (device id), probe (directory read), returned: always, type: dict}
weights: {description: present (complete) and have_bytes, returned: always, type: dict}
image: {description: present, returned: always, type: dict}
own: {description: role -> container id (empty when absent), returned: always, type: dict}
ss: {description: output of ss -Htlnp (empty if it failed), returned: always, type: str}
ss_error: {description: why ss failed, returned: always, type: str}
owners: {description: pid -> cmd and container, returned: always, type: dict}
"""

ARGUMENT_SPEC = {
    "paths": {"type": "list", "elements": "path", "required": True},
    "model_dir": {"type": "path", "required": True},
    "model": {"type": "str", "required": True},
    "revision": {"type": "str", "required": True},
    "image": {"type": "str", "required": True},
    "containers": {"type": "dict", "default": {}},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    result = node_probe(p["paths"], p["model_dir"], p["model"], p["revision"], p["image"], p["containers"])
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
