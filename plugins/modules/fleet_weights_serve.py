#!/usr/bin/python
"""Ansible module: serve a node's verified weights to its peers (or stop serving them)."""

from __future__ import annotations

from types import SimpleNamespace

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ascend.fleet.plugins.module_utils import fleet_weights as weights

DOCUMENTATION = r"""
module: fleet_weights_serve
short_description: Serve a node's verified weights read-only over HTTP for peer copies
description:
  - C(started) starts a background HTTP server (detached, its pid in I(pidfile)) serving only
    the files the completion marker of I(path) lists, never a symlink nor anything else, and
    stopping by itself after I(max_seconds). Fails, saying so, when there is no marker or it
    cannot bind I(bind):I(port) (set weights_peer_port).
  - C(stopped) stops the server of I(pidfile) (nothing to do when none runs).
  - The peers fetch with M(ascend.fleet.fleet_weights) (state=copied), which checks every file
    against the hub, not against this server.
  - In check mode nothing is started or stopped.
options:
  state: {description: Serve or stop serving., type: str, choices: [started, stopped], default: started}
  path: {description: Model directory with the completion marker (started)., type: path}
  bind: {description: Address to listen on (started)., type: str}
  port: {description: Port to listen on (started)., type: int}
  pidfile: {description: The server's pid file., type: path, required: true}
  max_seconds: {description: The server stops by itself after this many seconds., type: int, default: 3600}
author: ascend-fleet maintainers
"""

EXAMPLES = r"""
- name: Serve the verified weights to the peers
  ascend.fleet.fleet_weights_serve:
    path: /root/.cache/modelscope/hub/models/owner/model
    bind: 10.0.0.11
    port: 18090
    pidfile: /run/ascend-fleet-weights-serve.pid

- name: Stop serving them
  ascend.fleet.fleet_weights_serve:
    state: stopped
    pidfile: /run/ascend-fleet-weights-serve.pid
"""

RETURN = r"""
status: {description: "serving, stopped, not-running, no-marker, bind-failed, error.", returned: always, type: str}
url: {description: Where the files are served., returned: state=started, type: str}
pid: {description: Pid of the server stopped., returned: when stopped, type: int}
"""

ARGUMENT_SPEC = {
    "state": {"type": "str", "choices": ["started", "stopped"], "default": "started"},
    "path": {"type": "path"},
    "bind": {"type": "str"},
    "port": {"type": "int"},
    "pidfile": {"type": "path", "required": True},
    "max_seconds": {"type": "int", "default": 3600},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=[("state", "started", ["path", "bind", "port"])],
                           supports_check_mode=True)
    p = module.params
    a = SimpleNamespace(dir=p["path"], bind=p["bind"], port=p["port"], pidfile=p["pidfile"],
                        max_seconds=p["max_seconds"])
    if module.check_mode:
        module.exit_json(changed=True, status="would-serve" if p["state"] == "started" else "would-stop")
    rc, info = weights.run("serve" if p["state"] == "started" else "stop", a)
    if rc != 0:
        module.fail_json(msg=info.get("error") or info.get("status", "failed"), **info)
    module.exit_json(changed=info["status"] in ("serving", "stopped"), **info)


if __name__ == "__main__":
    main()
