"""Entry playbooks: every one validates the inventory first (and takes the run lock when it
changes the fleet), so a phase runs alone as site.yml promises, validated once; names that
several roles share are written once, in their owner's defaults, not as default() copies."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, ansible_bin, run_playbook

VALIDATE_PLAY = "Validate the inventory and plan the deployment (controller only)"
# Imported by the entry points, not entry points themselves.
FRAGMENTS = {"playbooks/validate.yml", "playbooks/lock.yml", "playbooks/unlock.yml"}
# Entry points that change the fleet take the run lock; those that only read do not.
LOCKED = {
    "site.yml",
    "playbooks/site.yml",
    "playbooks/preflight.yml",
    "playbooks/image.yml",
    "playbooks/weights.yml",
    "playbooks/serve.yml",
    "playbooks/proxy.yml",
    "playbooks/eval.yml",
    "playbooks/restart.yml",
    "playbooks/stop.yml",
    "playbooks/destroy.yml",
    "playbooks/upgrade.yml",
}
READ_ONLY = {
    "playbooks/npu_network.yml",
    "playbooks/verify.yml",
    "playbooks/status.yml",
    "playbooks/collect-logs.yml",
    "playbooks/render.yml",
}
PHASES = ["preflight", "npu_network", "image", "weights", "serve", "proxy", "verify", "eval"]


def entry_points() -> list[str]:
    found = ["site.yml", *(str(p.relative_to(REPO)) for p in sorted((REPO / "playbooks").glob("*.yml")))]
    return [name for name in found if name not in FRAGMENTS]


def flatten(path: Path) -> list[tuple[str, dict]]:
    """The plays a playbook runs, in order, import_playbook followed: (file of the play, play)."""
    out = []
    for entry in yaml.safe_load(path.read_text()):
        target = entry.get("ansible.builtin.import_playbook") or entry.get("import_playbook")
        if target:
            out.extend(flatten((path.parent / target).resolve()))
        else:
            out.append((str(path.resolve().relative_to(REPO)), entry))
    return out


def kind(play: dict) -> str:
    """validate, lock, unlock, or phase."""
    roles = [r["role"] if isinstance(r, dict) else r for r in play.get("roles", [])]
    if "validate" in roles:
        return "validate"
    if "run_lock" in roles:
        return "lock"
    for task in play.get("tasks", []):
        inc = task.get("ansible.builtin.include_role") or {}
        if inc.get("name") == "run_lock":
            return "unlock" if inc.get("tasks_from") == "release" else "lock"
    return "phase"


def test_every_entry_point_is_classified():
    """A new playbook must be put in LOCKED or READ_ONLY, and so get checked below."""
    assert set(entry_points()) == LOCKED | READ_ONLY
    assert not LOCKED & READ_ONLY


@pytest.mark.parametrize("name", sorted(LOCKED | READ_ONLY))
def test_entry_playbook_validates_first_and_once(name):
    plays = flatten(REPO / name)
    kinds = [kind(play) for _, play in plays]
    assert plays[0][0] == "playbooks/validate.yml" and kinds[0] == "validate", plays[0]
    assert plays[0][1]["name"] == VALIDATE_PLAY
    assert kinds.count("validate") == 1, kinds
    if name in LOCKED:
        # The lock right after the validation, released once, after every phase play.
        assert kinds[1] == "lock" and kinds.count("lock") == 1 and kinds.count("unlock") == 1, kinds
        unlock = kinds.index("unlock")
        after = [play["name"] for _, play in plays[unlock + 1 :]]
        assert after in ([], ["Report the outcome"]), after  # upgrade.yml reports after releasing
    else:
        assert "lock" not in kinds and "unlock" not in kinds, kinds
    assert "phase" in kinds, kinds


def test_site_runs_every_phase_once_in_order():
    sources = [src for src, _ in flatten(REPO / "site.yml")]
    phase_files = [f"playbooks/phases/{p}.yml" for p in PHASES]
    # site.yml's own plays around the phases: one probe per node before them (a converged
    # fleet skips them), the record of the completed run after verify
    probe, record = "playbooks/phases/converge.yml", "playbooks/phases/converge_record.yml"
    assert sorted(str(p.relative_to(REPO)) for p in (REPO / "playbooks" / "phases").glob("*.yml")) == sorted(
        [*phase_files, probe, record]
    )
    order = [src for i, src in enumerate(sources) if i == 0 or src != sources[i - 1]]
    assert order == ["playbooks/validate.yml", "playbooks/lock.yml", probe, *phase_files[:-1], record,
                     phase_files[-1], "playbooks/unlock.yml"], order


@pytest.mark.parametrize("phase", PHASES)
def test_phase_plays_stand_in_one_file_run_by_site_and_by_their_entry_point(phase):
    phase_file = REPO / "playbooks" / "phases" / f"{phase}.yml"
    plays = yaml.safe_load(phase_file.read_text())
    assert plays and all("hosts" in play for play in plays), "the phase file holds plays only"
    assert all(kind(play) == "phase" for play in plays)
    entry = [src for src, _ in flatten(REPO / "playbooks" / f"{phase}.yml")]
    assert entry.count(f"playbooks/phases/{phase}.yml") == len(plays)


# --- run alone with a bad value: refused in the validation play, on the controller --------

BAD = ("-e", "fleet_hw_kind=a9")
BAD_MESSAGE = "fleet_hw_kind = 'a9'; expected one of a2, a3"


def _ssh_trap(tmp: Path) -> tuple[dict, Path]:
    """An ssh that records that it was called and connects nowhere."""
    marker = tmp / "ssh-was-called"
    trap = tmp / "ssh"
    trap.write_text(f"#!/bin/sh\necho \"$@\" >> '{marker}'\necho 'no connection in this test' >&2\nexit 255\n")
    trap.chmod(0o755)
    return {"ANSIBLE_SSH_EXECUTABLE": str(trap), "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}, marker


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every phase playbook run alone against a shipped inventory (by its bare name) with a
    bad value, four at a time (the ops playbooks validated first before; their order is
    checked above). Each run has its own ssh trap."""

    def one(name: str):
        env, marker = _ssh_trap(tmp_path_factory.mktemp(Path(name).stem))
        proc = run_playbook(name, "-i", "a3-1p1d", *BAD, check=False, env=env)
        return name, (proc, marker)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, [f"playbooks/{phase}.yml" for phase in PHASES]))


@pytest.mark.parametrize("name", [f"playbooks/{phase}.yml" for phase in PHASES])
def test_phase_playbook_run_alone_with_a_bad_value_stops_in_the_validation(refused, name):
    proc, marker = refused[name]
    out = proc.stdout
    assert proc.returncode != 0, out[-3000:]
    assert BAD_MESSAGE in out and "nothing was touched" in out, out[-3000:]
    assert "Traceback" not in out + proc.stderr
    # Only the validation play started, and only its tasks ran: no lock, no phase.
    assert re.findall(r"^PLAY \[(.*)\] \*+$", out, re.M) == [VALIDATE_PLAY], out[-3000:]
    tasks = re.findall(r"^TASK \[(.*)\] \*+$", out, re.M)
    assert tasks and all(t.startswith("validate : ") for t in tasks), tasks
    assert not marker.exists(), f"ssh was called: {marker.read_text()}"


def test_the_ssh_trap_sees_a_connection(tmp_path):
    """The trap above is not blind: a command that connects calls it (to 127.0.0.1 here, so
    that even a trap bypassed by mistake reaches nothing but this machine)."""
    env, marker = _ssh_trap(tmp_path)
    proc = subprocess.run(
        [
            ansible_bin("ansible"),
            "prefill-0",
            "-i",
            "a3-1p1d",
            "-e",
            "ansible_host=127.0.0.1",
            "-m",
            "ansible.builtin.ping",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert proc.returncode != 0
    assert marker.exists() and "127.0.0.1" in marker.read_text()


# --- shared names: written once, in the owner role's defaults ---------------------------------

# A value of a default() that is a literal (one argument: a default(x, true) means "empty
# counts as unset", not a copy of a value).
LITERAL = re.compile(r"""\s*('[^']*'|"[^"]*"|-?\d+(\.\d+)?|true|false|True|False|none|None|\[\]|\{\})\s*""")
# Files rewritten elsewhere at the moment, where these copies still stand.
NOT_YET: set[tuple[str, str]] = set()


def role_defaults() -> dict[str, tuple[str, object]]:
    """Every variable a role's defaults/main.yml defines: (owner role, value)."""
    out = {}
    for path in sorted(REPO.glob("roles/*/defaults/main.yml")):
        for name, value in (yaml.safe_load(path.read_text()) or {}).items():
            out[name] = (path.parts[-3], value)
    return out


def code_files() -> list[Path]:
    files = [*REPO.glob("roles/**/*.yml"), *REPO.glob("roles/**/*.j2"), *REPO.glob("playbooks/**/*.yml")]
    return [p for p in files if "meta" not in p.relative_to(REPO).parts] + [REPO / "site.yml"]


def default_calls():
    """(file, line number, variable, argument) of every `<role default> | default(...)`."""
    names = role_defaults()
    call = re.compile(r"(?<![\w.])(" + "|".join(sorted(names, key=len, reverse=True)) + r")\s*\|\s*default\(([^()]*)\)")
    for path in code_files():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in call.finditer(line):
                yield str(path.relative_to(REPO)), n, m.group(1), m.group(2)


def test_no_role_setting_is_repeated_as_a_default_literal():
    found = [
        (path, n, name, arg)
        for path, n, name, arg in default_calls()
        if LITERAL.fullmatch(arg) and (path, name) not in NOT_YET
    ]
    assert not found, "copies of a role's default (write `| default(fleet_defaults.NAME)`):\n" + "\n".join(
        f"{path}:{n}: {name} | default({arg})" for path, n, name, arg in found
    )


def test_the_scan_finds_a_copy():
    """The scan above is not blind: the form it forbids is found in a line written that way."""
    names = role_defaults()
    assert names["serve_container_name"] == ("serve", "vllm-ascend")
    line = "ops_engine_container: \"{{ serve_container_name | default('vllm-ascend') }}\""
    call = re.compile(r"(?<![\w.])(serve_container_name)\s*\|\s*default\(([^()]*)\)")
    m = call.search(line)
    assert m and LITERAL.fullmatch(m.group(2))
    assert not LITERAL.fullmatch("fleet_defaults.serve_container_name")


def test_every_fleet_defaults_name_is_a_role_literal_default():
    names = role_defaults()
    used = {
        (str(path.relative_to(REPO)), m.group(1))
        for path in code_files()
        for m in re.finditer(r"fleet_defaults\.(\w+)", path.read_text())
    }
    assert {name for _, name in used} >= {
        "serve_container_name",
        "proxy_container_name",
        "launch_files_dest",
        "weights_cache_dir",
        "serve_ascend_log_dir",
        "weights_revision",
    }
    bad = [(p, n) for p, n in used if n not in names or "{{" in repr(names[n][1])]
    assert not bad, f"fleet_defaults names no literal role default: {bad}"


def test_validation_shares_the_owners_defaults_and_the_readers_follow_them(tmp_path):
    """The validate play sets fleet_defaults from the roles' own defaults; ops and preflight
    read the deploy roles' names through it and follow an override of the owner's variable.
    Every task of this run is on the controller (ansible_connection local, as render.yml)."""
    out_file = tmp_path / "seen.json"
    probe = tmp_path / "probe.yml"
    probe.write_text(
        textwrap.dedent(f"""\
        - name: Validate
          ansible.builtin.import_playbook: {REPO / "playbooks" / "validate.yml"}
          vars:
            validate_mode: render
        - name: Read the names as the ops and preflight roles see them
          hosts: prefill-0
          gather_facts: false
          vars:
            ansible_connection: local
            ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
          roles:
            - role: ops
          tasks:
            - name: Write them down
              ansible.builtin.copy:
                dest: {out_file}
                mode: "0600"
                content: "{{{{ {{'defaults': fleet_defaults, 'ops': [ops_engine_container, ops_proxy_container,
                  ops_files_dir, ops_ascend_log_dir]}} | to_json }}}}"
        """)
    )
    env, marker = _ssh_trap(tmp_path)
    run_playbook(str(probe), "-i", "a3-1p1d", "-e", "proxy_container_name=my-proxy", env=env)
    seen = json.loads(out_file.read_text())
    literal = {n: v for n, (_, v) in role_defaults().items() if "{{" not in repr(v) and "{%" not in repr(v)}
    assert seen["defaults"] == literal
    assert seen["ops"] == [
        literal["serve_container_name"],
        "my-proxy",
        literal["launch_files_dest"],
        literal["serve_ascend_log_dir"],
    ]
    assert literal["serve_container_name"] == "vllm-ascend" and literal["proxy_container_name"] != "my-proxy"
    assert not marker.exists()


def test_launch_files_take_the_nic_preflight_found_when_the_inventory_names_none(tmp_path):
    """launch_files_nic_name is derived in one place (the launch_files defaults): the plan's
    fleet_nic_name, else preflight_nic. Rendered on the controller (ansible_connection local)."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        textwrap.dedent("""\
        all:
          vars: {fleet_topology: a3-1p1d, fleet_hw_kind: a3}
          children:
            prefill:
              vars: {fleet_profile: a3-prefill}
              hosts:
                prefill-0: {ansible_host: 198.18.200.11, fleet_instance: prefill-0}
            decode:
              vars: {fleet_profile: a3-decode}
              hosts:
                decode-0: {ansible_host: 198.18.200.21, fleet_instance: decode-0}
        """)
    )
    probe = tmp_path / "probe.yml"
    probe.write_text(
        textwrap.dedent(f"""\
        - name: Validate
          ansible.builtin.import_playbook: {REPO / "playbooks" / "validate.yml"}
        - name: Place the launch files
          hosts: prefill
          gather_facts: false
          vars:
            ansible_connection: local
            ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
            launch_files_dest: {tmp_path / "files"}
          roles:
            - role: launch_files
        """)
    )
    env, marker = _ssh_trap(tmp_path)
    run_playbook(str(probe), "-i", str(inventory), "-e", "preflight_nic=eth7", env=env)
    scripts = "".join(p.read_text() for p in (tmp_path / "files").glob("*.sh"))
    assert scripts.count('nic_name="eth7"') >= 1 and 'nic_name=""' not in scripts, scripts[:2000]
    assert not marker.exists()


@pytest.mark.parametrize("fragment", ["playbooks/lock.yml", "playbooks/unlock.yml"])
def test_the_lock_is_taken_and_released_once_for_the_fleet(fragment):
    """One worker checks the lock's settings and takes (releases) it, not one per host."""
    (play,) = yaml.safe_load((REPO / fragment).read_text())
    (task,) = play["tasks"]
    assert task["ansible.builtin.include_role"]["name"] == "run_lock"
    assert task.get("run_once") is True
    assert bool(play.get("any_errors_fatal")) is (fragment == "playbooks/lock.yml")
