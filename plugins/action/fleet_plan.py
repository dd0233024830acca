"""Action plugin ``fleet_plan``: compute and validate the deployment plan on the controller.

Runs on the controller only and contacts no host: it reads the inventory (every host's
variables and the groups), hands them to the topology engine (``ascend_fleet.topology``)
and returns the plan, with every role's literal defaults (``defaults``). With errors it
fails, listing every one (host or group, value found, value expected, variable to change).
Warnings (risky tutorial values kept as defaults) are printed as Ansible warnings.

Options:
  mode: render (placeholder addresses allowed) or deploy (refused).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml
from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

try:
    from ascend_fleet.recipes import YAML_LOADER
    from ascend_fleet.topology import FLEET_VARS, build_plan
except ImportError as exc:
    raise AnsibleError(
        f"the Python package ascend_fleet is not installed for {sys.executable} "
        "(the Python that runs Ansible): run scripts/setup.sh, or pip install -e . in the checkout"
    ) from exc

# The collection root (the checkout, or ansible_collections/ascend/fleet when installed).
REPO_ROOT = Path(__file__).resolve().parents[2]

display = Display()


def collection_installed() -> bool:
    """Whether Ansible finds the ascend.fleet collection (installed, or this checkout linked)."""
    try:
        return importlib.util.find_spec("ansible_collections.ascend.fleet") is not None
    except ModuleNotFoundError:
        return False


def role_option_types() -> dict[str, str]:
    """Every documented role option (meta/argument_specs.yml) with its declared type."""
    types: dict[str, str] = {}
    for spec_file in sorted((REPO_ROOT / "roles").glob("*/meta/argument_specs.yml")):
        data = yaml.load(spec_file.read_text(), Loader=YAML_LOADER) or {}
        for entry in (data.get("argument_specs") or {}).values():
            for name, opt in (entry.get("options") or {}).items():
                kind = (opt or {}).get("type")
                if kind:
                    types.setdefault(name, kind)
    return types


def role_defaults() -> dict[str, object]:
    """Every role's literal defaults (defaults/main.yml values without Jinja), by variable name.

    The validate role shares them as ``fleet_defaults``, so a role that reads another role's
    setting (ops reading serve_container_name) falls back on the owner's own default, not on a
    copy of its value.
    """
    found: dict[str, object] = {}
    for defaults_file in sorted((REPO_ROOT / "roles").glob("*/defaults/main.yml")):
        data = yaml.load(defaults_file.read_text(), Loader=YAML_LOADER) or {}
        for name, value in data.items():
            if "{{" not in repr(value) and "{%" not in repr(value):
                found[name] = value
    return found


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("mode",))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        mode = self._task.args.get("mode", "deploy")
        if mode not in ("render", "deploy"):
            raise AnsibleActionFail(f"fleet_plan: mode must be render or deploy, got {mode!r}")
        if not collection_installed():
            # The roles call their filters as ascend.fleet.*: say so now, not mid-deployment.
            raise AnsibleActionFail(
                "the ascend.fleet collection is not installed for this Ansible: in a checkout run "
                "scripts/setup.sh (it links the checkout into the venv as the collection), or "
                "ansible-galaxy collection install <checkout or ascend-fleet tarball>"
            )
        hostvars = task_vars["hostvars"]
        groups = {name: list(hosts) for name, hosts in task_vars["groups"].items()}
        option_types = role_option_types()
        wanted = set(FLEET_VARS) | set(option_types) | {"ansible_host"}
        hosts = {}
        for host in groups.get("all", []):
            hv = hostvars[host]
            keys = [k for k in hv if k in wanted or k.startswith("fleet_")]
            hosts[host] = {k: hv[k] for k in keys}
        plan = build_plan(hosts, groups, mode=mode, option_types=option_types)
        for warning in plan["warnings"]:
            display.warning(f"fleet: {warning}")
        result["changed"] = False
        if not plan["errors"]:
            result["plan"] = plan
            result["defaults"] = role_defaults()
        else:
            result["failed"] = True
            result["msg"] = (
                f"inventory validation failed ({len(plan['errors'])} problem"
                f"{'s' if len(plan['errors']) != 1 else ''}); nothing was touched:\n- " + "\n- ".join(plan["errors"])
            )
        return result
