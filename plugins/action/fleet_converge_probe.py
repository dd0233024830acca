"""Action plugin ``fleet_converge_probe``: the module of the same name, plus the controller's part.

On the controller it computes the digest of the run's inputs (every deployment setting as
this host sees it, the whole plan and the toolkit's own code: ``ascend_fleet.converge``),
runs the module on the node once, and with ``state: observed`` returns ``reasons`` (why the
host is not converged; empty when it holds exactly the record of the last completed run and
every rank answers) and ``converged``. With ``state: recorded`` the module keeps the record.
The module's own options pass through; ``inputs`` is set here.
"""

from __future__ import annotations

from pathlib import Path

from ansible.plugins.action import ActionBase

# fleet_plan's import stops with a clear message when the ascend_fleet package is missing;
# the collection root is its REPO_ROOT.
from ansible_collections.ascend.fleet.plugins.action.fleet_plan import REPO_ROOT, role_defaults, role_option_types

import ascend_fleet
from ascend_fleet.converge import code_digest, decide, input_names, inputs_digest

_CODE: dict[str, str] = {}


def toolkit_digest() -> str:
    """The roles, playbooks, plugins and the ascend_fleet package, read once per run."""
    if "digest" not in _CODE:
        roots = [REPO_ROOT / name for name in ("roles", "playbooks", "plugins")]
        roots.append(Path(ascend_fleet.__file__).resolve().parent)
        _CODE["digest"] = code_digest([r for r in roots if r.exists()])
    return _CODE["digest"]


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def _value(self, name, raw):
        try:
            return self._templar.template(raw)
        except Exception:  # a value that needs facts of a later phase: its text is the input
            return raw

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        defaults = role_defaults()
        names = input_names(set(role_option_types()) | set(defaults), set(task_vars))
        values = {n: self._value(n, task_vars[n]) if n in task_vars else defaults.get(n) for n in names}
        inputs = inputs_digest(values, task_vars.get("fleet_plan") or {}, toolkit_digest())
        args = {**self._task.args, "inputs": inputs}
        result.update(self._execute_module(
            module_name="ascend.fleet.fleet_converge_probe", module_args=args, task_vars=task_vars))
        if args.get("state", "observed") == "observed":
            reasons = decide(task_vars.get("inventory_hostname", "?"), inputs, result)
            result["reasons"] = reasons
            result["converged"] = not reasons
        return result
