#!/usr/bin/python
"""Ansible module: the model weights of a node - check, download once, verify, copy."""

from __future__ import annotations

from types import SimpleNamespace

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ascend.fleet.plugins.module_utils import fleet_weights as weights

DOCUMENTATION = r"""
module: fleet_weights
short_description: Check, download once under a lock, verify or copy model weights on a node
description:
  - C(checked) reads the completion marker (.ascend-fleet-complete.json) the module writes
    once every file matches the hub; complete when it names this model and revision and every
    file it lists has its recorded size. Cheap (no hashing); never fails; changes nothing.
  - C(lock_status) tells whether the weights lock of the cache is free, naming its holder (pid,
    host, model, since) while another download holds it. Never fails; changes nothing.
  - C(present) takes the weights lock (waiting at most I(lock_wait_s), then failing with the
    holder named), does nothing when the marker is valid, otherwise checks the hub's listing
    (a bad token, a missing model or a path leaving I(path) is said before anything runs),
    runs I(download_command) and verifies every file's size and sha256 against the hub,
    retrying up to I(retries) times. C(@SECRETS_DIR@) in the command is replaced by a private
    directory (mode 0700) in the node's temporary directory holding the file C(token)
    (mode 0600) when a I(token) is given; it is removed afterwards, also on failure or when
    the task is interrupted.
  - C(verified) checks every file against the hub's listing (size, sha256), deletes those that
    do not match and writes the marker when all do.
  - C(copied) fetches the files the hub lists from a peer serving its verified weights
    (I(source), see M(ascend.fleet.fleet_weights_serve)), each checked against the hub's size
    and sha256, never the peer's own claim; a file that does not match is not kept.
  - The token is never on a command line, in an environment or in the result (every result
    and message is redacted).
  - Check mode runs C(checked) and C(lock_status) as usual and says, for the others, whether
    anything would be downloaded, deleted or copied without doing it.
options:
  state:
    description: What to do (see the description).
    type: str
    choices: [checked, lock_status, present, verified, copied]
    default: checked
  path: {description: Model directory (weights_local_dir)., type: path}
  model: {description: Hub model id (owner/name)., type: str}
  revision: {description: Hub revision., type: str, default: master}
  endpoint: {description: Hub URL (ModelScope API)., type: str}
  token: {description: Hub token (empty for none)., type: str, default: "", no_log: true}
  lock: {description: The weights lock file of the cache (present and lock_status)., type: path}
  lock_wait_s: {description: Seconds to wait for a lock another download holds., type: int, default: 7200}
  retries: {description: Download attempts., type: int, default: 3}
  download_command:
    description: The download command (argv) for C(present); C(@SECRETS_DIR@) stands for the token's directory.
    type: list
    elements: str
  source: {description: "URL of the peer serving its weights (C(copied)), http://HOST:PORT.", type: str}
author: ascend-fleet maintainers
"""

EXAMPLES = r"""
- name: Look for complete weights
  ascend.fleet.fleet_weights:
    path: /root/.cache/modelscope/hub/models/owner/model
    model: owner/model
  register: weights_check

- name: Download once, under the lock, and verify
  ascend.fleet.fleet_weights:
    state: present
    path: /root/.cache/modelscope/hub/models/owner/model
    model: owner/model
    endpoint: https://www.modelscope.cn
    token: "{{ weights_token }}"
    lock: /root/.cache/.ascend-fleet-weights.lock
    download_command: [modelscope, download, owner/model, --local-dir, /root/.cache/modelscope/hub/models/owner/model]
"""

RETURN = r"""
status:
  description: "complete, absent, changed, free, held, incomplete, refused, hub-error, failed, lock-timeout,
    mismatch, peer-error, write-failed, would-download, would-copy or error."
  returned: always
  type: str
complete: {description: The weights are complete (marker valid; after present/verified/copied, verified).,
    returned: always, type: bool}
free: {description: The weights lock is free (lock_status)., returned: state=lock_status, type: bool}
holder: {description: "What the lock's holder wrote into it: pid, host, model, since.", returned: when held, type: dict}
error: {description: What failed or holds the lock, the token redacted., returned: on failure, type: str}
attempts: {description: "Each download attempt: download_rc, the last output lines, the verification.",
    returned: state=present, type: list}
fetched: {description: Files copied from the peer., returned: state=copied, type: int}
files: {description: Files verified., returned: when complete, type: int}
missing: {description: Files the hub lists that are not there., returned: when incomplete, type: list}
removed_corrupt: {description: Files deleted because their size or sha256 did not match.,
    returned: when incomplete, type: list}
progress: {description: Lines said while waiting for the lock., returned: state=present, type: list}
"""

ARGUMENT_SPEC = {
    "state": {"type": "str", "choices": ["checked", "lock_status", "present", "verified", "copied"],
              "default": "checked"},
    "path": {"type": "path"},
    "model": {"type": "str"},
    "revision": {"type": "str", "default": "master"},
    "endpoint": {"type": "str"},
    "token": {"type": "str", "default": "", "no_log": True},
    "lock": {"type": "path"},
    "lock_wait_s": {"type": "int", "default": 7200},
    "retries": {"type": "int", "default": 3},
    "download_command": {"type": "list", "elements": "str"},
    "source": {"type": "str"},
}

REQUIRED_IF = [
    ("state", "checked", ["path", "model"]),
    ("state", "lock_status", ["lock"]),
    ("state", "present", ["path", "model", "endpoint", "lock", "download_command"]),
    ("state", "verified", ["path", "model", "endpoint"]),
    ("state", "copied", ["path", "model", "endpoint", "source"]),
]


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    p = module.params
    state, token = p["state"], p["token"]
    progress: list[str] = []
    a = SimpleNamespace(dir=p["path"], model=p["model"], revision=p["revision"], endpoint=p["endpoint"],
                        lock=p["lock"], lock_wait=p["lock_wait_s"], retries=max(1, p["retries"]),
                        command=p["download_command"] or [], source=p["source"], say=progress.append)

    if state == "lock_status":
        rc, info = weights.run("lock-status", a)
        module.exit_json(changed=False, free=rc == 0, complete=False, **info)

    rc, info = weights.run("check", a)
    complete = rc == 0
    if state == "checked":
        module.exit_json(changed=False, complete=complete, **info)
    if module.check_mode:
        if state == "verified":
            a.dry = True  # says what it would delete, deletes nothing
            rc, info = weights.run("verify", a, token)
            module.exit_json(changed=bool(info.get("removed_corrupt") or info.get("marker_written")),
                             complete=rc == 0, **info)
        would = "would-download" if state == "present" else "would-copy"
        module.exit_json(changed=not complete, complete=complete, status="complete" if complete else would)

    if state == "present":
        weights.clean_up_on_signals()
        rc, info = weights.run("ensure", a, token)
        info.setdefault("changed", False)
        info["progress"] = weights.redact(progress)
    elif state == "verified":
        rc, info = weights.run("verify", a, token)
        info["changed"] = bool(info.get("removed_corrupt") or info.pop("marker_written", False))
    else:
        rc, info = weights.run("fetch", a, token)
        info["changed"] = info.get("fetched", 0) > 0
    info["complete"] = rc == 0
    if rc != 0:
        module.fail_json(msg=info.get("error") or info.get("status", "failed"), **info)
    module.exit_json(**info)


if __name__ == "__main__":
    main()
