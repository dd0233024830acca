"""Progress of a run on the terminal: a live phases x hosts table (rich), plain lines, or JSON lines."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

from .runreport import RunTracker, parse_time

SYMBOL = {"done": "✓", "running": "…", "failed": "✗", "skipped": "-"}
STYLE = {"done": "green", "running": "yellow", "failed": "bold red", "skipped": "dim"}
MAX_HOST_COLUMNS = 10


def _elapsed(start: str | None, end: str | None, now: datetime) -> str:
    a = parse_time(start)
    if a is None:
        return ""
    b = parse_time(end) or now
    value = max(0, round((b - a).total_seconds()))
    return f"{value // 60}m{value % 60:02d}s" if value >= 60 else f"{value}s"


class Output:
    """Base: what every output does with records, lab lines and the final report."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout

    def start(self, tracker: RunTracker, title: str) -> None:
        self.tracker, self.title = tracker, title

    def records(self, records: list[dict]) -> None:
        pass

    def lab_line(self, line: str) -> None:
        pass

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def stop(self) -> None:
        pass

    def summary(self, report: dict, run_dir: str) -> None:
        pass


def summary_lines(report: dict, run_dir: str) -> list[str]:
    lines = []
    notes = report.get("notes", [])
    # what the last phase that printed anything said (the verified answer, the status table)
    last = [n for n in notes if n["phase"] == notes[-1]["phase"]] if notes else []
    for note in last[-8:]:
        lines.append(f"{note['host']} [{note['phase']}]: {note['message']}")
    for fail in report.get("failures", []):
        kind = "UNREACHABLE" if fail.get("unreachable") else "FAILED"
        lines.append(f"{kind}: {fail['host']} in phase {fail['phase']!r}, task {fail.get('task')!r}:")
        lines.extend("    " + line for line in fail["message"].splitlines())
    if not report.get("phases") and report.get("ansible_output"):
        lines.append("Ansible stopped before any play:")
        lines.extend("    " + line for line in report["ansible_output"][-15:])
    verdict = {0: "ok", 1: "FAILED", 2: "refused (bad input)"}.get(report["exit_code"], "?")
    lines.append(
        f"{report['verb']} {report['inventory']}: {verdict} in {round(report.get('seconds') or 0)}s "
        f"(exit code {report['exit_code']})"
    )
    lines.append(f"report: {run_dir}/report.html (and report.json)")
    return lines


class PlainOutput(Output):
    """One line per event: phase starts and ends, every task result of every host."""

    def start(self, tracker, title):
        super().start(tracker, title)
        self.message(f"== {title}")

    def records(self, records):
        for rec in records:
            stamp = (parse_time(rec.get("time")) or datetime.now(UTC)).strftime("%H:%M:%S")
            if rec["type"] == "phase":
                if rec["status"] == "started":
                    self.message(f"{stamp} phase {rec['phase']}")
                else:
                    self.message(f"{stamp} phase {rec['phase']}: {rec['status']}")
            else:
                width = max(map(len, self.tracker.hosts), default=0) + 1
                line = f"{stamp}   {rec['host'] + ':':<{width}} {rec['status']:<11} {rec['task']}"
                if rec["status"] in ("failed", "unreachable"):
                    line += "\n" + "\n".join("      " + m for m in rec.get("message", "").splitlines())
                self.message(line)

    def lab_line(self, line):
        self.message(f"lab: {line}")

    def summary(self, report, run_dir):
        for line in summary_lines(report, run_dir):
            self.message(line)


class JsonOutput(Output):
    """One JSON object per line: every record, then ``{"type": "summary", ...report}``."""

    def emit(self, obj: dict[str, Any]) -> None:
        print(json.dumps(obj, sort_keys=True), file=self.stream, flush=True)

    def records(self, records):
        for rec in records:
            self.emit(rec)

    def lab_line(self, line):
        self.emit({"type": "lab", "line": line})

    def message(self, text):
        self.emit({"type": "message", "text": text})

    def summary(self, report, run_dir):
        self.emit({"type": "summary", "run_dir": run_dir, **report})


class LiveOutput(Output):
    """A table updating in place: one row per phase, one column per host (or counts when many)."""

    def start(self, tracker, title):
        from rich.console import Console
        from rich.live import Live

        super().start(tracker, title)
        self.console = Console(file=self.stream)
        self.lab_status = ""
        self.t0 = time.monotonic()
        self.live = Live(get_renderable=self.render, console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def render(self, now: datetime | None = None):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        now = now or datetime.now(UTC)
        tracker = self.tracker
        with tracker.lock:
            hosts = list(tracker.hosts)
            phases = list(tracker.phases.values())
            wide = len(hosts) > MAX_HOST_COLUMNS
            table = Table(title=self.title, title_justify="left", expand=False)
            table.add_column("phase")
            table.add_column("time", justify="right")
            if wide:
                for state in ("done", "running", "failed", "skipped"):
                    table.add_column(state, justify="right", style=STYLE[state])
            else:
                for host in hosts:
                    table.add_column(host)
            current_tasks = []
            for phase in phases:
                status = phase.status
                row = [
                    Text(phase.name, style=STYLE.get(status, "")),
                    _elapsed(phase.start, phase.end if phase.finished else None, now),
                ]
                if wide:
                    counts = {s: 0 for s in ("done", "running", "failed", "skipped")}
                    for hp in phase.hosts.values():
                        counts[hp.status] = counts.get(hp.status, 0) + 1
                    row += [str(counts[s] or "") for s in ("done", "running", "failed", "skipped")]
                else:
                    for host in hosts:
                        hp = phase.hosts.get(host)
                        if hp is None:
                            row.append("")
                            continue
                        end = hp.end if hp.status != "running" else None
                        row.append(Text(f"{SYMBOL[hp.status]} {_elapsed(hp.start, end, now)}", style=STYLE[hp.status]))
                        if hp.status == "running" and hp.task:
                            current_tasks.append(f"{host}: {hp.task}")
                table.add_row(*row)
            footer = []
            if self.lab_status:
                footer.append(Text(f"lab: {self.lab_status}", style="dim"))
            if current_tasks:
                footer.append(Text("now: " + "; ".join(sorted(set(current_tasks))[:4]), style="dim"))
            footer.append(Text(f"elapsed {_elapsed(tracker.started, None, now) or '0s'}", style="dim"))
        return Group(table, *footer)

    def lab_line(self, line):
        self.lab_status = line

    def message(self, text):
        self.console.print(text)

    def stop(self):
        self.lab_status = ""
        self.live.refresh()
        self.live.stop()

    def summary(self, report, run_dir):
        for line in summary_lines(report, run_dir):
            style = "bold red" if line.startswith(("FAILED", "UNREACHABLE")) else None
            self.console.print(line, style=style, markup=False, highlight=False)


def make_output(mode: str, stream: IO[str] | None = None) -> Output:
    stream = stream or sys.stdout
    if mode == "json":
        return JsonOutput(stream)
    if mode == "live" or (mode == "auto" and stream.isatty()):
        return LiveOutput(stream)
    return PlainOutput(stream)
