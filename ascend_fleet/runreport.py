"""From ansible-runner events to phases x hosts: live state, ``report.json`` and the exit code.

Only the structured event stream of ansible-runner is read (``event`` and ``event_data``),
never Ansible's text output. A *phase* is what ``site.yml`` calls one imported playbook
(``Facts and preflight``, ``Weights``, ``Deploy in order`` ...): the plays of the playbook
being run are listed in order from its YAML (import_playbook expanded), and every
``playbook_on_play_start`` event is matched to the next play of that name. A playbook with
plain plays (the operations playbooks) has one phase per play. A play not found in the
list is a phase of its own, named after the play.

Per phase and host the state is ``running``, ``done``, ``failed`` or ``skipped`` (every task
skipped). A failure that a ``rescue`` block handles (the host runs another task in the same
phase) is counted as rescued and the host goes on; a task with ``ignore_errors`` never
fails a host. The final ``playbook_on_stats`` settles every host's state.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MESSAGE_LIMIT = 3000


def short_label(name: str) -> str:
    """A play or import name without its trailing parenthesis: ``Proxy``, ``Weights``."""
    label = re.sub(r"\s*\([^()]*\)\s*$", "", str(name)).strip()
    return label or str(name).strip()


def phase_plan(playbook: Path) -> list[tuple[str, str]]:
    """The plays of a playbook in order, as (play name, phase label); imports expanded.

    The label of a play inside an ``import_playbook`` is the import's name (outermost wins).
    """
    data = yaml.safe_load(Path(playbook).read_text(encoding="utf-8")) or []
    plan: list[tuple[str, str]] = []
    for entry in data if isinstance(data, list) else []:
        if not isinstance(entry, dict):
            continue
        target = entry.get("ansible.builtin.import_playbook") or entry.get("import_playbook")
        if target:
            label = short_label(entry.get("name") or Path(str(target)).stem)
            try:
                inner = phase_plan(Path(playbook).parent / str(target))
            except (OSError, yaml.YAMLError):
                inner = []
            plan.extend((play, label) for play, _ in inner)
        else:
            name = str(entry.get("name") or entry.get("hosts") or "")
            plan.append((name, short_label(name)))
    return plan


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        stamp = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def seconds(start: str | None, end: str | None) -> float | None:
    a, b = parse_time(start), parse_time(end)
    return None if a is None or b is None else max(0.0, (b - a).total_seconds())


def failure_message(res: Any) -> str:
    """What a failed or unreachable result says: msg, then the tail of stderr (no colours)."""
    if not isinstance(res, dict):
        return ANSI.sub("", str(res or ""))[:MESSAGE_LIMIT]
    parts = []
    msg = res.get("msg")
    if isinstance(msg, list):
        msg = "\n".join(str(m) for m in msg)
    if msg:
        parts.append(str(msg))
    if res.get("rc") not in (None, 0) and "non-zero return code" in str(msg or ""):
        parts[-1:] = [f"exit code {res['rc']}"]
    for key in ("stderr", "module_stderr", "stdout"):
        text = str(res.get(key) or "").strip()
        if text and text not in "\n".join(parts):
            tail = "\n".join(text.splitlines()[-12:])
            parts.append(f"{key}: {tail}")
            break
    if not parts and res.get("results"):  # a loop: the first failed item
        for item in res["results"]:
            if isinstance(item, dict) and item.get("failed"):
                return failure_message(item)
    text = ANSI.sub("", "\n".join(parts)).strip() or "failed (no message)"
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


@dataclass
class HostPhase:
    status: str = "running"
    start: str | None = None
    end: str | None = None
    ok: int = 0
    changed: int = 0
    skipped: int = 0
    rescued: int = 0
    task: str | None = None  # the task running now (live view)
    failure: dict | None = None

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "start": self.start,
            "end": self.end,
            "seconds": seconds(self.start, self.end),
            "ok": self.ok,
            "changed": self.changed,
            "skipped": self.skipped,
            "rescued": self.rescued,
            "failure": self.failure,
        }


@dataclass
class Phase:
    name: str
    plays: list[str] = field(default_factory=list)
    hosts: dict[str, HostPhase] = field(default_factory=dict)
    start: str | None = None
    end: str | None = None
    finished: bool = False

    @property
    def status(self) -> str:
        states = [hp.status for hp in self.hosts.values()]
        if "failed" in states:
            return "failed"
        if not self.finished and (not states or "running" in states):
            return "running"
        if "done" in states:
            return "done"
        return "skipped"

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "plays": list(self.plays),
            "status": self.status,
            "start": self.start,
            "end": self.end,
            "seconds": seconds(self.start, self.end),
            "hosts": {host: hp.as_dict() for host, hp in self.hosts.items()},
        }


class RunTracker:
    """Feed it ansible-runner events (``feed``); read phases, failures, notes and the report."""

    def __init__(self, plan: list[tuple[str, str]] | None = None):
        self.plan = list(plan or [])
        self._cursor = 0
        self.phases: dict[str, Phase] = {}
        self.current: Phase | None = None
        self.hosts: list[str] = []
        self.notes: list[dict] = []
        self.stats: dict | None = None
        self.started: str | None = None
        self.ended: str | None = None
        self.last_output: list[str] = []  # text of events outside any task (Ansible's own errors)
        self.lock = threading.RLock()

    # -- events ---------------------------------------------------------------------------
    def feed(self, event: dict) -> list[dict]:
        """Take one runner event; return what happened, as records for the progress output."""
        with self.lock:
            return self._feed(event)

    def _feed(self, event: dict) -> list[dict]:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        created = event.get("created")
        if created and not self.started:
            self.started = created
        if created:
            self.ended = created
        if kind in ("verbose", "error", "warning") and event.get("stdout") and self.current is None:
            self.last_output.extend(ANSI.sub("", event["stdout"]).splitlines())
            self.last_output = self.last_output[-40:]
        if kind == "playbook_on_play_start":
            return self._play_start(str(data.get("play") or data.get("name") or ""), created)
        if kind == "playbook_on_stats":
            return self._stats(data, created)
        host = data.get("host")
        if not host or self.current is None or not kind.startswith("runner_on_"):
            return []
        if kind in ("runner_on_async_poll", "runner_on_async_ok", "runner_on_async_failed"):
            return []
        phase = self.current
        if host not in self.hosts:
            self.hosts.append(host)
        hp = phase.hosts.get(host)
        if hp is None:
            hp = phase.hosts[host] = HostPhase(start=data.get("start") or created)
        task = str(data.get("task") or "")
        base = {"phase": phase.name, "host": host, "task": task, "time": created}
        if kind == "runner_on_start":
            if hp.status == "failed":  # a rescue block goes on after the failure
                hp.rescued += 1
                hp.failure = None
                hp.status = "running"
            hp.task = task
            return []
        end = data.get("end") or created
        hp.end = end
        res = data.get("res") if isinstance(data.get("res"), dict) else {}
        if kind == "runner_on_ok":
            hp.ok += 1
            changed = bool(res.get("changed"))
            hp.changed += changed
            action = str(data.get("task_action") or data.get("resolved_action") or "")
            if action.split(".")[-1] == "debug" and res.get("msg") not in (None, ""):
                msg = res["msg"]
                text = "\n".join(map(str, msg)) if isinstance(msg, list) else str(msg)
                self.notes.append({**base, "message": ANSI.sub("", text)})
            return [{**base, "type": "task", "status": "changed" if changed else "ok"}]
        if kind == "runner_on_skipped":
            hp.skipped += 1
            return [{**base, "type": "task", "status": "skipped"}]
        if kind == "runner_on_failed" and data.get("ignore_errors"):
            hp.ok += 1
            return [{**base, "type": "task", "status": "ignored", "message": failure_message(res)}]
        if kind in ("runner_on_failed", "runner_on_unreachable"):
            unreachable = kind == "runner_on_unreachable"
            hp.status = "failed"
            hp.failure = {
                "task": task,
                "role": data.get("role"),
                "message": failure_message(res),
                "unreachable": unreachable,
                "time": end,
            }
            status = "unreachable" if unreachable else "failed"
            return [{**base, "type": "task", "status": status, "message": hp.failure["message"]}]
        return []

    def _play_start(self, play: str, created: str | None) -> list[dict]:
        label = None
        for i in range(self._cursor, len(self.plan)):
            if self.plan[i][0] == play:
                label, self._cursor = self.plan[i][1], i + 1
                break
        label = label or short_label(play)
        records = []
        if self.current is not None and self.current.name != label:
            records += self._finish_phase(self.current, created)
        phase = self.phases.get(label)
        if phase is None:
            phase = self.phases[label] = Phase(label, start=created)
            records.append({"type": "phase", "phase": label, "status": "started", "time": created})
        phase.finished = False
        phase.plays.append(play)
        self.current = phase
        return records

    def _finish_phase(self, phase: Phase, when: str | None) -> list[dict]:
        for hp in phase.hosts.values():
            if hp.status == "running":
                hp.status = "done" if hp.ok else "skipped"
            hp.task = None
        phase.finished = True
        ends = [hp.end for hp in phase.hosts.values() if hp.end]
        phase.end = max(ends, key=lambda v: parse_time(v) or datetime.min.replace(tzinfo=UTC)) if ends else when
        return [{"type": "phase", "phase": phase.name, "status": phase.status, "time": phase.end}]

    def _stats(self, data: dict, created: str | None) -> list[dict]:
        records = self._finish_phase(self.current, created) if self.current is not None else []
        self.current = None
        keys = ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored")
        self.stats = {key: dict(data.get(key) or {}) for key in keys}
        failed_hosts = {h for key in ("failures", "dark") for h, n in self.stats[key].items() if n}
        for phase in self.phases.values():
            for host, hp in phase.hosts.items():
                # A failure Ansible does not count (rescued at the end of the play): not a failure.
                if hp.status == "failed" and host not in failed_hosts:
                    hp.status, hp.rescued, hp.failure = "done", hp.rescued + 1, None
        return records

    # -- reading --------------------------------------------------------------------------
    @property
    def failures(self) -> list[dict]:
        with self.lock:
            return [
                {"phase": phase.name, "host": host, **hp.failure}
                for phase in self.phases.values()
                for host, hp in phase.hosts.items()
                if hp.status == "failed" and hp.failure
            ]

    def exit_code(self, rc: int | None) -> int:
        """0 success; 2 bad input (nothing ran, or only inventory validation failed); 1 failed."""
        if rc == 0:
            return 0
        fails = self.failures
        if not self.phases or (fails and all(f.get("role") == "validate" for f in fails)):
            return 2
        return 1

    def report(self, **meta: Any) -> dict:
        with self.lock:
            phases = [p.as_dict() for p in self.phases.values()]
            return {
                **meta,
                "started": self.started,
                "ended": self.ended,
                "seconds": seconds(self.started, self.ended),
                "hosts": list(self.hosts),
                "phases": phases,
                "failures": self.failures,
                "notes": list(self.notes),
                "stats": self.stats,
                "ansible_output": self.last_output if not self.phases else [],
            }
