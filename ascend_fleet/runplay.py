"""Run a playbook of the project through ansible-runner's Python API and keep the record.

Every run gets ``runs/<UTC time>-<verb>-<inventory>/`` (private, 0700): ansible-runner's
artifacts (``artifacts/ansible/``: job_events, stdout, rc, status, command), ``report.json``
and ``report.html``. Inputs are checked before anything runs (unknown inventory, malformed
``-e``): exit code 2.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from .reporthtml import render_html
from .runprogress import Output
from .runreport import RunTracker, phase_plan

PLAYBOOKS = {
    "up": "site.yml",
    "status": "playbooks/status.yml",
    "stop": "playbooks/stop.yml",
    "restart": "playbooks/restart.yml",
    "destroy": "playbooks/destroy.yml",
    "logs": "playbooks/collect-logs.yml",
    "eval": "playbooks/eval.yml",
}
VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class BadInput(Exception):
    """Refused before anything runs (exit code 2)."""


def project_root() -> Path:
    """The checkout holding site.yml: $ASCEND_FLEET_PROJECT, else the current directory when it
    holds site.yml and inventories/, else the directory above this package."""
    env = os.environ.get("ASCEND_FLEET_PROJECT")
    if env:
        return Path(env).resolve()
    cwd = Path.cwd()
    if (cwd / "site.yml").is_file() and (cwd / "inventories").is_dir():
        return cwd
    return Path(__file__).resolve().parents[1]


def shipped_names(root: Path) -> list[str]:
    return sorted(p.parent.name for p in (root / "inventories").glob("*/hosts.yml"))


def resolve_inventory(value: str, root: Path) -> tuple[Path, str, bool]:
    """(path, name, shipped) for a shipped topology name or an inventory path."""
    given = Path(value)
    if given.exists():
        path = given.resolve()
        name = path.parent.name if path.is_file() and path.name in ("hosts.yml", "hosts.yaml") else path.stem
        shipped = path == (root / "inventories" / name / "hosts.yml").resolve()
        return path, name, shipped
    if "/" not in value and (root / "inventories" / value / "hosts.yml").is_file():
        return (root / "inventories" / value / "hosts.yml").resolve(), value, True
    raise BadInput(
        f"inventory {value!r}: no such file, and not a shipped topology name "
        f"(one of: {', '.join(shipped_names(root))}); give a name or the path of an inventory file"
    )


def check_extra_vars(items: list[str], base: Path) -> list[str]:
    """The names set by the -e values (each checked); the values themselves are never shown."""
    names: list[str] = []
    for i, item in enumerate(items, 1):
        where = f"-e number {i}"
        if item.startswith("@"):
            path = (base / item[1:]) if not Path(item[1:]).is_absolute() else Path(item[1:])
            if not path.is_file():
                raise BadInput(f"{where}: file {item[1:]!r} not found (expected -e @FILE with a YAML or JSON mapping)")
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise BadInput(f"{where}: {item[1:]!r} is not YAML/JSON: {str(exc).splitlines()[0]}") from None
            if not isinstance(data, dict):
                raise BadInput(f"{where}: {item[1:]!r} holds a {type(data).__name__}, expected a mapping of variables")
            names += [str(k) for k in data]
            continue
        if item.lstrip().startswith(("{", "[")):
            try:
                data = yaml.safe_load(item)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                at = f" at column {mark.column + 1}" if mark else ""
                raise BadInput(f"{where}: not valid JSON/YAML{at} (expected -e '{{\"name\": value}}')") from None
            if not isinstance(data, dict):
                raise BadInput(f"{where}: a {type(data).__name__}, expected a mapping of variables")
            names += [str(k) for k in data]
            continue
        try:
            words = shlex.split(item)
        except ValueError as exc:
            raise BadInput(f"{where}: {exc} (expected NAME=VALUE)") from None
        if not words:
            raise BadInput(f"{where}: empty (expected NAME=VALUE)")
        for word in words:
            name, sep, _ = word.partition("=")
            if not sep:
                raise BadInput(f"{where}: {word!r} has no '=' (expected NAME=VALUE, a JSON mapping or @FILE)")
            if not VAR_NAME.fullmatch(name):
                raise BadInput(f"{where}: {name!r} is not a variable name (expected NAME=VALUE)")
            names.append(name)
    return names


def extra_var_files(items: list[str], directory: Path) -> list[str]:
    """The -e arguments to hand to ansible-playbook: each inline value written to a private
    file (0600) and passed as @FILE, so no value (a key, a token) lands in the command line
    that ansible-runner records (artifacts/ansible/command) or in a process listing. Parsed as
    ansible-playbook parses -e: a JSON/YAML mapping, or NAME=VALUE words (strings)."""
    from ansible.parsing.splitter import parse_kv

    args = []
    for i, item in enumerate(items, 1):
        if item.startswith("@"):
            args.append(item)
            continue
        data = yaml.safe_load(item) if item.lstrip().startswith(("{", "[")) else parse_kv(item)
        path = directory / f"extra-vars-{i}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        args.append(f"@{path}")
    return args


def new_run_dir(runs: Path, verb: str, name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "inventory"
    runs.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = runs / (f"{stamp}-{verb}-{safe}" + (f"-{n}" if n > 1 else ""))
        try:
            path.mkdir(mode=0o700)
            return path
        except FileExistsError:
            continue
    raise BadInput(f"cannot create a run directory under {runs}")


def ansible_playbook_bin() -> str:
    local = Path(sys.executable).parent / "ansible-playbook"
    found = str(local) if local.exists() else shutil.which("ansible-playbook")
    if not found:
        raise BadInput("ansible-playbook not found: install the project's requirements (scripts/setup.sh)")
    return found


def labctl_path(root: Path) -> Path:
    path = root / "lab" / "labctl"
    if not path.is_file():
        raise BadInput(f"no lab here: {path} not found (the lab ships with the repository checkout)")
    return path


def run_labctl(root: Path, args: list[str], output: Output | None = None, log: Path | None = None) -> int:
    """lab/labctl as a program (product code never imports the lab); lines go to the output."""
    proc = subprocess.Popen(
        [str(labctl_path(root)), *args], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with open(log, "a", encoding="utf-8") if log else open(os.devnull, "w") as sink:
        for line in proc.stdout:
            sink.write(line)
            if output is not None:
                output.lab_line(line.rstrip())
            else:
                print(line, end="", flush=True)
    return proc.wait()


@dataclass
class Job:
    verb: str
    inventory: str
    root: Path
    output: Output
    lab: bool = False
    lab_up: bool = False
    check: bool = False
    extra_vars: list[str] = field(default_factory=list)
    more_inventories: list[str] = field(default_factory=list)
    runs_dir: Path | None = None


def prepare(job: Job) -> dict:
    """Check every input; return what the run needs. Raises BadInput (nothing touched yet)."""
    root = job.root
    playbook = root / PLAYBOOKS[job.verb]
    if not playbook.is_file():
        raise BadInput(f"{playbook} not found: is {root} an ascend-fleet checkout? (set ASCEND_FLEET_PROJECT)")
    path, name, shipped = resolve_inventory(job.inventory, root)
    inventories = [path]
    for extra in job.more_inventories:
        if not Path(extra).exists():
            raise BadInput(f"-i {extra!r}: no such inventory file")
        inventories.append(Path(extra).resolve())
    env = {
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(root / ".fact_cache"),
    }
    # ansible-runner puts its own callback directory in ANSIBLE_CALLBACK_PLUGINS, which hides
    # ansible.cfg's callback_plugins: name those here (the runner appends its own).
    callbacks = _cfg_paths(root, "callback_plugins")
    if callbacks:
        env["ANSIBLE_CALLBACK_PLUGINS"] = os.pathsep.join(callbacks)
    # ansible-playbook of this Python's environment first (a venv need not be activated)
    env["PATH"] = os.pathsep.join([str(Path(ansible_playbook_bin()).parent), os.environ.get("PATH", "")])
    overlay = None
    if job.lab:
        if not shipped:
            raise BadInput(
                f"--lab needs a shipped topology name (one of: {', '.join(shipped_names(root))}), not {job.inventory!r}"
            )
        labctl_path(root)
        state = root / "lab" / ".state" / name
        overlay = state / "hosts.yml"
        if not job.lab_up and not overlay.is_file():
            raise BadInput(f"the {name} lab is not up ({overlay} missing): ascend-fleet lab up {name}")
        # Facts are cached per lab topology: host names repeat between topologies.
        env["ANSIBLE_CACHE_PLUGIN_CONNECTION"] = str(state / "facts")
    names = check_extra_vars(job.extra_vars, Path.cwd())
    return {
        "playbook": playbook,
        "name": name,
        "inventories": inventories,
        "overlay": overlay,
        "env": env,
        "extra_var_names": names,
    }


def execute(job: Job) -> int:
    """Run the job: the lab first when asked, then the playbook. Returns the exit code."""
    try:
        import ansible_runner
    except ImportError:
        job.output.message(
            "ascend-fleet: ansible-runner is not installed: scripts/setup.sh, or pip install -r requirements.txt"
        )
        return 2
    try:
        prep = prepare(job)
    except BadInput as exc:
        job.output.message(f"ascend-fleet: {exc}")
        return 2
    root = job.root
    run_dir = new_run_dir(job.runs_dir or root / "runs", job.verb, prep["name"])
    tracker = RunTracker(phase_plan(prep["playbook"]))
    title = f"ascend-fleet {job.verb} {prep['name']}" + (" --check" if job.check else "") + f"  ({run_dir.name})"
    output = job.output
    output.start(tracker, title)
    meta = {
        "verb": job.verb,
        "inventory": prep["name"],
        "playbook": PLAYBOOKS[job.verb],
        "inventories": [],
        "check": job.check,
        "extra_var_names": prep["extra_var_names"],
        "run_dir": str(run_dir),
    }
    code = 1
    secret_dir: Path | None = None
    try:
        if job.lab and job.lab_up:
            t0 = time.monotonic()
            rc = run_labctl(root, ["up", prep["name"]], output, run_dir / "lab-up.log")
            meta["lab"] = {
                "topology": prep["name"],
                "rc": rc,
                "seconds": round(time.monotonic() - t0, 1),
                "log": "lab-up.log",
            }
            if rc != 0:
                output.stop()
                output.message(
                    f"ascend-fleet: lab/labctl up {prep['name']} failed (exit {rc}); see {run_dir}/lab-up.log"
                )
                report = tracker.report(**meta, rc=None, status="lab failed", exit_code=1)
                write_report(run_dir, report)
                output.summary(report, str(run_dir))
                return 1
        inventories = [*prep["inventories"], *([prep["overlay"]] if prep["overlay"] else [])]
        meta["inventories"] = [_shown(p, root) for p in inventories]
        secret_dir = Path(tempfile.mkdtemp(prefix="ascend-fleet-evars."))  # 0700, removed below
        cmdline = (["--check"] if job.check else []) + [
            a for e in extra_var_files(job.extra_vars, secret_dir) for a in ("-e", e)
        ]

        def on_event(event: dict) -> bool:
            output.records(tracker.feed(event))
            return True

        result = ansible_runner.run(
            private_data_dir=str(run_dir),
            artifact_dir=str(run_dir / "artifacts"),
            ident="ansible",
            project_dir=str(root),
            playbook=PLAYBOOKS[job.verb],
            inventory=[str(p) for p in inventories],
            cmdline=shlex.join(cmdline) if cmdline else None,
            envvars=prep["env"],
            fact_cache_type=None,  # the cache of ansible.cfg (or the lab's), not one per run
            event_handler=on_event,
            quiet=True,
            suppress_env_files=True,
        )
        code = tracker.exit_code(result.rc)
        report = tracker.report(**meta, rc=result.rc, status=result.status, exit_code=code)
    except KeyboardInterrupt:
        code = 1
        report = tracker.report(**meta, rc=None, status="interrupted", exit_code=code)
    finally:
        output.stop()
        if secret_dir is not None:
            shutil.rmtree(secret_dir, ignore_errors=True)
    write_report(run_dir, report)
    output.summary(report, str(run_dir))
    return code


def _cfg_paths(root: Path, key: str) -> list[str]:
    """A path list of ansible.cfg's [defaults], absolute (relative entries are from the checkout)."""
    cfg = configparser.ConfigParser(interpolation=None)
    try:
        cfg.read(root / "ansible.cfg", encoding="utf-8")
        value = cfg.get("defaults", key, fallback="")
    except configparser.Error:
        return []
    return [str((root / part).resolve()) for part in value.split(os.pathsep) if part.strip()]


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def write_report(run_dir: Path, report: dict) -> None:
    for name, text in (
        ("report.json", json.dumps(report, indent=1, sort_keys=True)),
        ("report.html", render_html(report)),
    ):
        tmp = run_dir / f".{name}.tmp"
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(run_dir / name)
