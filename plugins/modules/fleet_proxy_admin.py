#!/usr/bin/python
"""Ansible module: take instances out of the PD proxy, put them back, hold or release it."""

from __future__ import annotations

import urllib.error
from types import SimpleNamespace

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ascend.fleet.plugins.module_utils import fleet_proxy as proxy

DOCUMENTATION = r"""
module: fleet_proxy_admin
short_description: Drain, re-add, hold or release the PD proxy through its admin endpoints
description:
  - C(absent) takes I(instances) (host:port of one I(kind)) out of the proxy and waits until
    the proxy no longer lists them (it drops an instance once none of its requests is in
    flight), at most I(timeout_s).
  - C(present) puts them back and waits until the proxy lists them (it does once they answer
    C(/v1/models); asked again every 15 s), at most I(timeout_s).
  - C(held) waits until no request is in flight at the proxy, pauses the proxy container (new
    connections wait in the kernel's accept queue) and checks the engines' I(metrics) that
    none still runs a request (else releases and tries again). On a timeout the proxy is left
    serving, not paused.
  - C(released) unpauses the proxy container.
  - Fails on a timeout or a bad answer from the proxy, saying which; the progress lines are
    in C(progress) either way.
  - In check mode, says whether anything would change without asking the proxy to.
options:
  state: {description: Where the instances or the proxy should be.,
      type: str, choices: [absent, present, held, released], required: true}
  url: {description: "The proxy's URL, http://HOST:PORT (absent, present and held).", type: str}
  kind: {description: Instance type (absent and present)., type: str, choices: [prefill, decode]}
  instances: {description: Instances (host:port) to take out or put back., type: list, elements: str, default: []}
  container: {description: The proxy container (held and released)., type: str}
  metrics: {description: The /metrics URLs of the engines behind the proxy (held).,
      type: list, elements: str, default: []}
  timeout_s: {description: Seconds to wait at most., type: float, default: 300}
author: ascend-fleet maintainers
"""

EXAMPLES = r"""
- name: Take the decode instance out of the proxy and wait until its requests finished
  ascend.fleet.fleet_proxy_admin:
    state: absent
    url: http://10.0.0.1:8000
    kind: decode
    instances: [10.0.0.21:7100, 10.0.0.21:7101]
    timeout_s: 300
"""

RETURN = r"""
progress: {description: The progress lines (time and what happened)., returned: always, type: list}
msg: {description: The last progress line (what was reached, or what failed)., returned: always, type: str}
"""

ARGUMENT_SPEC = {
    "state": {"type": "str", "choices": ["absent", "present", "held", "released"], "required": True},
    "url": {"type": "str"},
    "kind": {"type": "str", "choices": ["prefill", "decode"]},
    "instances": {"type": "list", "elements": "str", "default": []},
    "container": {"type": "str"},
    "metrics": {"type": "list", "elements": "str", "default": []},
    "timeout_s": {"type": "float", "default": 300},
}

REQUIRED_IF = [
    ("state", "absent", ["url", "kind", "instances"]),
    ("state", "present", ["url", "kind", "instances"]),
    ("state", "held", ["url", "container"]),
    ("state", "released", ["container"]),
]


def would_change(state: str, a: SimpleNamespace) -> bool:
    if state == "absent":
        return bool(set(a.instances) & set(proxy.listed(a.url, a.type)))
    if state == "present":
        return bool(set(a.instances) - set(proxy.listed(a.url, a.type)))
    return proxy.paused(a.container) == (state == "released")


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    p = module.params
    state = p["state"]
    a = SimpleNamespace(url=p["url"], type=p["kind"], instances=p["instances"], container=p["container"],
                        metrics=p["metrics"], timeout=p["timeout_s"])
    if state in ("absent", "present") and not a.instances:
        module.fail_json(msg=f"fleet_proxy_admin: state={state} needs at least one instance (host:port)")
    try:
        changed = would_change(state, a)
        if module.check_mode:
            module.exit_json(changed=changed, progress=[], msg=f"check mode: would change: {changed}")
        run = {"absent": proxy.remove, "present": proxy.add, "held": proxy.hold, "released": proxy.release}[state]
        rc = run(a)
    except (urllib.error.URLError, OSError, ValueError, KeyError, RuntimeError) as exc:
        proxy.say(f"ERROR: {type(exc).__name__}: {exc}")
        rc = 2
    lines = proxy.say.lines
    msg = lines[-1].split("] ", 1)[-1] if lines else ""  # the last line, without its time
    if rc != 0:
        module.fail_json(msg=msg, progress=lines)
    module.exit_json(changed=changed or state == "held", progress=lines, msg=msg)


if __name__ == "__main__":
    main()
