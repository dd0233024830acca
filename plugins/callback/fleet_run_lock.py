"""Callback ``fleet_run_lock``: the run's record for the run lock, and its release.

When a run starts, puts this run's record (run id, user, controller host,
ansible-playbook pid, start time, playbooks) in the environment, where the
``fleet_run_lock`` action plugin reads it to take the lock. When the run ends (at the
stats, or at exit when it was interrupted) and the lock is still held by it (a run that
failed before its last play), releases it with an ad-hoc ``ansible`` call on the lock node,
with the same inventories and connection options: a failed run leaves no lock.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from ansible import context
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: fleet_run_lock
type: aggregate
short_description: Record the run for the ascend-fleet run lock and release the lock at the end
description:
  - Sets the run record the fleet_run_lock action plugin writes into the lock file.
  - Releases the lock when the run ends without having released it (a failed run).
requirements:
  - enabled in ansible.cfg (callbacks_enabled)
"""

ENV = "ASCEND_FLEET_RUN"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fleet_run_lock"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        now = int(time.time())
        self.record = {
            "run": f"{socket.gethostname()}:{os.getpid()}:{now}",
            "user": getpass.getuser(),
            "controller": socket.gethostname(),
            "pid": os.getpid(),
            "since": now,
            "playbooks": [],
        }
        self.lock = None  # {node, path, run, state} of the last lock task of this run
        os.environ[ENV] = json.dumps(self.record)
        atexit.register(self.release)

    def v2_playbook_on_start(self, playbook):
        name = getattr(playbook, "_file_name", None)
        if name:
            with contextlib.suppress(ValueError):
                name = os.path.relpath(name)
            self.record["playbooks"].append(name)
            os.environ[ENV] = json.dumps(self.record)

    def _track(self, result):
        info = result._result.get("fleet_run_lock") if isinstance(result._result, dict) else None
        if isinstance(info, dict) and info.get("run") == self.record["run"]:
            self.lock = info

    def v2_runner_on_ok(self, result):
        self._track(result)

    def v2_playbook_on_stats(self, stats):
        self.release()

    def release(self):
        lock, self.lock = self.lock, None
        if not lock or lock.get("state") != "held":
            return
        args = context.CLIARGS
        ansible = Path(sys.argv[0]).with_name("ansible")
        cmd = [str(ansible) if ansible.exists() else (shutil.which("ansible") or "ansible"), lock["node"]]
        for source in args.get("inventory") or ():
            cmd += ["-i", source]
        for extra in args.get("extra_vars") or ():
            cmd += ["-e", extra]
        for opt, flag in (
            ("private_key_file", "--private-key"),
            ("remote_user", "-u"),
            ("connection", "-c"),
            ("timeout", "-T"),
            ("ssh_common_args", "--ssh-common-args"),
        ):
            if args.get(opt):
                cmd += [f"{flag}={args[opt]}"]
        cmd += [
            "-m",
            "fleet_run_lock",
            "-a",
            json.dumps({"path": lock["path"], "state": "absent", "node": lock["node"], "run": lock["run"]}),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._display.warning(
                f"run lock {lock['path']} on {lock['node']} NOT released ({exc}): "
                "the next run from this controller breaks it (this run is gone)"
            )
            return
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            self._display.warning(
                f"run lock {lock['path']} on {lock['node']} NOT released: {' '.join(tail)}; "
                "the next run from this controller breaks it (this run is gone)"
            )
        else:
            self._display.display(f"run lock {lock['path']} on {lock['node']} released")
