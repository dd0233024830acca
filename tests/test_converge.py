"""Converge in one probe (ascend_fleet/converge.py, module fleet_converge_probe, the converge
role's place in site.yml): a fleet that holds exactly the record of its last completed run
skips the phases; anything that differs is named and runs them."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from ascend_fleet.converge import code_digest, decide, input_names, inputs_digest, verdict
from tests.conftest import REPO
from tests.test_modules import _Http, run_module

INPUTS = "a" * 64
RECORD = {
    "version": 1,
    "inputs": INPUTS,
    "observed": {
        "containers": {"vllm-ascend": {"state": "running", "started_at": "2026-11-30T10:00:00Z", "image": "img:1"}},
        "files": {"/etc/ascend-fleet/launch.sh": "1" * 40, "/etc/ascend-fleet/plan.json": "2" * 40},
        "weights": True,
        "npu": {
            "driver_version": "25.2.0",
            "hccn_conf_sha1": "3" * 40,
            "health": ["OK", "OK"],
            "devices": {"0": {"ip": "198.19.0.10", "link": "UP"}, "1": {"ip": "198.19.0.11", "link": "UP"}},
        },
    },
    "recorded_at": "2026-11-30T10:01:00Z",
}


def probe_now(**changes) -> dict:
    """The probe's result for a node that holds exactly RECORD, with changes applied."""
    observed = copy.deepcopy(RECORD["observed"])
    observed["containers"]["vllm-ascend"]["status"] = "Up 5 minutes"
    result = {"record": copy.deepcopy(RECORD), "observed": observed, "health": {"http://198.18.0.2:7100/health": 200}}
    for path, value in changes.items():
        *parents, leaf = path.split("|")
        target = result
        for key in parents:
            target = target[key]
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return result


def test_a_node_holding_its_record_and_answering_is_converged():
    assert decide("decode-0", INPUTS, probe_now()) == []


@pytest.mark.parametrize(
    ("change", "value", "expected"),
    [
        ("record", None, "decode-0: no record of a completed site.yml run"),
        ("record|version", 99, "record is of another format"),
        ("record|inputs", "b" * 64, "the settings, the plan or the toolkit changed"),
        ("observed|containers|vllm-ascend|started_at", "2026-11-30T11:00:00Z", "container vllm-ascend was restarted"),
        ("observed|containers|vllm-ascend|state", "stopped", "container vllm-ascend is stopped"),
        ("observed|containers|vllm-ascend", {"state": "absent", "status": "absent"}, "container vllm-ascend is gone"),
        ("observed|files|/etc/ascend-fleet/launch.sh", "9" * 40, "/etc/ascend-fleet/launch.sh changed"),
        ("observed|weights", False, "the weights are incomplete (were complete)"),
        ("observed|npu|hccn_conf_sha1", "4" * 40, "/etc/hccn.conf changed"),
        ("observed|npu|devices|1", {"ip": "198.19.0.11", "link": "DOWN"}, "device 1: link DOWN (was UP)"),
        ("observed|npu|devices|1", None, "device 1 is missing"),
        ("observed|npu|health", ["OK", "Alarm"], "npu-smi health is ['OK', 'Alarm']"),
        ("observed|npu|driver_version", "25.3.0", "driver version 25.3.0 (was 25.2.0)"),
        ("health|http://198.18.0.2:7100/health", -1, "http://198.18.0.2:7100/health answers nothing"),
        ("health|http://198.18.0.2:7100/health", 503, "http://198.18.0.2:7100/health answers 503"),
    ],
)
def test_each_difference_is_named(change, value, expected):
    reasons = decide("decode-0", INPUTS, probe_now(**{change: value}))
    assert len(reasons) == 1, reasons
    assert reasons[0].startswith("decode-0: ") and expected in reasons[0], reasons


def test_unreachable_or_failed_probe_is_not_converged():
    assert decide("decode-0", INPUTS, {"unreachable": True, "msg": "ssh: timed out"}) == [
        "decode-0: does not answer (ssh: timed out)"
    ]
    assert "the probe failed (boom)" in decide("decode-0", INPUTS, {"failed": True, "msg": "boom"})[0]


def test_verdict_is_for_the_whole_fleet():
    ok = {"reasons": [], "converged": True}
    both = verdict({"prefill-0": ok, "decode-0": ok})
    assert both["converged"] is True and both["hosts"] == 2 and both["reasons"] == []
    assert both["message"].startswith("Converged: every node (2) holds what the last completed run left")
    one = verdict({"prefill-0": ok, "decode-0": {"reasons": ["decode-0: container x is gone"]}})
    assert one["converged"] is False and one["reasons"] == ["decode-0: container x is gone"]
    assert one["message"] == "Running every phase: decode-0: container x is gone"
    down = verdict({"prefill-0": ok, "decode-0": {"unreachable": True, "msg": "no route"}})
    assert down["converged"] is False and down["reasons"] == ["decode-0: does not answer (no route)"]
    skipped = verdict({"prefill-0": ok, "decode-0": {"skipped": True}})
    assert skipped["converged"] is False and "decode-0: not probed" in skipped["reasons"][0]
    assert verdict({})["converged"] is False
    many = verdict({f"n{i:02d}": {"reasons": [f"n{i:02d}: r"]} for i in range(20)})
    assert len(many["reasons"]) == 13 and many["reasons"][-1] == "... and 8 more"


def test_inputs_are_the_deployment_settings_the_plan_and_the_code():
    names = input_names({"serve_shm_size", "eval_enabled", "ops_logs_dir", "verify_prompt", "converge_fast",
                         "image_tag", "weights_revision"}, {"fleet_api_key", "fleet_plan", "fleet_defaults",
                                                            "ansible_host", "hostvars"})
    assert names == ["fleet_api_key", "image_tag", "serve_shm_size", "weights_revision"]
    base = inputs_digest({"serve_shm_size": "500g"}, {"topology": "a3-1p1d"}, "c1")
    assert base == inputs_digest({"serve_shm_size": "500g"}, {"topology": "a3-1p1d"}, "c1")
    assert len({base,
                inputs_digest({"serve_shm_size": "400g"}, {"topology": "a3-1p1d"}, "c1"),
                inputs_digest({"serve_shm_size": "500g"}, {"topology": "a2-4p4d"}, "c1"),
                inputs_digest({"serve_shm_size": "500g"}, {"topology": "a3-1p1d"}, "c2")}) == 4


def test_code_digest_follows_every_file(tmp_path):
    (tmp_path / "roles" / "serve").mkdir(parents=True)
    (tmp_path / "roles" / "serve" / "main.yml").write_text("a\n")
    (tmp_path / "roles" / "__pycache__").mkdir()
    (tmp_path / "roles" / "__pycache__" / "x.pyc").write_bytes(b"1")
    first = code_digest([tmp_path / "roles"])
    (tmp_path / "roles" / "__pycache__" / "x.pyc").write_bytes(b"2")
    assert code_digest([tmp_path / "roles"]) == first
    (tmp_path / "roles" / "serve" / "main.yml").write_text("b\n")
    assert code_digest([tmp_path / "roles"]) != first


def test_the_module_observes_records_atomically_and_reports_changed_only_on_a_difference(tmp_path):
    launch = tmp_path / "launch.sh"
    launch.write_text("echo 1\n")
    state = tmp_path / "state" / "converged.json"
    server = _Http(lambda method, path, body: (200, {}) if path == "/health" else (503, {}))
    try:
        args = {"state_file": str(state), "containers": [], "files": [str(launch), str(tmp_path / "absent")],
                "urls": [server.url + "/health", server.url + "/other"]}
        seen = run_module("fleet_converge_probe", args, tmp_path)
        assert seen["changed"] is False and seen["record"] is None
        assert seen["health"] == {server.url + "/health": 200, server.url + "/other": 503}
        assert seen["observed"]["files"][str(tmp_path / "absent")] is None
        assert len(seen["observed"]["files"][str(launch)]) == 40
        assert not state.exists()
        # check mode writes nothing
        dry = run_module("fleet_converge_probe", {**args, "state": "recorded", "inputs": INPUTS}, tmp_path,
                         check_mode=True)
        assert dry["changed"] is True and not state.exists()
        first = run_module("fleet_converge_probe", {**args, "state": "recorded", "inputs": INPUTS}, tmp_path)
        assert first["changed"] is True and state.stat().st_mode & 0o777 == 0o600
        record = json.loads(state.read_text())
        assert record["inputs"] == INPUTS and record["version"] == 1 and "health" not in record
        again = run_module("fleet_converge_probe", {**args, "state": "recorded", "inputs": INPUTS}, tmp_path)
        assert again["changed"] is False
        assert json.loads(state.read_text())["recorded_at"] == record["recorded_at"]
        assert [p.name for p in state.parent.iterdir()] == ["converged.json"]  # no temporary file left
        launch.write_text("echo 2\n")
        changed = run_module("fleet_converge_probe", {**args, "state": "recorded", "inputs": INPUTS}, tmp_path)
        assert changed["changed"] is True
    finally:
        server.stop()
    missing = run_module("fleet_converge_probe", {**args, "state": "recorded"}, tmp_path)
    assert missing["failed"] and "needs inputs" in missing["msg"]


def test_site_probes_before_the_phases_and_records_after_verify():
    names = [entry["ansible.builtin.import_playbook"] for entry in yaml.safe_load((REPO / "site.yml").read_text())]
    probe, record = names.index("playbooks/phases/converge.yml"), names.index("playbooks/phases/converge_record.yml")
    assert names.index("playbooks/lock.yml") < probe < names.index("playbooks/phases/preflight.yml")
    assert names.index("playbooks/phases/verify.yml") < record < names.index("playbooks/unlock.yml")


@pytest.mark.parametrize("phase", ["preflight", "npu_network", "image", "weights", "serve", "proxy"])
def test_every_play_of_a_skippable_phase_ends_at_once_on_a_converged_fleet(phase):
    for play in yaml.safe_load((REPO / "playbooks" / "phases" / f"{phase}.yml").read_text()):
        first = (play.get("pre_tasks") or play.get("tasks"))[0]
        assert first.get("ansible.builtin.meta") == "end_play", (phase, play["name"])
        assert first.get("when") == "converge_skip | default(false) | bool", (phase, play["name"])


@pytest.mark.parametrize("phase", ["verify", "eval"])
def test_verify_and_eval_always_run(phase):
    text = (REPO / "playbooks" / "phases" / f"{phase}.yml").read_text()
    assert "converge_skip" not in text


def test_a_converged_run_keeps_the_record_it_matched():
    """The record play ends at once on a converged fleet: the probe found the record equal."""
    play = yaml.safe_load((REPO / "playbooks" / "phases" / "converge_record.yml").read_text())[0]
    first = play["tasks"][0]
    assert first.get("ansible.builtin.meta") == "end_play"
    assert first.get("when") == "converge_skip | default(false) | bool"


def test_site_evaluates_only_when_asked_and_the_eval_playbook_always():
    """site.yml ends the evaluation play at once unless eval_enabled; playbooks/eval.yml runs it."""
    site = {e["ansible.builtin.import_playbook"]: e for e in yaml.safe_load((REPO / "site.yml").read_text())}
    assert site["playbooks/phases/eval.yml"].get("vars") == {"eval_from_site": True}
    assert "when" not in site["playbooks/phases/eval.yml"]
    play = yaml.safe_load((REPO / "playbooks" / "phases" / "eval.yml").read_text())[0]
    first = play["pre_tasks"][0]
    assert first.get("ansible.builtin.meta") == "end_play"
    assert first.get("when") == "eval_from_site | default(false) | bool and not (eval_enabled | bool)"
    entry = yaml.safe_load((REPO / "playbooks" / "eval.yml").read_text())
    assert all("eval_from_site" not in str(e) for e in entry)

