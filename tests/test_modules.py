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


# -- the node-side modules, run as Ansible runs them on a node (their file and an arguments file)


def run_module(name: str, args: dict, tmp_path: Path, check_mode: bool = False) -> dict:
    argsfile = tmp_path / f"args-{name}.json"
    argsfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check_mode}}))
    proc = subprocess.run([sys.executable, str(REPO / "plugins" / "modules" / f"{name}.py"), str(argsfile)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert proc.returncode == (1 if result.get("failed") else 0), result
    return result


class _Http:
    """A loopback HTTP server answering with handler(method, path, body) -> (status, json)."""

    def __init__(self, handler) -> None:
        import http.server
        import threading

        outer = handler

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_a):
                pass

            def _answer(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null") if length else None
                status, answer = outer(method, self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_wait_healthy_simple_form_healthy_then_dead_when_the_container_is_gone(tmp_path):
    server = _Http(lambda method, path, body: (200, {"ok": True}))
    try:
        ok = run_module("fleet_wait_healthy", {"container": "no-such-container-here", "urls": [server.url + "/h"],
                                               "timeout_s": 30, "interval_s": 0.2}, tmp_path)
    finally:
        server.stop()
    assert ok["state"] == "healthy" and ok["healthy"] == [server.url + "/h"] and not ok.get("failed")
    dead = run_module("fleet_wait_healthy", {"container": "no-such-container-here", "urls": [server.url + "/h"],
                                             "timeout_s": 30, "interval_s": 0.2}, tmp_path)
    assert dead["failed"] and dead["state"] == "dead" and dead["pending"] == [server.url + "/h"]
    assert "container is missing" in dead["msg"] and server.url in dead["msg"]


def test_wait_healthy_spec_form_reports_the_dead_container_for_the_rescue(tmp_path):
    spec = {"node": "decode-0", "ip": "127.0.0.1", "container": "no-such-container-here",
            "ranks": [{"dp_rank": 0, "api_port": 9}], "peers": []}
    state_file = tmp_path / "run" / "wait.json"
    args = {"spec": spec, "state_file": str(state_file), "timeout_s": 60, "round_s": 5, "interval_s": 0.2}
    checked = run_module("fleet_wait_healthy", args, tmp_path, check_mode=True)
    assert checked["state"] == "dead" and not state_file.exists()  # check mode writes nothing
    result = run_module("fleet_wait_healthy", args, tmp_path)
    assert result["failed"] and result["state"] == "dead" and result["node"] == "decode-0"
    assert result["dead"] == [{"node": "decode-0", "what": "container no-such-container-here is missing"}]
    assert result["pending"] == [9] and "started_at" in result and "container" in result
    assert json.loads(state_file.read_text())["started"] == ""
    bad = run_module("fleet_wait_healthy", {**args, "spec": {"node": "x"}}, tmp_path)
    assert bad["failed"] and "spec lacks ip, container, ranks" in bad["msg"]
    both = run_module("fleet_wait_healthy", {**args, "urls": ["http://127.0.0.1:9"], "container": "c"}, tmp_path)
    assert both["failed"] and "mutually exclusive" in both["msg"]


class _Proxy:
    """The PD proxy's admin API as the upgrade role uses it: a removed instance is dropped
    from the lists once `drain_polls` list calls have seen it (its requests finishing); an
    added one is listed at once, or never when refuse_add."""

    def __init__(self, drain_polls: int = 2, refuse_add: bool = False) -> None:
        self.lists = {"prefill": ["10.0.0.1:7000"], "decode": ["10.0.0.2:7100", "10.0.0.2:7101"]}
        self.draining: dict[str, int] = {}
        self.drain_polls, self.refuse_add = drain_polls, refuse_add
        self.posts: list[tuple[str, dict]] = []
        self.http = _Http(self.answer)
        self.url = self.http.url

    def answer(self, method, path, body):
        if path == "/healthcheck":
            return 200, {"request_num": len(self.draining)}
        kind = body["type"]
        self.posts.append((path, body))
        if path == "/instances/remove":
            for inst in body["instances"]:
                self.draining[inst] = self.drain_polls
            return 200, {"message": "removing", f"current_{kind}_instances": self.lists[kind]}
        for inst in list(self.draining):
            self.draining[inst] -= 1
            if self.draining[inst] <= 0:
                del self.draining[inst]
                for lst in self.lists.values():
                    if inst in lst:
                        lst.remove(inst)
        if not self.refuse_add:
            self.lists[kind] += [i for i in body["instances"] if i not in self.lists[kind]]
        return 200, {f"current_{kind}_instances": list(self.lists[kind])}


def test_proxy_admin_drains_and_adds_back_check_mode_changes_nothing(tmp_path):
    proxy = _Proxy()
    decode = ["10.0.0.2:7100", "10.0.0.2:7101"]
    try:
        args = {"state": "absent", "url": proxy.url, "kind": "decode", "instances": decode, "timeout_s": 60}
        would = run_module("fleet_proxy_admin", args, tmp_path, check_mode=True)
        assert would["changed"] is True and proxy.lists["decode"] == decode
        assert not [p for p, _ in proxy.posts if p == "/instances/remove"]
        out = run_module("fleet_proxy_admin", args, tmp_path)
        assert out["changed"] is True and proxy.lists["decode"] == [] and proxy.lists["prefill"] == ["10.0.0.1:7000"]
        assert out["msg"] == "drained: the proxy no longer lists 2 decode entries", out
        assert any("remove decode 10.0.0.2:7100 10.0.0.2:7101" in line for line in out["progress"])
        again = run_module("fleet_proxy_admin", args, tmp_path)
        assert again["changed"] is False  # already out
        back = run_module("fleet_proxy_admin", {**args, "state": "present"}, tmp_path)
        assert back["changed"] is True and proxy.lists["decode"] == decode
        assert back["msg"] == "added: the proxy lists every decode entry (2)"
    finally:
        proxy.http.stop()


def test_proxy_admin_timeout_fails_naming_what_is_still_missing(tmp_path):
    proxy = _Proxy(refuse_add=True)
    try:
        out = run_module("fleet_proxy_admin", {"state": "present", "url": proxy.url, "kind": "decode",
                                               "instances": ["10.0.0.9:7100"], "timeout_s": 1}, tmp_path)
    finally:
        proxy.http.stop()
    assert out["failed"] and out["msg"] == "TIMEOUT after 1 s: not listed: 10.0.0.9:7100", out
    unreachable = run_module("fleet_proxy_admin", {"state": "absent", "url": "http://127.0.0.1:9", "kind": "decode",
                                                   "instances": ["10.0.0.9:7100"]}, tmp_path)
    assert unreachable["failed"] and "Connection refused" in unreachable["msg"], unreachable
    none = run_module("fleet_proxy_admin", {"state": "absent", "url": "http://127.0.0.1:9", "kind": "decode"},
                      tmp_path)
    assert none["failed"] and "needs at least one instance" in none["msg"]
