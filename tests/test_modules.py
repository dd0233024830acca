"""The collection's modules: each documented for ansible-doc, documentation equal to its
argument spec, read-only probes supporting check mode."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, ansible_bin

MODULES = sorted(p.stem for p in (REPO / "plugins" / "modules").glob("*.py"))


class _Captured(SystemExit):
    pass


def argument_spec_of(name: str) -> tuple[dict, bool]:
    """(argument_spec, supports_check_mode) as the module hands them to AnsibleModule."""
    spec = importlib.util.spec_from_file_location(f"_fleet_module_{name}", REPO / "plugins" / "modules" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seen = {}

    def fake(argument_spec, supports_check_mode=False, **_kw):
        seen.update(spec=argument_spec, check=supports_check_mode)
        raise _Captured

    module.AnsibleModule = fake
    with pytest.raises(_Captured):
        module.main()
    return seen["spec"], seen["check"]


def test_there_are_modules():
    assert {"fleet_npu_facts", "fleet_node_probe", "fleet_npu_mesh"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_ansible_doc_documents_the_module(name):
    proc = subprocess.run([ansible_bin("ansible-doc"), "-t", "module", "--json", f"ascend.fleet.{name}"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[f"ascend.fleet.{name}"]["doc"]
    assert doc["short_description"]
    assert doc.get("description")


@pytest.mark.parametrize("name", MODULES)
def test_documented_options_equal_the_argument_spec(name):
    source = (REPO / "plugins" / "modules" / f"{name}.py").read_text()
    doc_text = source.split('DOCUMENTATION = r"""', 1)[1].split('"""', 1)[0]
    options = yaml.safe_load(doc_text).get("options") or {}
    spec, _ = argument_spec_of(name)
    assert set(options) == set(spec), f"{name}: documented {sorted(options)}, accepted {sorted(spec)}"
    for option, rules in spec.items():
        assert options[option].get("type", "str") == rules.get("type", "str"), f"{name}: {option} type"
        assert bool(options[option].get("required")) == bool(rules.get("required")), f"{name}: {option} required"
        assert options[option].get("no_log", False) == rules.get("no_log", False), f"{name}: {option} no_log"


@pytest.mark.parametrize("name", ["fleet_npu_facts", "fleet_node_probe", "fleet_npu_mesh"])
def test_read_only_probes_run_in_check_mode(name):
    _, check = argument_spec_of(name)
    assert check is True


def test_the_facts_script_is_the_shared_module_utils_and_runs_alone(tmp_path):
    """preflight installs plugins/module_utils/fleet_node.py as facts.d/npu.fact: it must run
    as a program with the standard library only and print JSON (here, on a machine without
    NPUs: nothing present, problems listed, no traceback)."""
    script = REPO / "plugins" / "module_utils" / "fleet_node.py"
    assert "ansible" not in "".join(
        line for line in script.read_text().splitlines() if line.startswith(("import ", "from "))
    )
    proc = subprocess.run([sys.executable, "-I", str(script)], cwd=tmp_path, capture_output=True, text=True,
                          check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["present"] is Path("/usr/local/Ascend/driver/tools/hccn_tool").exists()
    assert isinstance(facts["devices"], list)
    assert facts["problems"], "on a machine without NPUs the facts name what is missing"


def test_collect_writes_the_manifest_and_the_tarball_and_records_what_failed(tmp_path):
    """fleet_collect_node's logic on this machine: no NPU tools here, so their commands are
    recorded as not run, and the collection still completes."""
    import tarfile

    from ansible_collections.ascend.fleet.plugins.module_utils.fleet_collect import collect

    files = tmp_path / "etc-fleet"
    (files / "prefill-0").mkdir(parents=True)
    (files / "prefill-0" / "launch.sh").write_text("vllm serve ...\n")
    ascend = tmp_path / "ascend"
    (ascend / "log" / "debug" / "plog").mkdir(parents=True)
    (ascend / "log" / "debug" / "plog" / "plog-1.log").write_text("[ERROR] HCCL ...\n")
    req = {"containers": [], "files_dir": str(files), "ascend_log_dir": str(ascend), "log_tail": "50",
           "timeout": 20, "npu_smi": str(tmp_path / "no-npu-smi"), "hccn_tool": str(tmp_path / "no-hccn_tool"),
           "devices": 2, "hccn_queries": [["-link", "-g"], ["-net_health", "-g"]]}
    out, archive = tmp_path / "out", tmp_path / "collect.tar.gz"
    out.mkdir()
    result = collect(req, str(out), str(archive))
    assert result["commands"] == 1 + 1 + 2 * 2  # docker ps, npu-smi, 2 queries on 2 devices
    assert result["failed"] >= 5  # the NPU tools do not exist here
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == ["prefill-0/launch.sh"]
    assert manifest["ascend_logs"]["entries"] == ["log"]
    assert {c["rc"] for c in manifest["commands"] if c["command"][0].startswith(str(tmp_path))} == {"not run"}
    device1 = (out / "hccn" / "device-1.txt").read_text()
    assert "-i 1 -link -g  (exit not run)" in device1 and "cannot run" in device1
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "manifest.json" in names and "files/prefill-0/launch.sh" in names
    assert "ascend/log/debug/plog/plog-1.log" in names



INLINE = re.compile(r"\bpython3?\s+-c\b")
PY_LOOKUP = re.compile(r"""lookup\(\s*['"](?:ansible\.builtin\.)?file['"]\s*,[^)]*\.py['"]""")


def inline_programs(node, where: str = "") -> list[str]:
    """Where a YAML document runs `python3 -c` (a string, or an argv list with python3 then
    -c) or reads a Python file to pass it inline."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            found += inline_programs(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            nxt = node[i + 1] if i + 1 < len(node) else None
            if isinstance(value, str) and re.fullmatch(r"(\S*/)?python3?", value.strip()) and nxt == "-c":
                found.append(f"{where}[{i}]: {value} -c")
            found += inline_programs(value, f"{where}[{i}]")
    elif isinstance(node, str) and (INLINE.search(node) or PY_LOOKUP.search(node)):
        found.append(f"{where}: {node[:80]}")
    return found


def test_no_task_ships_a_program_as_python3_dash_c():
    """Node-side programs are modules: no task file or role variable under roles/ runs
    `python3 -c <program>` nor reads a role's Python file to pass it inline."""
    files = sorted(p for d in ("tasks", "vars", "handlers", "defaults")
                   for p in (REPO / "roles").glob(f"*/{d}/**/*.yml"))
    assert len(files) > 20
    offenders = [f"{p.relative_to(REPO)}{hit}" for p in files for hit in inline_programs(yaml.safe_load(p.read_text()))]
    assert offenders == []
    assert not list((REPO / "roles").glob("*/files/*.py")), "a role still carries a node-side Python program"


@pytest.mark.parametrize("text", [
    'argv: [python3, -c, "{{ tool }}", check]',
    'upgrade_admin: ["python3", "-c", "{{ x }}"]',
    "argv:\n  - python3\n  - -c\n  - \"{{ lookup('ansible.builtin.file', 'wait_healthy.py') }}\"",
    "cmd: python3 -c 'import sys'",
    "t: \"{{ lookup('ansible.builtin.file', role_path ~ '/../proxy/files/proxy_admin.py') }}\"",
])
def test_the_check_finds_every_form_the_roles_used(text):
    assert inline_programs(yaml.safe_load(text))


def test_the_check_passes_a_module_task():
    task = yaml.safe_load("- ascend.fleet.fleet_weights: {state: checked, path: /x, model: a/b}\n"
                          "- ansible.builtin.command: {argv: [python3, --version]}")
    assert inline_programs(task) == []
