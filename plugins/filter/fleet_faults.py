"""Filters for failing fast: the watch spec of the serve wait (``ascend_fleet.faults``)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ascend_fleet.faults import watch_spec  # noqa: E402  (needs the sys.path line)


class FilterModule:
    def filters(self):
        return {"fleet_watch_spec": watch_spec}
