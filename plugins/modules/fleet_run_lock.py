#!/usr/bin/python
"""Module ``fleet_run_lock``: the run lock file on the fleet's first node.

The lock is a file holding its run's JSON (run id, user, controller, pid, playbooks),
created atomically (written aside, then hard-linked into place: the link fails when the
file exists). The ``fleet_run_lock`` action plugin of the same name decides, on the
controller, whether a lock held by another run is stale; this module only reads, takes
and removes the file.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: fleet_run_lock
short_description: Take, show or release the ascend-fleet run lock on a node
description:
  - Creates the lock file atomically with the run's holder record, or reports the record
    of the run that holds it and the age of the lock.
  - Removes it only for the run that holds it.
options:
  path: {description: Lock file., type: path, required: true}
  state:
    description: held takes the lock, absent releases it, show only reads it.
    type: str
    choices: [held, absent, show]
    default: held
  holder: {description: This run's record (run, user, controller, pid, since, playbooks)., type: dict}
  run: {description: The run id releasing the lock (state=absent)., type: str}
  takeover_from: {description: Replace the lock only while it is held by this run id (a stale one)., type: str}
author: ascend-fleet
"""


def read(path):
    """(record, age in seconds by this node's clock) or (None, None) when there is no lock."""
    try:
        with open(path, encoding="utf-8") as fh:
            st = os.fstat(fh.fileno())
            text = fh.read()
    except FileNotFoundError:
        return None, None
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        record = {"run": "?", "unreadable": text[:200]}
    return record, max(0, int(time.time() - st.st_mtime))


def write_aside(path, holder):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".run-lock-")
    with os.fdopen(fd, "w") as fh:
        json.dump(holder, fh, sort_keys=True)
    os.chmod(tmp, 0o644)
    return tmp


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "state": {"type": "str", "choices": ["held", "absent", "show"], "default": "held"},
            "holder": {"type": "dict"},
            "run": {"type": "str"},
            "takeover_from": {"type": "str"},
        },
        supports_check_mode=True,
    )
    path, state = module.params["path"], module.params["state"]
    record, age = read(path)
    if state == "show":
        module.exit_json(changed=False, holder=record, age_s=age)
    if state == "absent":
        run = module.params["run"]
        if record is None or record.get("run") != run:
            module.exit_json(changed=False, holder=record, age_s=age, released=False)
        os.remove(path)
        module.exit_json(changed=True, released=True)
    holder = module.params["holder"] or {}
    if not holder.get("run"):
        module.fail_json(msg="fleet_run_lock: holder.run is required to take the lock")
    if record is not None and record.get("run") == holder["run"]:
        module.exit_json(changed=False, held=True, holder=record, age_s=age)
    takeover = module.params["takeover_from"]
    if record is not None and (not takeover or record.get("run") != takeover):
        module.exit_json(changed=False, held=False, holder=record, age_s=age)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = write_aside(path, holder)
    try:
        if record is None:
            try:
                os.link(tmp, path)  # atomic: fails when another run created it first
            except FileExistsError:
                record, age = read(path)
                module.exit_json(changed=False, held=False, holder=record, age_s=age)
        else:
            os.replace(tmp, path)  # the stale holder's record is replaced as a whole
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    module.exit_json(changed=True, held=True, holder=holder, replaced=record)


if __name__ == "__main__":
    main()
