"""The ascend.fleet collection and the execution environment, built and used as a user would.

The collection tarball is built with ``ansible-galaxy collection build`` from this checkout,
installed into a temporary collections path, and used from a directory outside the checkout
(no ansible.cfg of ours): ``ansible-doc`` shows every role's argument spec, a playbook passes
a syntax check and ``ascend.fleet.render`` renders a topology through the installed copy.
The execution environment's build context comes from ``scripts/build-ee`` (ansible-builder
create); its pins are compared with requirements.txt.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
GALAXY = yaml.safe_load((REPO / "galaxy.yml").read_text())
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = GALAXY["version"]
ROLES = sorted(p.parent.parent.name for p in (REPO / "roles").glob("*/meta/argument_specs.yml"))


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_NOCOLOR": "1", **(env or {})},
    )
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[re.sub(r"\[.*\]", "", name).lower()] = version
    return pins


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("collection-build")
    run([str(VENV_BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(out)], cwd=REPO)
    path = out / f"ascend-fleet-{VERSION}.tar.gz"
    assert path.is_file(), sorted(out.iterdir())
    return path


@pytest.fixture(scope="module")
def installed(tarball, tmp_path_factory) -> dict:
    """The tarball installed into a collections path; the environment that uses it, from elsewhere."""
    base = tmp_path_factory.mktemp("collection-use")
    collections = base / "collections"
    # --force: the checkout itself is linked into the venv as ascend.fleet (scripts/setup.sh),
    # which ansible-galaxy would otherwise take as already installed.
    proc = run(
        [str(VENV_BIN / "ansible-galaxy"), "collection", "install", "--force", "-p", str(collections), str(tarball)],
        cwd=base,
    )
    assert "ascend.fleet:" + VERSION + " was installed successfully" in proc.stdout, proc.stdout
    workdir = base / "elsewhere"
    workdir.mkdir()
    # A user's own ansible.cfg (not the checkout's): only the collections path is set.
    (workdir / "ansible.cfg").write_text(f"[defaults]\ncollections_path = {collections}\n")
    env = {"ANSIBLE_CONFIG": str(workdir / "ansible.cfg"), "ANSIBLE_COLLECTIONS_PATH": str(collections)}
    return {"root": collections / "ansible_collections" / "ascend" / "fleet", "cwd": workdir, "env": env}


def test_version_is_the_python_package_version():
    assert GALAXY["namespace"] == "ascend" and GALAXY["name"] == "fleet"
    assert PYPROJECT["project"]["version"] == VERSION


def test_tarball_holds_the_collection_and_not_the_checkout_tooling(tarball):
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("MANIFEST.json"))
    info = manifest["collection_info"]
    assert (info["namespace"], info["name"], info["version"]) == ("ascend", "fleet", VERSION)
    assert info["dependencies"] == GALAXY["dependencies"]
    for role in ROLES:
        assert f"roles/{role}/meta/argument_specs.yml" in names, role
        tasks = {f"roles/{role}/tasks/{t.name}" for t in (REPO / "roles" / role / "tasks").glob("*.yml")}
        assert tasks and tasks <= names, role
    for playbook in sorted((REPO / "playbooks").glob("*.yml")):
        assert f"playbooks/{playbook.name}" in names, playbook.name
    for plugin in sorted((REPO / "plugins").glob("*/*.py")):
        assert str(plugin.relative_to(REPO)) in names, plugin
    assert {"site.yml", "meta/runtime.yml", "README.md", "inventories/a2-4p4d/hosts.yml"} <= names
    top = {name.split("/", 1)[0] for name in names}
    checkout_only = {"lab", "tests", "molecule", "scripts", "bench", "ascend_fleet", "runs", "dist", "context"}
    leaked = top & (checkout_only | {".venv", ".git"})
    assert not leaked, f"the tarball carries checkout-only directories: {sorted(leaked)}"
    # No requirements.txt: ansible-builder would read it from the installed collection and put
    # the test tools (molecule, pytest, ...) into the execution environment.
    assert "requirements.txt" not in names
    assert not [n for n in names if n.endswith((".png", ".pyc")) or "/__pycache__" in n or n.startswith(".")]


def test_install_straight_from_the_checkout(tmp_path):
    """ansible-galaxy collection install <checkout>: the same files as the tarball (build_ignore)."""
    run(
        [str(VENV_BIN / "ansible-galaxy"), "collection", "install", "--force", "-p", str(tmp_path), str(REPO)], tmp_path
    )
    root = tmp_path / "ansible_collections" / "ascend" / "fleet"
    manifest = json.loads((root / "MANIFEST.json").read_text())["collection_info"]
    assert (manifest["namespace"], manifest["name"], manifest["version"]) == ("ascend", "fleet", VERSION)
    assert sorted(p.parent.parent.name for p in root.glob("roles/*/meta/argument_specs.yml")) == ROLES
    assert (root / "playbooks" / "site.yml").is_file() and (root / "plugins" / "filter" / "fleet.py").is_file()
    assert not [d for d in ("lab", "tests", "molecule", "ascend_fleet", ".venv") if (root / d).exists()]


def test_ansible_doc_shows_every_role_and_its_argument_spec(installed):
    listing = run(
        [str(VENV_BIN / "ansible-doc"), "-t", "role", "-l", "ascend.fleet"], installed["cwd"], installed["env"]
    )
    listed = set(re.findall(r"^ascend\.fleet\.(\w+):", listing.stdout, re.M))
    assert listed == set(ROLES), listing.stdout
    proc = run(
        [str(VENV_BIN / "ansible-doc"), "-t", "role", "--json", *(f"ascend.fleet.{r}" for r in ROLES)],
        installed["cwd"],
        installed["env"],
    )
    docs = json.loads(proc.stdout)
    for role in ROLES:
        spec = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
        shown = docs[f"ascend.fleet.{role}"]
        assert Path(shown["path"]).resolve() == installed["root"].resolve(), shown["path"]
        for entry, want in spec.items():
            got = shown["entry_points"][entry]
            assert set(got.get("options") or {}) == set(want.get("options") or {}), (role, entry)
            for name, opt in (want.get("options") or {}).items():
                assert got["options"][name].get("type", "str") == opt.get("type", "str"), (role, name)
    # The text view names the options too (what an operator reads).
    text = run(
        [str(VENV_BIN / "ansible-doc"), "-t", "role", "ascend.fleet.validate"], installed["cwd"], installed["env"]
    )
    assert "validate_mode" in text.stdout and "choices: [deploy, render]" in text.stdout


def test_site_playbook_syntax_through_the_installed_collection(installed):
    proc = run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "ascend.fleet.site",
            "--syntax-check",
            "-i",
            str(REPO / "inventories" / "a2-4p4d" / "hosts.yml"),
        ],
        installed["cwd"],
        installed["env"],
    )
    assert f"playbook: {installed['root'] / 'playbooks' / 'site.yml'}" in proc.stdout, proc.stdout


def test_render_through_the_installed_collection(installed, tmp_path):
    """Plugins (action, filters, inventory) and roles all from the installed copy, by FQCN."""
    out = tmp_path / "render"
    env = {**installed["env"], "ANSIBLE_INVENTORY_ENABLED": "ascend.fleet.fleet_named,ansible.builtin.yaml"}
    run(
        [str(VENV_BIN / "ansible-playbook"), "ascend.fleet.render", "-i", "a3-1p1d", "-e", f"fleet_render_dir={out}"],
        installed["cwd"],
        env,
    )
    plan = json.loads((out / "plan.json").read_text())
    assert sorted(plan["hosts"]) == ["decode-0", "prefill-0"]
    assert "<svg" in (out / "layout.svg").read_text()
    assert "prefill-0" in (out / "plan.md").read_text()
    for host in ("prefill-0", "decode-0"):
        assert any((out / host).rglob("*.sh")), host


def _filter_names() -> set[str]:
    names = set()
    for path in sorted((REPO / "plugins" / "filter").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"_fleet_filter_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        names |= set(module.FilterModule().filters())
    # Filters still inside a role (refused by the test below) count too: moved to plugins/, they
    # must be called by full name.
    for path in sorted(REPO.glob("roles/*/filter_plugins/*.py")):
        names |= set(re.findall(r"[\"'](\w+)[\"']\s*:", path.read_text()))
    return names


def test_roles_and_playbooks_call_the_filters_by_full_name():
    """Short names resolve only in the checkout (ansible.cfg filter_plugins), never in an installed
    collection: a role of the collection must write ascend.fleet.<filter>."""
    names = _filter_names()
    assert {"fleet_abspath", "fleet_plan_table", "fleet_watch_spec"} <= names
    short = re.compile(r"\|\s*(" + "|".join(sorted(names)) + r")\b")
    files = [
        *REPO.glob("roles/**/*.yml"),
        *REPO.glob("roles/**/*.j2"),
        *REPO.glob("playbooks/*.yml"),
        REPO / "site.yml",
    ]
    found = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if short.search(line)
    ]
    assert not found, "filters called by short name (write ascend.fleet.<name>):\n" + "\n".join(found)


def test_no_plugin_or_role_puts_the_checkout_on_sys_path():
    offenders = [
        str(p.relative_to(REPO))
        for p in [*REPO.glob("plugins/**/*.py"), *REPO.glob("roles/**/*.py")]
        if "sys.path" in p.read_text()
    ]
    assert not offenders, offenders
    assert not list(REPO.glob("roles/*/filter_plugins")) and not list(REPO.glob("roles/*/library")), (
        "plugins inside a role are not loaded from a collection role: put them under plugins/"
    )


def test_a_checkout_without_the_collection_is_refused_before_anything_is_written(tmp_path):
    """Ansible that cannot find ascend.fleet (here: the venv's collections hidden) stops in the
    first task, naming the fix, instead of failing mid-run on an unknown filter."""
    out = tmp_path / "render"
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "playbooks/render.yml", "-i", "a3-1p1d", "-e", f"fleet_render_dir={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        # the venv's collections hidden, and any other collection path (~/.ansible) too
        env={**os.environ, "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false", "ANSIBLE_NOCOLOR": "1",
             "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "no-collections")},
    )
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "the ascend.fleet collection is not installed for this Ansible" in proc.stdout
    assert "scripts/setup.sh" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not out.exists()


def test_the_python_package_is_installed_not_found_by_cwd(tmp_path):
    """Outside the checkout, the venv's Python imports ascend_fleet (pip install -e . by setup)."""
    proc = run(
        [sys.executable, "-c", "import ascend_fleet, sys; print(ascend_fleet.__file__)"],
        cwd=tmp_path,
        env={"PYTHONPATH": ""},
    )
    assert Path(proc.stdout.strip()).resolve() == (REPO / "ascend_fleet" / "__init__.py").resolve()


# --- the execution environment ----------------------------------------------------------


@pytest.fixture(scope="module")
def ee_context(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ee")
    proc = run([str(REPO / "scripts" / "build-ee")], REPO, {"BUILD_EE_DIR": str(out)})
    assert "Complete! The build context can be found at" in proc.stdout, proc.stdout
    return out / "context"


def test_ee_definition_is_version_3_with_the_collection_and_the_package():
    ee = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    assert ee["version"] == 3
    galaxy = ee["dependencies"]["galaxy"]["collections"]
    assert {"name": f"/build/dist/ascend-fleet-{VERSION}.tar.gz", "type": "file"} in galaxy
    sources = {f["src"] for f in ee["additional_build_files"]}
    assert sources == {f"dist/ascend-fleet-{VERSION}.tar.gz", f"dist/ascend_fleet-{VERSION}-py3-none-any.whl"}


def test_ee_build_context_has_the_collection_the_package_and_the_pins(ee_context):
    build = ee_context / "_build"
    containerfile = next(p for p in (ee_context / "Containerfile", ee_context / "Dockerfile") if p.is_file())
    text = containerfile.read_text()
    pins = requirement_pins()

    # The collection tarball, as built from this checkout.
    with tarfile.open(build / "dist" / f"ascend-fleet-{VERSION}.tar.gz") as tar:
        info = json.load(tar.extractfile("MANIFEST.json"))["collection_info"]
        assert (info["namespace"], info["name"], info["version"]) == ("ascend", "fleet", VERSION)
        assert "roles/serve/tasks/main.yml" in tar.getnames()
    # The Python package, as a wheel with its data files, installed in the final image.
    wheel = f"ascend_fleet-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(build / "dist" / wheel) as whl:
        members = set(whl.namelist())
    assert "ascend_fleet/topology.py" in members
    assert {f"ascend_fleet/recipes/{p.name}" for p in (REPO / "ascend_fleet" / "recipes").glob("*.yml")} <= members
    assert re.search(rf"pip install .*--no-deps /tmp/{re.escape(wheel)}", text), text

    # ansible-core and ansible-runner at requirements.txt's pins.
    refs = re.search(r'ARG ANSIBLE_INSTALL_REFS="([^"]*)"', text).group(1).split()
    assert f"ansible-core=={pins['ansible-core']}" in refs and f"ansible-runner=={pins['ansible-runner']}" in refs

    # Python dependencies: each pinned as in requirements.txt, covering the package's own.
    ee_pins = {}
    for line in (build / "requirements.txt").read_text().split():
        name, sep, version = line.partition("==")
        assert sep, f"unpinned in the execution environment: {line}"
        ee_pins[name.lower()] = version
    for name, version in ee_pins.items():
        assert pins.get(name) == version, f"{name}=={version} in the EE, {pins.get(name)} in requirements.txt"
    for dep in PYPROJECT["project"]["dependencies"]:
        name = re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower()
        assert name in ee_pins, f"{name} (a dependency of ascend_fleet) is missing from the EE"
    assert not {"molecule", "pytest", "ansible-lint", "ansible-builder"} & set(ee_pins)

    # Galaxy: the tarball, and the collections the roles call at the versions the tests use
    # (those of the pinned "ansible" package), within galaxy.yml's ranges.
    reqs = yaml.safe_load((build / "requirements.yml").read_text())["collections"]
    assert {"name": f"/build/dist/ascend-fleet-{VERSION}.tar.gz", "type": "file"} in reqs
    listed = json.loads(run([str(VENV_BIN / "ansible-galaxy"), "collection", "list", "--format", "json"], REPO).stdout)
    bundled = {
        name: meta["version"]
        for path, found in listed.items()
        if "site-packages" in path
        for name, meta in found.items()
    }
    for name in GALAXY["dependencies"]:
        entry = next(r for r in reqs if r["name"] == name)
        assert entry["version"] == f"=={bundled[name]}", (name, entry, bundled[name])
