"""Plan step 6, the checks: what the plan's own commands must pass before anything runs.

``check_serve`` parses each host's ``vllm serve`` command with vLLM's own flag table
(and the PD rules), ``check_owned_flags`` refuses overrides of what the plan computes,
``warn_risky`` flags the tutorial's known-risky values (kept as defaults) with the fix.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from .plan_inventory import PLAN_OWNED_DESTS, POSITIONAL, Report, _json_value
from .serveflags import FlagSpec, ServeFlagError, parse_serve_argv


def serve_argv(entry: dict[str, Any]) -> list[str]:
    """The argv ``vllm serve`` gets on the host's first rank (launcher positionals filled in).

    Input: a host entry of the plan. Output: [model path, flag, value, ...], the recipe's
    $1..$7 launcher positionals replaced by the first rank's devices, port, DP sizes...
    """
    rank = entry["ranks"][0]
    positional = {
        "1": rank["devices"],
        "2": str(rank["api_port"]),
        "3": str(entry["dp_size"]),
        "4": str(rank["dp_rank"]),
        "5": str(entry["dp_address"]),
        "6": str(entry["dp_rpc_port"]),
        "7": str(entry["tp_size"]),
    }
    argv = [entry["model_path"]]
    for flag, value in entry["script"]["serve_args"]:
        argv.append(flag)
        if value is None:
            continue
        if POSITIONAL.fullmatch(value):
            argv.append(positional[value[1]])
        else:
            argv.extend(shlex.split(value))
    return argv


def check_owned_flags(host: str, overrides: dict[str, Any], spec: FlagSpec, rep: Report) -> None:
    """Refuse overrides of what the plan computes (ports, DP/TP layout, kv identity, API key).

    Input: a host's fleet_serve_overrides and the vLLM flag table. Output: none (errors on
    ``rep`` naming the flag and the fleet_* variable to use instead).
    """
    for flag, value in overrides.items():
        found = spec.lookup(flag)
        dest = found[0].dest if found else ""
        if dest in PLAN_OWNED_DESTS or dest.startswith("data_parallel_"):
            rep.error(
                f"host {host}: fleet_serve_overrides sets {flag}, which the plan owns; expected it "
                "unset there: use the fleet_* variable instead (fleet_api_port / fleet_vllm_start_port, "
                "fleet_tp_size, fleet_dp_size, fleet_dp_size_local, fleet_dp_rank_start, fleet_dp_address, "
                "fleet_dp_rpc_port)"
            )
        if dest == "kv_transfer_config" and value is not None:
            try:
                cfg = _json_value(value)
            except json.JSONDecodeError:
                continue  # reported by the flag check
            owned = [k for k in ("kv_port", "engine_id") if isinstance(cfg, dict) and k in cfg]
            if owned:
                rep.error(
                    f"host {host}: fleet_serve_overrides sets {', '.join(owned)} inside {flag}; the plan "
                    "owns them: use fleet_kv_port / fleet_engine_id"
                )


def check_serve(host: str, entry: dict[str, Any], spec: FlagSpec, rep: Report) -> None:
    """Step 6a. Validate the host's vllm serve command with vLLM's own flag table, plus PD rules.

    Input: a host entry and the flag table. Output: none (errors on ``rep``): the command
    parses; recompute_scheduler_enable only on decode; a P/D command carries a
    --kv-transfer-config whose kv_role fits the node and whose extra config states the
    real instance sizes.
    """
    try:
        cmd = parse_serve_argv(serve_argv(entry), spec)
    except ServeFlagError as exc:
        rep.error(
            f"host {host}: vllm serve command rejected: {exc}; check fleet_serve_overrides "
            f"(or recipe profile {entry['profile']})"
        )
        return
    extra = cmd.values.get("additional_config")
    if isinstance(extra, dict) and extra.get("recompute_scheduler_enable") and entry["role"] != "decode":
        rep.error(
            f"host {host}: recompute_scheduler_enable is set in --additional-config on a "
            f"{entry['role']} node; it is valid only on decode nodes (kv_consumer) and "
            "corrupts accuracy elsewhere (remove it via fleet_serve_overrides)"
        )
    kv_cfg = cmd.values.get("kv_transfer_config")
    if entry["role"] != "single":
        if not isinstance(kv_cfg, dict):
            rep.error(f"host {host}: the {entry['role']} serve command has no --kv-transfer-config")
            return
        extra_cfg = kv_cfg.get("kv_connector_extra_config")
        if extra_cfg != entry["kv_extra_config"]:
            rep.error(
                f"host {host}: kv_connector_extra_config {json.dumps(extra_cfg)} does not match "
                f"the real instance sizes {json.dumps(entry['kv_extra_config'])}"
            )
        want_role = "kv_producer" if entry["role"] == "prefill" else "kv_consumer"
        if kv_cfg.get("kv_role") != want_role:
            rep.error(f"host {host}: kv_role {kv_cfg.get('kv_role')!r} on a {entry['role']} node; expected {want_role}")


def warn_risky(plan: dict[str, Any], recipe: dict[str, Any], rep: Report) -> None:
    """Step 6b. Tutorial values that are known to bite: kept as defaults, flagged with the fix.

    Input: the finished plan and the recipe. Output: none (warnings on ``rep``): kv ports
    inside Mooncake's reserved range, no VLLM_ENGINE_READY_TIMEOUT_S.
    """
    reserved = recipe["kv"].get("reserved_base")
    for host, entry in plan["hosts"].items():
        if reserved is not None and entry["kv_ports"]:
            top = reserved + entry["device_count"] * 1000
            inside = [p for p in entry["kv_ports"] if reserved <= p < top]
            if inside:
                rep.warn(
                    f"host {host}: kv ports {inside[0]}..{inside[-1]} lie inside Mooncake's "
                    f"AscendDirectTransport range [{reserved}, {top}) for {entry['device_count']} "
                    f"devices (tutorial value; random collisions give 'Address already in use'); "
                    f"fix: fleet_kv_port_base: {top}"
                )
        names = {p[0] for p in entry["script"]["env"]}
        if "VLLM_ENGINE_READY_TIMEOUT_S" not in names:
            rep.warn(
                "VLLM_ENGINE_READY_TIMEOUT_S is not set (as in the tutorial): vLLM gives engines "
                "600 s to start, and loading ~0.3 TB of weights can take longer ('Timed out "
                "waiting for engines'); fix: fleet_engine_ready_timeout_s: 1800"
            )
