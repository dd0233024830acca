"""Filters that turn the plan into views for people (``fleet_plan_table``, ``fleet_plan_svg``)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ascend_fleet.planview import plan_svg, plan_table  # noqa: E402  (needs the sys.path line)


class FilterModule:
    def filters(self):
        return {"fleet_plan_table": plan_table, "fleet_plan_svg": plan_svg}
