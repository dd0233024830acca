"""The ``ascend-fleet`` command without a lab: event handling (recorded runner events and
edge cases), exit codes of bad input, a real run through ansible-runner refused by the
inventory validation, report.json, and report.html rendered by a headless Chromium."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ascend_fleet.reporthtml import FAILED, PALETTE, render_html
from ascend_fleet.runreport import RunTracker, phase_plan

REPO = Path(__file__).resolve().parents[1]
EVENTS = REPO / "tests" / "cli_events"
SITE_PHASES = [
    "Validate the inventory",
    "Facts and preflight",
    "NPU network",
    "Image",
    "Weights",
    "Deploy in order",
    "Proxy",
    "Verify",
]


def cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed console script when there is one (pip install -e .), else the module."""
    script = Path(sys.executable).parent / "ascend-fleet"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "ascend_fleet.cli"]
    return subprocess.run(
        [*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )


def load_events(name: str) -> list[dict]:
    with gzip.open(EVENTS / name, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def track(events: list[dict], playbook: str = "site.yml") -> tuple[RunTracker, list[dict]]:
    tracker = RunTracker(phase_plan(REPO / playbook))
    records = [rec for event in events for rec in tracker.feed(event)]
    return tracker, records


# -- PNG reading (no imaging library): enough for Chromium's screenshots ------------------
def png_pixels(path: Path) -> tuple[int, int, list[tuple[int, int, int]]]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    pixels = [tuple(row[x * channels : x * channels + 3]) for row in rows for x in range(width)]
    return width, height, pixels


def screenshot(html: Path, out: Path, tmp_path: Path) -> Path:
    """report.html in a real headless Chromium (a new empty profile), as a PNG."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("chromium not installed (scripts/setup.sh installs the Debian package)")
    profile = tmp_path / f"profile-{out.stem}"
    profile.mkdir()
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1200,900",
            f"--screenshot={out}",
            html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-2000:]
    return out


def red_pixels(pixels) -> int:
    want = tuple(int(FAILED[i : i + 2], 16) for i in (1, 3, 5))
    return sum(1 for p in pixels if all(abs(p[i] - want[i]) <= 6 for i in range(3)))


# -- phases ------------------------------------------------------------------------------
def test_phase_plan_of_site_yml_follows_its_imports():
    plan = phase_plan(REPO / "site.yml")
    labels = list(dict.fromkeys(label for _, label in plan))
    assert [label for label in labels if label in SITE_PHASES] == SITE_PHASES
    serve_plays = [play for play, label in plan if label == "Deploy in order"]
    assert "Wait until every rank is healthy" in serve_plays and len(serve_plays) >= 3
    # A playbook of plain plays: one phase per play.
    stop = [label for _, label in phase_plan(REPO / "playbooks/stop.yml")]
    assert "Stop the decode engines" in stop


# -- recorded runs of the a3-1p1d lab (ansible-runner events, trimmed) ---------------------
def test_recorded_successful_bringup():
    tracker, records = track(load_events("a3-1p1d-up-ok.jsonl.gz"))
    report = tracker.report(verb="up", inventory="a3-1p1d", exit_code=tracker.exit_code(0))
    assert report["exit_code"] == 0
    assert report["hosts"] == ["prefill-0", "decode-0"]
    names = [p["name"] for p in report["phases"]]
    assert [n for n in names if n in SITE_PHASES] == SITE_PHASES
    for phase in report["phases"]:
        assert phase["status"] in ("done", "skipped"), phase
        for hp in phase["hosts"].values():
            assert hp["failure"] is None
            assert hp["start"] <= hp["end"]
    assert report["failures"] == []
    assert any("answered:" in note["message"] for note in report["notes"])
    # The records of the progress output: each phase starts once, then ends.
    starts = [r["phase"] for r in records if r["type"] == "phase" and r["status"] == "started"]
    assert starts == names
    assert all(r["host"] in report["hosts"] for r in records if r["type"] == "task")


def test_recorded_rank_crash_names_node_and_phase():
    tracker, _ = track(load_events("a3-1p1d-up-crash.jsonl.gz"))
    assert tracker.exit_code(2) == 1
    report = tracker.report(verb="up", inventory="a3-1p1d", exit_code=1)
    failures = {f["host"]: f for f in report["failures"]}
    assert {f["phase"] for f in failures.values()} == {"Deploy in order"}
    assert "decode-0 DP rank 5 (port 7105): rank process exited" in failures["decode-0"]["message"]
    phases = {p["name"]: p for p in report["phases"]}
    assert phases["Deploy in order"]["status"] == "failed"
    assert phases["Weights"]["hosts"]["decode-0"]["status"] == "done"
    assert "Verify" not in phases  # the run stopped at the failed phase


# -- edge cases of the event stream --------------------------------------------------------
def ev(kind: str, second: int, **data) -> dict:
    stamp = f"2026-01-01T00:00:{second:02d}.000000+00:00"
    if kind.startswith("runner_on_") and kind != "runner_on_start":
        data.setdefault("start", stamp)
        data.setdefault("end", stamp)
    return {"event": kind, "created": stamp, "event_data": data}


def test_rescue_ignore_errors_unreachable_skipped_and_unknown_plays():
    plan = [("Play A", "One"), ("Play B", "One"), ("Play C", "Two")]
    events = [
        ev("playbook_on_start", 0),
        ev("playbook_on_play_start", 1, play="Play A"),
        ev("runner_on_start", 1, host="h1", task="t1"),
        ev("runner_on_ok", 2, host="h1", task="t1", res={"changed": True}),
        ev("runner_on_start", 2, host="h2", task="t1"),
        ev("runner_on_failed", 3, host="h2", task="t1", ignore_errors=True, res={"msg": "ignored"}),
        ev("playbook_on_play_start", 4, play="Play B"),  # same phase, second play
        ev("runner_on_start", 4, host="h1", task="wait"),
        ev("runner_on_failed", 5, host="h1", task="wait", res={"msg": "first try failed"}),
        ev("runner_on_start", 6, host="h1", task="rescue"),  # the rescue block goes on
        ev("runner_on_ok", 7, host="h1", task="rescue", res={"changed": False}),
        ev("runner_on_start", 7, host="h3", task="only skips"),
        ev("runner_on_skipped", 8, host="h3", task="only skips"),
        ev("playbook_on_play_start", 9, play="Play C"),
        ev("runner_on_start", 9, host="h1", task="x"),
        ev("runner_on_unreachable", 10, host="h1", task="x", res={"msg": "ssh: connect: No route to host"}),
        ev("runner_on_start", 10, host="h2", task="x"),
        ev(
            "runner_on_failed",
            11,
            host="h2",
            task="x",
            res={"msg": "non-zero return code", "rc": 3, "stderr": "line1\n\x1b[31mboom\x1b[0m"},
        ),
        ev("playbook_on_play_start", 12, play="Not in the plan (extra)"),
        ev("playbook_on_stats", 13, failures={"h2": 1}, dark={"h1": 1}, ok={"h1": 2}, changed={"h1": 1}),
    ]
    tracker = RunTracker(plan)
    records = [rec for event in events for rec in tracker.feed(event)]
    report = tracker.report(exit_code=tracker.exit_code(4))
    phases = {p["name"]: p for p in report["phases"]}
    assert list(phases) == ["One", "Two", "Not in the plan"]
    one = phases["One"]
    assert one["plays"] == ["Play A", "Play B"]
    assert one["hosts"]["h1"]["status"] == "done" and one["hosts"]["h1"]["rescued"] == 1
    assert one["hosts"]["h1"]["changed"] == 1
    assert one["hosts"]["h2"]["status"] == "done" and one["hosts"]["h2"]["failure"] is None
    assert one["hosts"]["h3"]["status"] == "skipped"
    assert one["status"] == "done"
    assert one["start"] == "2026-01-01T00:00:01.000000+00:00"
    two = phases["Two"]["hosts"]
    assert two["h1"]["status"] == "failed" and two["h1"]["failure"]["unreachable"] is True
    assert "No route to host" in two["h1"]["failure"]["message"]
    assert two["h2"]["failure"]["message"] == "exit code 3\nstderr: line1\nboom"  # no colour codes
    assert {(f["host"], f["phase"]) for f in report["failures"]} == {("h1", "Two"), ("h2", "Two")}
    assert report["exit_code"] == 1
    statuses = [r["status"] for r in records if r["type"] == "task"]
    assert statuses == ["changed", "ignored", "failed", "ok", "skipped", "unreachable", "failed"]


def test_a_failure_ansible_counts_as_rescued_is_not_a_failure():
    events = [
        ev("playbook_on_play_start", 0, play="P"),
        ev("runner_on_start", 0, host="h", task="t"),
        ev("runner_on_failed", 1, host="h", task="t", res={"msg": "handled"}),
        ev("playbook_on_stats", 2, failures={}, rescued={"h": 1}, ok={"h": 1}),
    ]
    tracker = RunTracker([])
    for event in events:
        tracker.feed(event)
    assert tracker.failures == []
    assert tracker.exit_code(0) == 0


def test_exit_codes_of_the_tracker():
    validate_only = RunTracker([])
    for event in [
        ev("playbook_on_play_start", 0, play="Validate"),
        ev("runner_on_failed", 1, host="h", task="plan", role="validate", res={"msg": "bad value"}),
    ]:
        validate_only.feed(event)
    assert validate_only.exit_code(2) == 2  # the inventory is refused: bad input
    assert RunTracker([]).exit_code(4) == 2  # Ansible stopped before any play
    assert validate_only.exit_code(0) == 0


# -- the command ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["up", "no-such-topology"], "not a shipped topology name (one of: a2-1m-4p4d"),
        (["status", "./missing.yml"], "'./missing.yml': no such file"),
        (["up", "a3-1p1d", "-e", "fleet_nic_name"], "-e number 1: 'fleet_nic_name' has no '='"),
        (["up", "a3-1p1d", "-e", "a=1", "-e", "{bad json"], "-e number 2: not valid JSON/YAML"),
        (["up", "a3-1p1d", "-e", "@missing-vars.yml"], "file 'missing-vars.yml' not found"),
        (["up", "a3-1p1d", "-e", "9x=1"], "'9x' is not a variable name"),
        (["up", "inventories/a3-1p1d/hosts.yml", "-i", "nope.yml"], "-i 'nope.yml': no such inventory file"),
        (["lab", "up", "no-such-topology"], "unknown topology 'no-such-topology'"),
        (["frobnicate", "a3-1p1d"], "invalid choice: 'frobnicate'"),
        (["up"], "the following arguments are required: inventory"),
        (["up", "a3-1p1d", "--plain", "--json"], "not allowed with argument"),
    ],
)
def test_bad_input_exits_2_before_anything_runs(tmp_path, args, expected):
    runs = tmp_path / "runs"
    extra = ["--runs-dir", str(runs)] if args[0] not in ("lab", "frobnicate") and len(args) > 1 else []
    proc = cli(*args, *extra)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert not runs.exists()  # nothing started: no run record


def test_secret_values_of_bad_extra_vars_are_not_echoed(tmp_path):
    proc = cli("up", "a3-1p1d", "-e", "weights_hub_token=s3cr3t-value {", "--runs-dir", str(tmp_path))
    # one word is not NAME=VALUE; the value of the good one is never printed
    assert proc.returncode == 2
    assert "s3cr3t" not in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def refused_run(tmp_path_factory):
    """A real run through ansible-runner that the inventory validation refuses (controller only).

    The inventory's addresses are lab addresses no node uses (never off this machine) and its
    NIC name carries a shell character.
    """
    tmp = tmp_path_factory.mktemp("refused")
    text = (REPO / "inventories/a3-1p1d/hosts.yml").read_text()
    text = text.replace("198.51.100.11", "198.18.15.250").replace("203.0.113.21", "198.18.15.251")
    text = text.replace("fleet_nic_name: enp67s0f0np0", 'fleet_nic_name: "eth0;reboot"')
    assert "eth0;reboot" in text
    inventory = tmp / "bad-nic.yml"
    inventory.write_text(text)
    proc = cli("up", str(inventory), "--json", "--runs-dir", str(tmp / "runs"),
               "-e", f"fleet_api_key={API_KEY}", "-e", json.dumps({"weights_token": HUB_TOKEN}))
    [run_dir] = (tmp / "runs").iterdir()
    return proc, run_dir


API_KEY = "sk-run-record-0a1b2c3d"
HUB_TOKEN = "ms-token-9f8e7d6c"


def test_no_extra_var_value_is_kept_in_the_run_record(refused_run):
    """-e values reach ansible-playbook as private @files, removed after the run: neither the
    command line ansible-runner records nor any other file of the record holds them."""
    proc, run_dir = refused_run
    assert proc.returncode == 2
    for path in run_dir.rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            assert API_KEY.encode() not in text and HUB_TOKEN.encode() not in text, path
    command = json.loads((run_dir / "artifacts" / "ansible" / "command").read_text())["command"]
    files = [arg[1:] for arg in command if arg.startswith("@")]
    assert len(files) == 2 and all("extra-vars-" in f for f in files)
    assert not any(Path(f).exists() for f in files), "the private -e files are removed after the run"
    assert API_KEY not in proc.stdout + proc.stderr


def test_extra_var_files_parse_as_ansible_playbook_does(tmp_path):
    from ascend_fleet.runplay import extra_var_files

    args = extra_var_files(["a=1 b='two words'", '{"n": 3, "flag": false}', "@given.yml"], tmp_path)
    assert args[2] == "@given.yml"
    first, second = (json.loads(Path(a[1:]).read_text()) for a in args[:2])
    assert first == {"a": "1", "b": "two words"}  # NAME=VALUE: strings, as ansible-playbook reads them
    assert second == {"n": 3, "flag": False}
    assert all(oct(Path(a[1:]).stat().st_mode & 0o777) == "0o600" for a in args[:2])


def test_refused_inventory_is_exit_2_with_json_lines_and_a_report(refused_run):
    proc, run_dir = refused_run
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert run_dir.name.endswith("-up-bad-nic")
    assert oct(run_dir.stat().st_mode & 0o777) == "0o700"
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0] == {
        "phase": "Validate the inventory",
        "status": "started",
        "time": lines[0]["time"],
        "type": "phase",
    }
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["exit_code"] == 2 and summary["run_dir"] == str(run_dir)
    assert any(line.get("status") == "failed" and line["type"] == "task" for line in lines)

    report = json.loads((run_dir / "report.json").read_text())
    assert report["exit_code"] == 2 and report["verb"] == "up" and report["playbook"] == "site.yml"
    [phase] = report["phases"]
    assert phase["name"] == "Validate the inventory" and phase["status"] == "failed"
    [failure] = report["failures"]
    assert failure["phase"] == "Validate the inventory"
    assert "fleet_nic_name = 'eth0;reboot'" in failure["message"]
    assert failure["task"].startswith("Compute and validate the deployment plan")
    host = phase["hosts"][failure["host"]]
    assert host["status"] == "failed" and host["start"] <= host["end"]
    # ansible-runner's artifacts are kept beside the report
    artifacts = run_dir / "artifacts" / "ansible"
    assert (artifacts / "rc").read_text().strip() == "2"
    assert any((artifacts / "job_events").iterdir())
    assert (run_dir / "report.html").read_text().count("eth0;reboot") >= 1


def test_report_html_of_a_failed_run_shows_red_in_chromium(tmp_path):
    tracker, _ = track(load_events("a3-1p1d-up-crash.jsonl.gz"))
    html = tmp_path / "report.html"
    html.write_text(render_html(tracker.report(verb="up", inventory="a3-1p1d", exit_code=1)))
    width, height, pixels = png_pixels(screenshot(html, tmp_path / "failed.png", tmp_path))
    assert (width, height) == (1200, 900)
    assert len(set(pixels)) > 20, "a blank page"
    assert red_pixels(pixels) > 500, "no failed (red) bar on the timeline"


def test_report_html_of_a_good_run_in_chromium(tmp_path):
    tracker, _ = track(load_events("a3-1p1d-up-ok.jsonl.gz"))
    report = tracker.report(verb="up", inventory="a3-1p1d", exit_code=0)
    html = tmp_path / "report.html"
    html.write_text(render_html(report))
    text = html.read_text()
    assert "<svg" in text
    assert not re.search(r"\b(src|href)\s*=|url\(|@import", text)  # no external assets
    assert text.count('class="bar ') == sum(len(p["hosts"]) for p in report["phases"])
    _, _, pixels = png_pixels(screenshot(html, tmp_path / "ok.png", tmp_path))
    assert len(set(pixels)) > 20
    assert red_pixels(pixels) == 0
    colours = {tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in PALETTE}
    assert sum(1 for p in pixels if p in colours) > 5000  # the phases' bars are drawn


def test_live_table_mid_run_and_plain_lines():
    """The live view at a moment of a recorded run: done and running cells with times; and
    the plain output's lines for the same events."""
    import io

    from rich.console import Console

    from ascend_fleet.runprogress import LiveOutput, PlainOutput
    from ascend_fleet.runreport import parse_time

    events = load_events("a3-1p1d-up-ok.jsonl.gz")
    tracker = RunTracker(phase_plan(REPO / "site.yml"))
    plain = PlainOutput(io.StringIO())
    plain.start(tracker, "title")
    for event in events:
        plain.records(tracker.feed(event))
        if tracker.current is not None and tracker.current.name == "Deploy in order":
            break
    live = LiveOutput(io.StringIO())
    live.tracker, live.title, live.lab_status = tracker, "ascend-fleet up a3-1p1d", ""
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(live.render(now=parse_time(event["created"])))
    text = console.export_text()
    weights = next(line for line in text.splitlines() if "Weights" in line)
    assert weights.count("✓") == 2  # done on both hosts, with the time
    deploy = next(line for line in text.splitlines() if "Deploy in order" in line)
    assert "✓" not in deploy  # just started: nobody is done there
    assert "prefill-0" in text and "decode-0" in text and "elapsed" in text

    lines = plain.stream.getvalue().splitlines()
    assert lines[0] == "== title"
    assert any(line.endswith("phase Weights: done") for line in lines)
    assert any(re.search(r"^\d\d:\d\d:\d\d   decode-0:  +(changed|ok) +\S", line) for line in lines)


def test_many_hosts_show_counts_per_state():
    import io

    from rich.console import Console

    from ascend_fleet.runprogress import LiveOutput

    tracker = RunTracker([])
    tracker.feed(ev("playbook_on_play_start", 0, play="Image"))
    for i in range(12):
        tracker.feed(ev("runner_on_start", 1, host=f"node-{i}", task="pull"))
        if i < 9:
            tracker.feed(ev("runner_on_ok", 2, host=f"node-{i}", task="pull", res={}))
    tracker.feed(ev("runner_on_failed", 3, host="node-9", task="pull", res={"msg": "no"}))
    live = LiveOutput(io.StringIO())
    live.tracker, live.title, live.lab_status = tracker, "t", ""
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(live.render(now=datetime(2026, 1, 1, 0, 0, 3, tzinfo=UTC)))
    text = console.export_text()
    assert "node-3" not in text.split("now:")[0]  # no column per host
    header = next(line for line in text.splitlines() if "phase" in line)
    assert all(state in header for state in ("done", "running", "failed", "skipped"))
    row = next(line for line in text.splitlines() if "Image" in line)
    cells = [cell.strip() for cell in row.strip().strip("│").split("│")]
    # done, running, failed, skipped: a host is running in the phase until the phase ends
    assert cells == ["Image", "3s", "", "11", "1", ""], cells
