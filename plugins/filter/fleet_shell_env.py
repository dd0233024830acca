"""Filter ``fleet_bashrc_lines``: the image's ~/.bashrc lines the engine start applies."""

from __future__ import annotations

import sys

from ansible.errors import AnsibleError

try:
    from ascend_fleet.shellenv import bashrc_lines
except ImportError as exc:
    raise AnsibleError(
        f"the Python package ascend_fleet is not installed for {sys.executable} "
        "(the Python that runs Ansible): run scripts/setup.sh, or pip install -e . in the checkout"
    ) from exc


class FilterModule:
    def filters(self):
        return {"fleet_bashrc_lines": bashrc_lines}
