#!/usr/bin/python
"""Ansible module: the node's whole state in one call, and the record of the last completed run."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ascend.fleet.plugins.module_utils.fleet_converge import observe, read_record, write_record

DOCUMENTATION = r"""
module: fleet_converge_probe
short_description: Read a node's state at once, and keep it as the record of a completed run
description:
  - Reads, all at once, our containers (state, start time, image), the checksums of the
    given files, whether the weights are complete (the weights role's completion marker),
    the NPU and fabric state (driver version, /etc/hccn.conf, each device's address and link,
    the chips' health in C(npu-smi info)) and the HTTP status of the given health URLs.
  - With I(state=observed) (read only, runs in check mode) it returns that and the record
    in I(state_file). With I(state=recorded) it writes the record (the observed state
    without the health, and I(inputs)), root only and atomically; changed when it differs.
  - Used through the action plugin of the same name, which computes I(inputs) on the
    controller and decides whether the fleet is already converged (ascend_fleet/converge.py).
options:
  state: {type: str, choices: [observed, recorded], default: observed, description: Read, or keep the record.}
  state_file: {type: path, required: true, description: The record's path on the node.}
  containers: {type: list, elements: str, default: [], description: Names of our containers on this node.}
  optional_containers:
    type: list
    elements: str
    default: []
    description: Containers that are part of the state only where they exist (the image cache).
  files: {type: list, elements: path, default: [], description: Files whose SHA-1 is kept (the launch files).}
  weights: {type: dict, description: "Complete weights to look for: {dir, model, revision}."}
  urls: {type: list, elements: str, default: [], description: Health URLs that must answer 200.}
  inputs: {type: str, default: "", description: Digest of the run's inputs (kept by state=recorded).}
  timeout: {type: float, default: 5, description: Seconds per health request.}
author: ascend-fleet maintainers
"""

EXAMPLES = r"""
- name: Probe the node
  ascend.fleet.fleet_converge_probe:
    state_file: /var/lib/ascend-fleet/converged.json
    containers: [vllm-ascend]
    files: [/etc/ascend-fleet/launch.sh, /etc/ascend-fleet/plan.json]
    weights: {dir: /root/.cache/model, model: Eco-Tech/DeepSeek-V4-Flash-w8a8-mtp, revision: master}
    urls: ["http://10.0.0.21:7100/health"]
  register: probe
"""

RETURN = r"""
observed: {description: "containers (name -> state, status, started_at, image), files (path -> sha1 or null),
  weights (complete), npu (driver_version, hccn_conf_sha1, health, devices)", returned: always, type: dict}
health: {description: URL -> HTTP status (-1 no answer), returned: always, type: dict}
record: {description: The record of the last completed run (null when there is none), returned: always, type: dict}
"""

ARGUMENT_SPEC = {
    "state": {"type": "str", "choices": ["observed", "recorded"], "default": "observed"},
    "state_file": {"type": "path", "required": True},
    "containers": {"type": "list", "elements": "str", "default": []},
    "optional_containers": {"type": "list", "elements": "str", "default": []},
    "files": {"type": "list", "elements": "path", "default": []},
    "weights": {"type": "dict"},
    "urls": {"type": "list", "elements": "str", "default": []},
    "inputs": {"type": "str", "default": ""},
    "timeout": {"type": "float", "default": 5},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    observed, health = observe(p["containers"], p["files"], p["weights"], p["urls"], p["timeout"],
                               p["optional_containers"])
    changed = False
    if p["state"] == "recorded":
        if not p["inputs"]:
            module.fail_json(msg="state=recorded needs inputs (the run's input digest)")
        changed = write_record(p["state_file"], p["inputs"], observed, check_mode=module.check_mode)
    module.exit_json(changed=changed, observed=observed, health=health, record=read_record(p["state_file"]))


if __name__ == "__main__":
    main()
