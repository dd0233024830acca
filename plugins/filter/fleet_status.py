"""Filters of the status report (``ascend_fleet.status`` and the module_utils the probe uses)."""

from __future__ import annotations

import sys

from ansible.errors import AnsibleError
from ansible_collections.ascend.fleet.plugins.module_utils.fleet_status import host_status

try:
    from ascend_fleet.status import fleet_report, status_table
except ImportError as exc:
    raise AnsibleError(
        f"the Python package ascend_fleet is not installed for {sys.executable} "
        "(the Python that runs Ansible): run scripts/setup.sh, or pip install -e . in the checkout"
    ) from exc


def status_unreachable(job: dict, error: str | None = None) -> dict:
    """The record of a host the probe could not reach (same shape as the probe's)."""
    return host_status(job, False, error or "unreachable")


def status_report(plan: dict, hostvars: dict, play_hosts: list) -> dict:
    statuses = {h: (hostvars.get(h) or {}).get("ops_status") for h in play_hosts}
    return fleet_report(plan, statuses, list(play_hosts))


class FilterModule:
    def filters(self):
        return {
            "fleet_status_unreachable": status_unreachable,
            "fleet_status_report": status_report,
            "fleet_status_table": status_table,
        }
