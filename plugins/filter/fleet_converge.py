"""Filter of the converge role (``ascend_fleet.converge``)."""

from __future__ import annotations

import sys

from ansible.errors import AnsibleFilterError

try:
    from ascend_fleet.converge import verdict
except ImportError as exc:
    raise AnsibleFilterError(
        f"the Python package ascend_fleet is not installed for {sys.executable} "
        "(the Python that runs Ansible): run scripts/setup.sh, or pip install -e . in the checkout"
    ) from exc


def fleet_converge_verdict(probes):
    """{converged, hosts, reasons} of the fleet from every host's probe result (host -> result)."""
    return verdict(dict(probes))


class FilterModule:
    def filters(self):
        return {"fleet_converge_verdict": fleet_converge_verdict}
