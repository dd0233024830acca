"""Shared fixtures: the repository root, and renders of the shipped inventories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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


# The recipes every shipped inventory is rendered with: the default one (the tutorial's
# image) and the newer image's (tests/test_recipe_versions.py).
RENDER_RECIPES = {"default": (), "v0.23.0": ("-e", "fleet_recipe=dsv4-flash-w8a8-mtp@v0.23.0")}


@pytest.fixture(scope="session")
def renders(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Every shipped inventory, by its bare name, rendered with playbooks/render.yml with each
    recipe of RENDER_RECIPES: the 14 runs at once, three at a time (each is one Ansible run on
    the controller, most of it Python start-up and templating)."""
    jobs = [(recipe, name, tmp_path_factory.mktemp(f"render-{recipe}-{name}"))
            for recipe in RENDER_RECIPES for name in TOPOLOGIES]

    def render(job):
        recipe, name, target = job
        run_playbook("playbooks/render.yml", "-i", name, "-e", f"fleet_render_dir={target}", *RENDER_RECIPES[recipe])

    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(render, jobs))  # a failed render raises here, with its output
    out: dict[str, dict[str, Path]] = {recipe: {} for recipe in RENDER_RECIPES}
    for recipe, name, target in jobs:
        out[recipe][name] = target
    return out


@pytest.fixture(scope="session")
def rendered(renders) -> dict[str, Path]:
    """Every shipped inventory rendered once with the default recipe."""
    return renders["default"]


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
# test would bring it up again from nothing. Except the scenarios of the topologies the lab
# tests use (tests/test_molecule.py HANDED_ON): each runs just before the first lab test of
# its topology, keeps its lab (--destroy=never) and hands it on, serving, to those tests.
HAND_ON_USERS = {
    # the first lab test of the topology: a3-1p1d is the lab tests' shared one (the first
    # lab test may use it); a2-4p4d serves the evaluation and the DP-group fault tests
    "a3-1p1d": lambda item: True,
    "a2-4p4d": lambda item: "[a2-4p4d]" in item.nodeid or "test_faults_dp_lab.py" in item.nodeid,
}


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        if item.get_closest_marker("molecule"):
            return 2
        return 1 if item.get_closest_marker("lab") else 0

    items.sort(key=rank)  # stable: file order within each group
    for topology, uses in HAND_ON_USERS.items():
        scenario = next((it for it in items if it.get_closest_marker("molecule")
                         and getattr(it, "callspec", None) and it.callspec.params.get("scenario") == topology), None)
        users = [i for i, it in enumerate(items) if rank(it) == 1 and uses(it)]
        if scenario is None or not users:
            continue
        items.remove(scenario)
        items.insert(users[0], scenario)
        scenario.hand_on_lab = True
