"""Filters: views of the plan for people, and the node checks of ``ascend_fleet.checks``."""

from __future__ import annotations

import os
import sys

from ansible.errors import AnsibleError

try:
    from ascend_fleet import checks
    from ascend_fleet.planview import plan_svg, plan_table
except ImportError as exc:
    raise AnsibleError(
        f"the Python package ascend_fleet is not installed for {sys.executable} "
        "(the Python that runs Ansible): run scripts/setup.sh, or pip install -e . in the checkout"
    ) from exc


def abspath(path: str) -> str:
    """A controller path made absolute against the directory ansible-playbook runs in."""
    return os.path.abspath(os.path.expanduser(str(path)))


class FilterModule:
    def filters(self):
        return {
            "fleet_abspath": abspath,
            "fleet_plan_table": plan_table,
            "fleet_plan_svg": plan_svg,
            "fleet_preflight_problems": checks.preflight_problems,
            "fleet_tls_problems": checks.tls_problems,
            "fleet_superpod_problems": checks.superpod_problems,
            "fleet_mesh_targets": checks.mesh_targets,
            "fleet_link_problems": checks.link_problems,
            "fleet_probe_problems": checks.probe_problems,
            "fleet_failure_table": checks.failure_table,
        }
