"""Molecule: one scenario per shipped topology over the lab (marker ``molecule``).

Each runs ``molecule test``: destroy, syntax, create (lab/labctl up), converge (site.yml),
idempotence (a second site.yml must report changed=0), verify (containers, devices, mounts,
command on every node; the tutorial's request through the entry point), destroy.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TOPOLOGIES
from tests.lab.conftest import lab_unavailable

pytestmark = [pytest.mark.lab, pytest.mark.molecule]


# Topologies with a scenario under molecule/ (a3-1p1d-proxy has its own lab test,
# tests/test_proxy_host.py; a3-1m-2p2d is checked by rendering).
SCENARIOS = [t for t in TOPOLOGIES if t not in ("a3-1m-2p2d", "a3-1p1d-proxy")]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario):
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
        "NO_COLOR": "1",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PY_COLORS": "0",
    }
    proc = subprocess.run(
        [str(bindir / "molecule"), "test", "-s", scenario],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    assert proc.returncode == 0, out[-6000:]
    # "a2-single ➜ create: Executed: Successful" (or "[a2-single > create] ..." without colours)
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        pattern = rf"{re.escape(scenario)} (?:➜|>) {step}\]?:? Executed: Successful"
        assert re.search(pattern, out), f"{step} did not succeed"
    assert re.search(rf"{re.escape(scenario)}\s+: actions=7\s+successful=7 .*failed=0", out)
    # the converge really ran the bring-up and the verify got an answer
    assert "Endpoint http://" in out and "answered" in out
