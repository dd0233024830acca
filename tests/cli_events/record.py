"""Turn the ansible-runner events of a run record into a test recording (tests/test_cli.py).

    python tests/cli_events/record.py runs/<run>/ tests/cli_events/NAME.jsonl.gz

Keeps every event in order with the fields the tracker reads (event, created, the play,
task, host, role, action, times, ignore_errors and the result's changed/msg/rc/stderr),
drops the rest (Ansible's text output, module arguments, full results) to stay small.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

DATA = (
    "play",
    "name",
    "task",
    "host",
    "role",
    "task_action",
    "start",
    "end",
    "ignore_errors",
    "failures",
    "dark",
    "ok",
    "changed",
    "skipped",
    "rescued",
    "ignored",
)
RESULT = ("changed", "msg", "rc", "stderr", "unreachable", "skipped")


def trim(event: dict) -> dict:
    data = event.get("event_data") or {}
    kept = {key: data[key] for key in DATA if key in data}
    res = data.get("res")
    if isinstance(res, dict):
        kept["res"] = {key: res[key] for key in RESULT if key in res}
        if isinstance(kept["res"].get("stderr"), str):
            kept["res"]["stderr"] = "\n".join(kept["res"]["stderr"].splitlines()[-12:])
    return {
        "event": event["event"],
        "counter": event.get("counter"),
        "created": event.get("created"),
        "event_data": kept,
    }


def main(run_dir: str, out: str) -> None:
    files = (Path(run_dir) / "artifacts" / "ansible" / "job_events").glob("*.json")
    events = sorted((json.loads(f.read_text()) for f in files), key=lambda e: e.get("counter", 0))
    with gzip.open(out, "wt", encoding="utf-8") as fh:
        for event in events:
            fh.write(json.dumps(trim(event), sort_keys=True) + "\n")
    print(f"{out}: {len(events)} events")


if __name__ == "__main__":
    main(*sys.argv[1:])
