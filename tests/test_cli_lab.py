"""``ascend-fleet`` against the a3-1p1d lab (marker `lab`; the lab is shared with tests/test_ops.py).

A failed bring-up first (stop through the CLI, a rank that crashes while loading the model):
the report names the node and the phase and its timeline shows red. Then
``ascend-fleet up a3-1p1d --lab --plain`` brings the service back and ends with the verified
answer, leaving the shared lab serving.
"""

from __future__ import annotations

import json

import pytest

from tests.lab.conftest import lab_unavailable, labctl, record_serving
from tests.test_cli import SITE_PHASES, cli, png_pixels, red_pixels, screenshot

pytestmark = pytest.mark.lab

TOPOLOGY = "a3-1p1d"
HOSTS = ["prefill-0", "decode-0"]


@pytest.fixture(scope="module")
def lab():
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    labctl("up", TOPOLOGY)  # for `stop --lab` (it runs against a lab that is up); `up --lab` runs it again
    yield TOPOLOGY
    labctl("engine", "clear", TOPOLOGY, check=False)


def only_run(runs) -> tuple:
    [run_dir] = list(runs.iterdir())
    return run_dir, json.loads((run_dir / "report.json").read_text())


def test_failed_bringup_names_node_and_phase(lab, tmp_path):
    stop = cli("stop", TOPOLOGY, "--lab", "--plain", "--runs-dir", str(tmp_path / "stop"))
    assert stop.returncode == 0, stop.stdout[-3000:]
    _, stopped = only_run(tmp_path / "stop")
    assert stopped["verb"] == "stop" and stopped["failures"] == []
    assert any(p["name"] == "Stop the decode engines" and p["status"] == "done" for p in stopped["phases"])

    labctl("engine", "set", TOPOLOGY, "crash_rank=decode-0:5")
    try:
        proc = cli("up", TOPOLOGY, "--lab", "--json", "--runs-dir", str(tmp_path / "up"))
    finally:
        labctl("engine", "clear", TOPOLOGY)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["type"] == "summary" and summary["exit_code"] == 1

    run_dir, report = only_run(tmp_path / "up")
    assert report["lab"]["rc"] == 0 and report["inventories"][-1] == f"lab/.state/{TOPOLOGY}/hosts.yml"
    failures = {f["host"]: f for f in report["failures"]}
    assert {f["phase"] for f in failures.values()} == {"Deploy in order"}
    failure = failures["decode-0"]
    assert "decode-0 DP rank 5" in failure["message"] and "rank process exited" in failure["message"]
    assert failure["task"] == "Stop here and report the failing engine"
    # prefill-0 is stopped with it (any_errors_fatal) but not blamed: its engine was healthy or starting
    for host in set(failures) - {"decode-0"}:
        assert f"{host}: not at fault" in failures[host]["message"], failures[host]["message"]
    phases = {p["name"]: p for p in report["phases"]}
    assert phases["Deploy in order"]["hosts"]["decode-0"]["status"] == "failed"
    assert all(phases[name]["status"] == "done" for name in SITE_PHASES[:5])
    html = (run_dir / "report.html").read_text()
    assert "decode-0" in html and "Deploy in order" in html and "rank 5" in html
    _, _, pixels = png_pixels(screenshot(run_dir / "report.html", tmp_path / "failed.png", tmp_path))
    assert red_pixels(pixels) > 200


def test_up_with_lab_ends_with_the_verified_answer(lab, tmp_path):
    proc = cli("up", TOPOLOGY, "--lab", "--plain", "--runs-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "lab: " in out  # labctl's lines, then the phases
    assert "answered:" in out
    assert f"up {TOPOLOGY}: ok in" in out
    run_dir, report = only_run(tmp_path)
    assert report["exit_code"] == 0 and report["failures"] == []
    assert report["hosts"] == HOSTS
    names = [p["name"] for p in report["phases"]]
    assert [n for n in names if n in SITE_PHASES] == SITE_PHASES
    for name in SITE_PHASES[1:]:
        phase = report["phases"][names.index(name)]
        assert phase["status"] == "done", phase
        assert set(phase["hosts"]) == set(HOSTS)
    assert phase["hosts"]["prefill-0"]["start"] <= phase["hosts"]["prefill-0"]["end"]
    assert any("answered:" in n["message"] and n["phase"] == "Verify" for n in report["notes"])
    # the engines were started again (they had been stopped): changed in the deploy phase
    assert report["phases"][names.index("Deploy in order")]["hosts"]["decode-0"]["changed"] > 0
    assert (run_dir / "artifacts" / "ansible" / "job_events").is_dir()
    _, _, pixels = png_pixels(screenshot(run_dir / "report.html", tmp_path / "ok.png", tmp_path))
    assert len(set(pixels)) > 20 and red_pixels(pixels) == 0
    record_serving(TOPOLOGY)  # what site.yml left: the next module starts from it
