"""Filter ``fleet_bashrc_lines``: the image's ~/.bashrc lines the engine start applies."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ascend_fleet.shellenv import bashrc_lines  # noqa: E402  (needs the sys.path line)


class FilterModule:
    def filters(self):
        return {"fleet_bashrc_lines": bashrc_lines}
