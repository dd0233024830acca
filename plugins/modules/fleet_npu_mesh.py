#!/usr/bin/python
"""Ansible module: NPU network health of every device and the peer probes given (read only)."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ascend.fleet.plugins.module_utils.fleet_node import mesh_probe

DOCUMENTATION = r"""
module: fleet_npu_mesh
short_description: Probe this node's NPU network (hccn_tool net health and peer pings)
description:
  - Reads C(hccn_tool -i N -net_health -g) of every device and runs every peer probe
    (C(-ping) over RoCE, C(-hccs_ping) inside an A3 super pod) at once; hccn_tool answers
    "busy" while a device is in use, which is retried. A mesh of any size costs about one
    probe round on each node.
  - Changes nothing; runs in check mode. The verdict is made on the controller.
options:
  devices: {type: list, elements: int, required: true, description: Logical device ids of this node.}
  probes:
    type: list
    elements: dict
    default: []
    description: "Peer probes: {device, peer, peer_device, address, method: ping | hccs_ping}."
  packets: {type: int, default: 3, description: Packets per ping.}
author: ascend-fleet maintainers
"""

EXAMPLES = r"""
- name: Probe every device and every peer
  ascend.fleet.fleet_npu_mesh:
    devices: [0, 1, 2, 3, 4, 5, 6, 7]
    probes:
      - {device: 0, peer: decode-0, peer_device: 0, address: 10.20.0.21, method: ping}
  register: mesh
"""

RETURN = r"""
health: {description: device id -> net health status (Success when healthy), returned: always, type: dict}
probes: {description: each probe with ok and summary (packets line or last output line), returned: always, type: list}
"""

ARGUMENT_SPEC = {
    "devices": {"type": "list", "elements": "int", "required": True},
    "probes": {"type": "list", "elements": "dict", "default": []},
    "packets": {"type": "int", "default": 3},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    module.exit_json(changed=False, **mesh_probe(p["devices"], p["probes"], p["packets"]))


if __name__ == "__main__":
    main()
