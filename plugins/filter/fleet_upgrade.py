"""Filters of the upgrade and of the drained restart (``ascend_fleet.upgrade``)."""

from __future__ import annotations

import sys

from ansible.errors import AnsibleFilterError

try:
    from ascend_fleet.upgrade import UpgradeError, recipe_of_images, restart_steps, upgrade_steps
except ImportError as exc:
    raise AnsibleFilterError(
        f"the Python package ascend_fleet is not installed for {sys.executable} "
        "(the Python that runs Ansible): run scripts/setup.sh, or pip install -e . in the checkout"
    ) from exc


def _checked(fn):
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UpgradeError as exc:
            raise AnsibleFilterError(str(exc)) from exc

    return wrapper


class FilterModule:
    def filters(self):
        return {
            "fleet_upgrade_steps": _checked(upgrade_steps),
            "fleet_restart_steps": _checked(restart_steps),
            "fleet_recipe_of_images": recipe_of_images,
        }
