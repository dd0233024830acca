#!/usr/bin/python
"""Ansible module: wait until the ranks of a node (or a list of URLs) are healthy."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ascend.fleet.plugins.module_utils.fleet_wait import summary, wait_urls, watch

DOCUMENTATION = r"""
module: fleet_wait_healthy
short_description: Wait for every rank of a node to answer /health, watching the whole instance
description:
  - With I(spec) (the node, its ranks and the other nodes of its instance, from the
    C(ascend.fleet.fleet_watch_spec) filter), watches for at most I(round_s) seconds and
    returns C(state) C(healthy) (every rank of this node answers C(/health)), C(starting)
    (nothing dead yet - repeat the task with C(until)), C(dead) (a rank process exited or never
    started within I(grace_s), the container stopped, a rank of another node stopped listening,
    or another node does not answer for I(lost_s)) or C(timeout) (I(timeout_s) since the
    container started). What it saw is kept in I(state_file), reset when the container is
    recreated or restarted.
  - With I(urls) and I(container) (the simple form, the proxy), waits until every URL answers
    200, at most I(timeout_s), ending early when the container stops.
  - Fails on C(dead) and C(timeout), with the report (dead, pending, container, started_at)
    in the result.
  - Only reads (the state file is its own record); runs in check mode, where the state file is
    not written.
options:
  spec: {description: "The watch spec: node, ip, container, ranks [{dp_rank, api_port}], peers.", type: dict}
  state_file: {description: Where what was seen is kept between rounds (with spec)., type: path}
  urls: {description: URLs that must answer 200 (the simple form)., type: list, elements: str}
  container: {description: Container whose stop ends the simple form's wait., type: str}
  timeout_s: {description: Seconds since the container started (simple form - since the call) before giving up.,
      type: float, required: true}
  round_s: {description: At most this many seconds per call (with spec)., type: float, default: 20}
  interval_s: {description: Seconds between two looks., type: float, default: 5}
  grace_s: {description: Seconds a rank process may take to appear after the start., type: float, default: 30}
  lost_s: {description: Seconds another node may stay silent before it counts as lost., type: float, default: 15}
author: ascend-fleet maintainers
"""

EXAMPLES = r"""
- name: Wait for /health on every rank of this node
  ascend.fleet.fleet_wait_healthy:
    spec: "{{ fleet_plan | ascend.fleet.fleet_watch_spec(inventory_hostname, 'vllm-ascend') }}"
    state_file: /run/ascend-fleet/wait-vllm-ascend.json
    timeout_s: 1800
    round_s: 20
  register: serve_wait
  until: serve_wait.state | default('') != 'starting'
  retries: 100
  delay: 1

- name: Wait for the proxy
  ascend.fleet.fleet_wait_healthy:
    container: vllm-pd-proxy
    urls: [http://10.0.0.1:8000/healthcheck]
    timeout_s: 300
    interval_s: 2
"""

RETURN = r"""
state: {description: "healthy, starting, dead or timeout.", returned: always, type: str}
node: {description: This node (with spec)., returned: with spec, type: str}
container: {description: "The container's state: running, missing, or exited (exit code N)...",
    returned: always, type: str}
healthy: {description: Ports (with spec) or URLs that answer., returned: always, type: list}
pending: {description: Ports or URLs that do not answer yet., returned: always, type: list}
dead: {description: "What is dead: node, dp_rank, api_port, what.", returned: with spec, type: list}
waited_s: {description: Seconds since the container started (simple form - since the call).,
    returned: always, type: float}
started_at: {description: When the container started (docker's StartedAt)., returned: with spec, type: str}
"""

ARGUMENT_SPEC = {
    "spec": {"type": "dict"},
    "state_file": {"type": "path"},
    "urls": {"type": "list", "elements": "str"},
    "container": {"type": "str"},
    "timeout_s": {"type": "float", "required": True},
    "round_s": {"type": "float", "default": 20},
    "interval_s": {"type": "float", "default": 5},
    "grace_s": {"type": "float", "default": 30},
    "lost_s": {"type": "float", "default": 15},
}


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_one_of=[("spec", "urls")],
        mutually_exclusive=[("spec", "urls")],
        required_together=[("spec", "state_file"), ("urls", "container")],
        supports_check_mode=True,
    )
    p = module.params
    if p["spec"] is not None:
        spec = p["spec"]
        missing = [k for k in ("node", "ip", "container", "ranks") if k not in spec]
        if missing:
            module.fail_json(msg=f"fleet_wait_healthy: spec lacks {', '.join(missing)} "
                                 "(give the ascend.fleet.fleet_watch_spec filter's output)")
        state, report = watch(spec, p["state_file"], p["timeout_s"], p["round_s"], p["interval_s"],
                              p["grace_s"], p["lost_s"], save=not module.check_mode)
    else:
        state, report = wait_urls(p["urls"], p["container"], p["timeout_s"], p["interval_s"])
    msg = summary(state, report, p["timeout_s"])
    if state in ("dead", "timeout"):
        module.fail_json(msg=msg, state=state, **report)
    module.exit_json(changed=False, msg=msg, state=state, **report)


if __name__ == "__main__":
    main()
