"""Filters: views of the plan for people, and the node checks of ``ascend_fleet.checks``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ascend_fleet import checks  # noqa: E402  (needs the sys.path line)
from ascend_fleet.planview import plan_svg, plan_table  # noqa: E402  (needs the sys.path line)


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
