"""Molecule: one scenario per shipped topology over the lab (marker ``molecule``).

Each runs ``molecule test``: destroy, syntax, create (lab/labctl up), converge (site.yml),
idempotence (a second site.yml must report changed=0), verify (containers, devices, mounts,
command on every node; the tutorial's request through the entry point), destroy.

Two ways, to keep the whole suite in its time budget:
- **Handed on** (a3-1p1d and a2-4p4d, when lab tests of that topology run in the same
  session): the scenario runs before them (tests/conftest.py orders it), from a lab taken
  down first (``molecule destroy``), with ``--destroy=never``. Create, converge,
  idempotence and verify are the scenario's own, from nothing; the lab it leaves serving
  is what those lab tests start from (recorded like any successful site.yml), and the
  last of them takes it down.
- **Together** (the other scenarios, each its whole sequence destroy ... destroy): started
  at once, as separate processes, when the first of them is reached; each test waits for
  its own. They share only the lab's registry and hub, which serve them all.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, TOPOLOGIES
from tests.lab.conftest import lab_unavailable, record_serving

pytestmark = [pytest.mark.lab, pytest.mark.molecule]


# Topologies with a scenario under molecule/ (a3-1p1d-proxy has its own lab test,
# tests/test_proxy_host.py; a3-1m-2p2d is checked by rendering).
SCENARIOS = [t for t in TOPOLOGIES if t not in ("a3-1m-2p2d", "a3-1p1d-proxy")]
# Scenarios whose served lab the lab tests of the same topology can start from.
HANDED_ON = ("a3-1p1d", "a2-4p4d")
STEPS = ("create", "converge", "idempotence", "verify")

_RUNS: dict[str, tuple[subprocess.Popen, Path]] = {}


def _env() -> dict[str, str]:
    bindir = Path(sys.executable).parent
    return {
        **os.environ,
        "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
        "NO_COLOR": "1",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PY_COLORS": "0",
    }


def _start(scenario: str, *extra: str) -> None:
    if scenario in _RUNS:
        return
    log = Path(tempfile.mkstemp(prefix=f"molecule-{scenario}-", suffix=".log")[1])
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "molecule"), "test", "-s", scenario, *extra],
            cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT, text=True,
        )
    _RUNS[scenario] = (proc, log)


def _finish(scenario: str) -> tuple[int, str]:
    proc, log = _RUNS[scenario]
    try:
        code = proc.wait(timeout=2400)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = -9
    out = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))
    log.unlink(missing_ok=True)
    return code, out


def _step_ok(scenario: str, step: str, out: str) -> bool:
    # "a2-single ➜ create: Executed: Successful" (or "[a2-single > create] ..." without colours)
    return re.search(rf"{re.escape(scenario)} (?:➜|>) {step}\]?:? Executed: Successful", out) is not None


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario, request):
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    hand_on = bool(getattr(request.node, "hand_on_lab", False))
    if hand_on:
        # the scenario's first destroy, run here (lab down, Molecule's own state reset): with
        # --destroy=never the sequence skips it, and create must start from nothing
        destroy = subprocess.run([str(Path(sys.executable).parent / "molecule"), "destroy", "-s", scenario],
                                 cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600, check=False)
        assert destroy.returncode == 0, (destroy.stdout + destroy.stderr)[-3000:]
        _start(scenario, "--destroy=never")
    else:
        together = [item.callspec.params["scenario"] for item in request.session.items
                    if getattr(item, "originalname", "") == "test_molecule_scenario"
                    and not getattr(item, "hand_on_lab", False)]
        for other in together or [scenario]:
            _start(other)
    code, out = _finish(scenario)
    assert code == 0, out[-6000:]
    for step in STEPS:
        assert _step_ok(scenario, step, out), f"{step} did not succeed:\n{out[-4000:]}"
    assert "Skipping, instances already created" not in out  # create brought the lab up
    if hand_on:
        assert "Skipping, '--destroy=never' requested." in out
        record_serving(scenario)  # serving what a successful site.yml left: the lab tests start here
    else:
        assert _step_ok(scenario, "destroy", out), f"destroy did not succeed:\n{out[-4000:]}"
        assert re.search(rf"{re.escape(scenario)}\s+: actions=7\s+successful=7 .*failed=0", out), out[-3000:]
    # the converge really ran the bring-up and the verify got an answer
    assert "Endpoint http://" in out and "answered" in out
