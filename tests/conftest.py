"""Shared fixtures: the repository root, and renders of the shipped inventories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOPOLOGIES = ["a2-single", "a3-single", "a3-1p1d", "a2-4p4d", "a2-1m-4p4d", "a3-1m-2p2d", "a3-1p1d-proxy"]


def ansible_bin(name: str) -> str:
    """The ansible-* executable next to this Python (the venv), else on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} not found: install the project's requirements (see README)"
    return found


def run_playbook(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [ansible_bin("ansible-playbook"), *args]
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1", **(env or {})},
    )
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    return proc


def run_site(topology: str, *extra: str, check: bool = False) -> subprocess.CompletedProcess:
    """site.yml against a lab: the shipped inventory by its bare name plus the lab overlay."""
    state = REPO / "lab" / ".state" / topology
    return run_playbook(
        "site.yml",
        "-i",
        topology,
        "-i",
        str(state / "hosts.yml"),
        *extra,
        check=check,
        # facts are cached per lab topology: host names repeat between topologies
        env={"ANSIBLE_CACHE_PLUGIN_CONNECTION": str(state / "facts")},
    )


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, Path]:
    """Render every shipped inventory once, by its bare name, with playbooks/render.yml."""
    out = {}
    for name in TOPOLOGIES:
        target = tmp_path_factory.mktemp(f"render-{name}")
        run_playbook("playbooks/render.yml", "-i", name, "-e", f"fleet_render_dir={target}")
        out[name] = target
    return out


def load_plan(render_dir: Path) -> dict:
    return json.loads((render_dir / "plan.json").read_text())


# In CI a green run must mean everything ran: a test that skips there (Docker, debootstrap,
# a package or the tutorial text missing) is reported as a failure, with its reason.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and os.environ.get("CI", "").lower() == "true" and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true), where every test must run: {reason}"
    return report


# Order: tests that need no lab first (they fail in seconds), then the lab tests in file
# order, and the Molecule scenarios last. Each scenario destroys its lab at the end, so run
# in the middle it would take down the a3-1p1d lab that the lab tests share, and the next
# test would bring it up again from nothing.
def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        if item.get_closest_marker("molecule"):
            return 2
        return 1 if item.get_closest_marker("lab") else 0

    items.sort(key=rank)  # stable: file order within each group
