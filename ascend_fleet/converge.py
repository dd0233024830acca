"""Converge in one probe: is the fleet already exactly what this run would make?

After a ``site.yml`` run that completed, every node keeps a record of it (the converge
role's state file): the digest of the run's inputs and what the node then held (our
containers and their start times, the launch files' checksums, the weights' completion,
the NPU and fabric state). A later run probes every node once (module
``fleet_converge_probe``) and, when every node still holds exactly what its record says, the
inputs are the same and every rank and the proxy answer, skips the phases that would
change nothing (preflight, NPU network, image, weights, serve, proxy) as a whole, instead of
checking them task by task. Anything else (a record missing, a setting, the plan or the
toolkit changed, a container restarted or gone, a file edited, a link down, a rank not
healthy, a node not answering) runs every phase as before, and the reasons are shown.

``inputs_digest`` and ``decide`` are pure (unit-tested); the action plugin of the same name
reads the variables and the code on the controller.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# Variables that decide what the deployment phases make. eval_*, ops_*, upgrade_*,
# run_lock_*, verify_* and converge_* do not (their phases run every time, or are not
# part of site.yml's converge).
INPUT_PREFIXES = (
    "fleet_",
    "preflight_",
    "npu_network_",
    "image_",
    "weights_",
    "launch_files_",
    "serve_",
    "proxy_",
)
# Facts the validation sets (the plan is an input of its own; the defaults come from the code).
NOT_INPUTS = {"fleet_plan", "fleet_defaults"}
RECORD_VERSION = 1


def input_names(declared: set[str], present: set[str]) -> list[str]:
    """The variables that are inputs: every declared role option or default with an input
    prefix, and any variable set with the fleet_ prefix (inventory settings)."""
    names = {n for n in declared if n.startswith(INPUT_PREFIXES)}
    names |= {n for n in present if n.startswith("fleet_")}
    return sorted(names - NOT_INPUTS)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def inputs_digest(values: dict[str, Any], plan: dict[str, Any], code: str) -> str:
    """One SHA-256 over the settings (name -> value), the whole plan and the toolkit's code."""
    blob = _canonical({"version": RECORD_VERSION, "vars": values, "plan": plan, "code": code})
    return hashlib.sha256(blob.encode()).hexdigest()


def code_digest(roots: list[Path]) -> str:
    """SHA-256 over every file (path and content) under the given directories or files:
    the roles, playbooks and plugins of the collection and the ascend_fleet package."""
    h = hashlib.sha256()
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            h.update(str(path.relative_to(root.parent)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def _container_reason(host: str, name: str, was: dict | None, now: dict | None) -> str | None:
    if was is not None and now is not None and {k: v for k, v in now.items() if k != "status"} == was:
        return None
    if now is None or now.get("state") == "absent":
        return f"{host}: container {name} is gone"
    if was is None:
        return f"{host}: container {name} is not in the record of the last completed run"
    if now.get("state") != "running":
        return f"{host}: container {name} is {now.get('state')} ({now.get('status', '')})".rstrip(" ()")
    if now.get("started_at") != was.get("started_at") or now.get("image") != was.get("image"):
        return f"{host}: container {name} was restarted or recreated since the last completed run"
    return None


def _npu_reasons(host: str, was: dict, now: dict) -> list[str]:
    reasons = []
    if now.get("hccn_conf_sha1") != was.get("hccn_conf_sha1"):
        reasons.append(f"{host}: /etc/hccn.conf changed since the last completed run")
    if now.get("driver_version") != was.get("driver_version"):
        reasons.append(
            f"{host}: driver version {now.get('driver_version')} (was {was.get('driver_version')})"
        )
    if now.get("health") != was.get("health"):
        reasons.append(f"{host}: npu-smi health is {now.get('health')} (was {was.get('health')})")
    was_dev, now_dev = was.get("devices") or {}, now.get("devices") or {}
    for dev in sorted(set(was_dev) | set(now_dev), key=lambda d: int(d) if str(d).isdigit() else 0):
        a, b = was_dev.get(dev), now_dev.get(dev)
        if a == b:
            continue
        if b is None:
            reasons.append(f"{host}: device {dev} is missing")
        elif a is None:
            reasons.append(f"{host}: device {dev} is new")
        else:
            keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            diff = ", ".join(f"{k} {b.get(k)} (was {a.get(k)})" for k in keys)
            reasons.append(f"{host}: device {dev}: {diff}")
    return reasons


def decide(host: str, inputs: str, probe: dict[str, Any]) -> list[str]:
    """Why this host is not converged (empty: it holds exactly its record and answers).

    ``probe`` is the module's result: ``record`` (the state file, or None), ``observed``
    (containers, files, weights, npu) and ``health`` (URL -> HTTP status).
    """
    if probe.get("unreachable"):
        return [f"{host}: does not answer ({probe.get('msg', 'unreachable')})"]
    if probe.get("failed"):
        return [f"{host}: the probe failed ({probe.get('msg', 'no message')})"]
    record = probe.get("record")
    if not record:
        return [f"{host}: no record of a completed site.yml run"]
    if record.get("version") != RECORD_VERSION:
        return [f"{host}: the record is of another format (version {record.get('version')})"]
    reasons = []
    if record.get("inputs") != inputs:
        reasons.append(f"{host}: the settings, the plan or the toolkit changed since the last completed run")
    was, now = record.get("observed") or {}, probe.get("observed") or {}
    was_c, now_c = was.get("containers") or {}, now.get("containers") or {}
    for name in sorted(set(was_c) | set(now_c)):
        reason = _container_reason(host, name, was_c.get(name), now_c.get(name))
        if reason:
            reasons.append(reason)
    was_f, now_f = was.get("files") or {}, now.get("files") or {}
    for path in sorted(set(was_f) | set(now_f)):
        if was_f.get(path) != now_f.get(path):
            what = "is missing" if now_f.get(path) is None else "changed"
            reasons.append(f"{host}: {path} {what} since the last completed run")
    if was.get("weights") != now.get("weights"):
        reasons.append(f"{host}: the weights are {'complete' if now.get('weights') else 'incomplete'} "
                       f"(were {'complete' if was.get('weights') else 'incomplete'})")
    reasons += _npu_reasons(host, was.get("npu") or {}, now.get("npu") or {})
    for url, code in sorted((probe.get("health") or {}).items()):
        if code != 200:
            reasons.append(f"{host}: {url} answers {code if code != -1 else 'nothing'}")
    return reasons


def summary(reasons_by_host: dict[str, list[str]], limit: int = 12) -> dict[str, Any]:
    """The fleet's verdict: converged when no host has a reason; the reasons, at most limit."""
    reasons = [r for host in sorted(reasons_by_host) for r in reasons_by_host[host]]
    converged = bool(reasons_by_host) and not reasons
    shown = reasons[:limit] + ([f"... and {len(reasons) - limit} more"] if len(reasons) > limit else [])
    if converged:
        message = (f"Converged: every node ({len(reasons_by_host)}) holds what the last completed run left, "
                   "with the same settings, plan and toolkit, and answers: preflight, NPU network, image, "
                   "weights, serve and proxy are skipped; verify runs (converge_fast: false runs every phase).")
    else:
        message = "Running every phase: " + ("; ".join(shown) or "no node was probed")
    return {"converged": converged, "hosts": len(reasons_by_host), "reasons": shown, "message": message}


def verdict(probes: dict[str, Any]) -> dict[str, Any]:
    """The fleet's verdict from every host's registered probe (host -> result): a host that
    was not probed (unreachable, skipped, failed before deciding) is not converged."""
    reasons_by_host = {}
    for host, result in sorted(probes.items()):
        result = result if isinstance(result, dict) else {}
        if isinstance(result.get("reasons"), list):
            reasons_by_host[host] = result["reasons"]
        elif result.get("unreachable"):
            reasons_by_host[host] = [f"{host}: does not answer ({result.get('msg', 'unreachable')})"]
        else:
            reasons_by_host[host] = [f"{host}: not probed ({result.get('msg') or 'skipped'})"]
    return summary(reasons_by_host)
