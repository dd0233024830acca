"""Filters for failing fast: the watch spec of the serve wait (``ascend_fleet.faults``)."""

from __future__ import annotations

import sys

from ansible.errors import AnsibleError

try:
    from ascend_fleet.faults import watch_spec
except ImportError as exc:
    raise AnsibleError(
        f"the Python package ascend_fleet is not installed for {sys.executable} "
        "(the Python that runs Ansible): run scripts/setup.sh, or pip install -e . in the checkout"
    ) from exc


class FilterModule:
    def filters(self):
        return {"fleet_watch_spec": watch_spec}
