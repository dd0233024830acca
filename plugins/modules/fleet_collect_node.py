#!/usr/bin/python
"""Ansible module: one node's logs and diagnostics in one tarball (read-only towards the service)."""

from __future__ import annotations

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ascend.fleet.plugins.module_utils.fleet_collect import collect

DOCUMENTATION = r"""
module: fleet_collect_node
short_description: Collect a node's container logs, rendered files, npu-smi and hccn_tool output
description:
  - Writes, into the scratch directory C(out), C(docker ps -a), the logs and state of each
    container named, a copy of the rendered files directory, C(npu-smi info), every
    C(hccn_tool) query of every device and a manifest of every command run (exit code,
    seconds, output file), then packs it with the CANN/HCCL logs of C(ascend_log_dir) into
    the gzipped tarball C(archive), one file to fetch.
  - Read-only towards the service; an absent container or directory is recorded as such and
    nothing fails the collection.
options:
  out: {type: path, required: true, description: Scratch directory to collect into (created).}
  archive: {type: path, required: true, description: Gzipped tarball to write.}
  containers: {type: list, elements: str, default: [], description: Containers whose logs and state are collected.}
  files_dir: {type: path, required: true, description: The rendered files directory of the node.}
  ascend_log_dir: {type: str, default: "", description: "The host directory that is the engine's ~/ascend ('' none)."}
  log_tail: {type: str, default: all, description: "Lines of each container log: all, or a number."}
  timeout: {type: int, default: 60, description: Seconds per command.}
  npu_smi: {type: str, default: /usr/local/bin/npu-smi, description: Path of npu-smi.}
  hccn_tool: {type: str, default: /usr/local/Ascend/driver/tools/hccn_tool, description: Path of hccn_tool.}
  devices: {type: int, default: 0, description: Number of NPU devices to query.}
  hccn_queries:
    type: list
    elements: list
    default: []
    description: "hccn_tool arguments per query, e.g. [[-link, -g]]."
author: ascend-fleet maintainers
"""

EXAMPLES = r"""
- name: Collect
  ascend.fleet.fleet_collect_node:
    out: /tmp/scratch/out
    archive: /tmp/scratch/collect.tar.gz
    containers: [vllm-ascend-dsv4]
    files_dir: /etc/ascend-fleet
    devices: 8
    hccn_queries: [[-link, -g], [-net_health, -g]]
"""

RETURN = r"""
containers: {description: container name -> running, stopped or absent, returned: always, type: dict}
commands: {description: number of commands run, returned: always, type: int}
failed: {description: how many of them failed (exit code not 0, timeout or not runnable), returned: always, type: int}
"""

ARGUMENT_SPEC = {
    "out": {"type": "path", "required": True},
    "archive": {"type": "path", "required": True},
    "containers": {"type": "list", "elements": "str", "default": []},
    "files_dir": {"type": "path", "required": True},
    "ascend_log_dir": {"type": "str", "default": ""},
    "log_tail": {"type": "str", "default": "all"},
    "timeout": {"type": "int", "default": 60},
    "npu_smi": {"type": "str", "default": "/usr/local/bin/npu-smi"},
    "hccn_tool": {"type": "str", "default": "/usr/local/Ascend/driver/tools/hccn_tool"},
    "devices": {"type": "int", "default": 0},
    "hccn_queries": {"type": "list", "elements": "list", "default": []},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = dict(module.params)
    out, archive = p.pop("out"), p.pop("archive")
    os.makedirs(out, exist_ok=True)
    # Only the scratch directory and the tarball are written: nothing of the node changes.
    module.exit_json(changed=False, **collect(p, out, archive))


if __name__ == "__main__":
    main()
