"""Action plugin ``fleet_run_lock``: one run at a time against a fleet.

Takes the lock file on the fleet's first node (the module of the same name creates it
atomically) for this run, whose record the ``fleet_run_lock`` callback put in the
environment when the run started (run id, user, controller host, ansible-playbook pid,
start time, playbooks). The same run taking it again is a no-op (site.yml imports several
playbooks that each take it).

Held by another run, the lock is:
- stale, and taken over with a warning, when that run's ansible-playbook is gone from
  this controller, or the lock is older than ``stale_after`` seconds;
- broken on request (``force``, from ``-e run_lock_break=true``), with a warning;
- otherwise refused at once, naming user, controller, pid, playbooks, since when, and how
  to break it.

Options: path, node (inventory name of the lock node, for the message and the release),
stale_after (seconds), force (bool), state (held or absent), run (the run id to release,
default this run's).
"""

from __future__ import annotations

import json
import os
import socket
import time

from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()
ENV = "ASCEND_FLEET_RUN"


def this_run() -> dict | None:
    try:
        record = json.loads(os.environ.get(ENV, ""))
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("run") else None


def pid_gone(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, TypeError):
        return False
    return False


def describe(holder: dict, age_s: int | None) -> str:
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if isinstance(since, int | float) else "?"
    playbooks = ", ".join(holder.get("playbooks") or []) or "?"
    age = f" ({age_s // 60} min {age_s % 60} s ago)" if age_s is not None else ""
    return (
        f"user {holder.get('user', '?')} on controller {holder.get('controller', '?')} "
        f"(pid {holder.get('pid', '?')}), running {playbooks}, since {when}{age}"
    )


def stale_reason(holder: dict, age_s: int | None, stale_after: int) -> str | None:
    if holder.get("controller") == socket.gethostname() and pid_gone(holder.get("pid")):
        return f"its ansible-playbook (pid {holder.get('pid')}) is no longer running on this controller"
    if age_s is not None and age_s > stale_after:
        return f"it is older than run_lock_stale_after_s ({stale_after} s)"
    return None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("path", "node", "stale_after", "force", "state", "run"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        path, node = args.get("path"), args.get("node", "?")
        state = args.get("state", "held")
        run = this_run()
        if state == "absent" and args.get("run"):
            run = {"run": args["run"]}  # the release by the callback, for the run that ended
        if run is None:
            raise AnsibleActionFail(
                f"no run record in {ENV}: the fleet_run_lock callback is not enabled "
                "(ansible.cfg: callbacks_enabled = fleet_run_lock, callback_plugins = plugins/callback)"
            )
        if state == "absent":
            out = self._execute_module(
                "fleet_run_lock", {"path": path, "state": "absent", "run": run["run"]}, task_vars=task_vars
            )
            result.update(
                changed=out.get("changed", False),
                fleet_run_lock={"state": "released", "node": node, "path": path, "run": run["run"]},
            )
            return result
        take = {"path": path, "state": "held", "holder": run}
        out = self._execute_module("fleet_run_lock", take, task_vars=task_vars)
        if out.get("failed"):
            raise AnsibleActionFail(f"{node}: cannot take the run lock {path}: {out.get('msg')}")
        if not out.get("held"):
            holder, age = out.get("holder") or {}, out.get("age_s")
            why = stale_reason(holder, age, int(args.get("stale_after", 86400)))
            if why is None and not boolean(args.get("force", False), strict=False):
                raise AnsibleActionFail(
                    f"another run holds the lock of this fleet: {describe(holder, age)}; lock file {path} "
                    f"on {node}. Wait for that run to end. If it is gone (its controller was switched off "
                    f"or lost the fleet), break the lock: -e run_lock_break=true (or remove {path} on "
                    f"{node}). A lock whose run ended on this controller, or older than "
                    f"run_lock_stale_after_s, is broken automatically."
                )
            reason = why or "run_lock_break=true"
            display.warning(f"{node}: breaking the run lock {path} ({reason}); it was held by {describe(holder, age)}")
            out = self._execute_module(
                "fleet_run_lock", {**take, "takeover_from": holder.get("run", "?")}, task_vars=task_vars
            )
            if not out.get("held"):
                holder = describe(out.get("holder") or {}, out.get("age_s"))
                raise AnsibleActionFail(
                    f"another run took the lock of this fleet first: {holder}; lock file {path} on {node}"
                )
        result.update(
            changed=out.get("changed", False),
            msg=f"run lock {path} on {node} held by this run: {describe(run, None)}",
            fleet_run_lock={"state": "held", "node": node, "path": path, "run": run["run"]},
        )
        return result
