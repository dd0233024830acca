#!/usr/bin/python
"""Ansible module: the NPU facts of an Atlas node (read only)."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ascend.fleet.plugins.module_utils.fleet_node import npu_facts

DOCUMENTATION = r"""
module: fleet_npu_facts
short_description: Read the NPUs of an Atlas node (npu-smi, hccn_tool, /etc/hccn.conf)
description:
  - Chip kind (a2/a3 from npu-smi), device count (/dev/davinciN), driver version
    (version.info), every device's configured address (/etc/hccn.conf) and the address
    hccn_tool reports, link state, TLS switch, on A3 the virtual NPU address, and the raw
    outputs the controller-side checks parse (npu-smi info, board, spod-info, lldp,
    netdetect, gateway), with the owner of every process npu-smi lists.
  - Never fails on what it cannot read; that is listed in C(problems) instead.
  - Changes nothing; runs in check mode.
options: {}
author: ascend-fleet maintainers
"""

EXAMPLES = r"""
- name: Read the NPU facts
  ascend.fleet.fleet_npu_facts:
  register: npu
"""

RETURN = r"""
npu:
  description: The facts (also what the facts.d script npu.fact prints).
  returned: always
  type: dict
  contains:
    present: {description: hccn_tool and npu-smi exist, type: bool}
    kind: {description: a2 or a3 (null if npu-smi cannot tell), type: str}
    device_count: {description: number of /dev/davinciN devices, type: int}
    devices: {description: per device id, conf_ip, ip, link, tls_switch, lldp, netdetect, gateway, type: list}
    problems: {description: what could not be read, type: list}
"""

ARGUMENT_SPEC: dict = {}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.exit_json(changed=False, npu=npu_facts())


if __name__ == "__main__":
    main()
