"""Callback ``fleet_summary``: after a failed run, one block saying what stopped it.

For every host that failed or was unreachable: the phase (the play it failed in), the
node, the first lines of the message and what to do (the role's own "What to do"/"fix"
text when the message carries one; for an unreachable node: power it on or fix its
network, then re-run). Nothing is printed after a run that succeeded.
"""

from __future__ import annotations

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: fleet_summary
type: aggregate
short_description: Failure summary of an ascend-fleet run (phase, node, what to do)
description:
  - After a failed run, names for each failed or unreachable host the phase, the node, the
    message and what to do.
requirements:
  - enabled in ansible.cfg (callbacks_enabled)
"""

UNREACHABLE_FIX = "power the node on or fix its network or ssh (the ssh port must answer), then re-run"
FAILED_FIX = "fix the cause named above, then re-run (a re-run redoes only what is missing)"


def advice(msg) -> str | None:
    """The message's own advice: the text after "What to do:" or "fix:", to the line's end."""
    text = " ".join((msg if isinstance(msg, str) else str(msg)).split())
    for key in ("What to do:", "what to do:", "fix:"):
        if key in text:
            return text.split(key, 1)[1].strip().rstrip(".") or None
    return None


def first_lines(msg, limit: int = 3) -> str:
    text = msg if isinstance(msg, str) else str(msg)
    text = text.replace("Task failed: ", "", 1)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[:limit]) or "no message"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fleet_summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.phase = "?"
        # host -> its last failure (a rescued one is followed by the rescue's own message)
        self.failures: dict[str, dict] = {}

    def v2_playbook_on_play_start(self, play):
        self.phase = play.get_name().strip() or "?"

    def _record(self, result, kind: str):
        host = result._host.get_name()
        if self.failures.get(host, {}).get("kind") == "unreachable":
            return
        res = result._result if isinstance(result._result, dict) else {}
        msg = res.get("msg") or res.get("stderr") or res.get("reason") or ""
        self.failures[host] = {
            "phase": self.phase,
            "task": result._task.get_name().strip(),
            "kind": kind,
            "msg": first_lines(msg),
            "advice": advice(msg),
        }

    def v2_runner_on_failed(self, result, ignore_errors=False):
        if not ignore_errors:
            self._record(result, "failed")

    def v2_runner_on_unreachable(self, result):
        # a task that expects it (the converge probe, status) goes on; the phase that needs
        # the node names it
        if not result._task.ignore_unreachable:
            self._record(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(h for h in stats.processed if stats.failures.get(h) or stats.dark.get(h))
        if not hosts:
            return
        lines = ["", "FAILURE SUMMARY (the run stopped; what failed where, and what to do):"]
        for host in hosts:
            f = self.failures.get(host)
            if f is None:
                continue
            if f["kind"] == "unreachable":
                fix = UNREACHABLE_FIX
                what = f"{host} unreachable: {f['msg']}"
            else:
                fix = f["advice"] or FAILED_FIX
                what = f"{host} failed in '{f['task']}': {f['msg']}"
            lines.append(f"- phase '{f['phase']}', node {host}: {what}")
            lines.append(f"  What to do: {fix}.")
        self._display.display("\n".join(lines), stderr=False)
