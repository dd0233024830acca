"""Plan step 5, the scripts: what each host's launch scripts are rendered from.

Input is one host's node entry, instance and ranks (steps 2-4). ``kv_transfer_config``,
``serve_args``, ``script_env``, ``launcher_args`` and ``device_map`` compute the pieces
of the rendered serve.sh / run_dp_template.sh / launch.sh, ``host_entry`` puts a host's
plan entry together, and ``finish_proxy`` / ``single_entrypoint`` give the PD proxy its
prefill/decode lists and the plan its entry point.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from typing import Any

from .plan_checks import check_owned_flags
from .plan_inventory import NPU_CONTROL_DEVICES, Inventory, Report, _json_value, _scalar_text, shell_value
from .plan_ranks import single_api_port, vllm_start_port
from .recipes import apply_serve_changes
from .serveflags import FlagSpec
from .shellenv import ShellEnvError
from .shellenv import for_kind as shell_env_for_kind


def kv_transfer_config(
    inv: Inventory,
    host: str,
    profile: dict[str, Any],
    inst: dict[str, Any],
    real_extra: dict[str, Any],
    recipe: dict[str, Any],
    rep: Report,
) -> dict[str, Any]:
    """Step 5a. Input: a P/D host, its profile and instance, the real side sizes (``kv_side_sizes``).

    Output: the --kv-transfer-config value (connector, kv_role, kv_port, engine_id,
    kv_connector_extra_config). A fleet_kv_extra_config override must be valid JSON and
    equal the real sizes.
    """
    extra = real_extra
    override = inv.var(host, "fleet_kv_extra_config")
    if override is not None:
        try:
            extra = _json_value(override)
        except json.JSONDecodeError as exc:
            rep.error(f"host {host}: fleet_kv_extra_config is invalid JSON ({exc.msg}): {override!r}")
        if extra != real_extra:
            rep.error(
                f"host {host}: fleet_kv_extra_config = {json.dumps(extra)} does not match "
                f"the real instance sizes {json.dumps(real_extra)}; remove the override "
                "or fix the instance sizes"
            )
    return {
        "kv_connector": recipe["kv"]["connector"],
        "kv_role": profile["kv_role"],
        "kv_port": str(inst["kv_port"]),
        "engine_id": str(inst["engine_id"]),
        "kv_connector_extra_config": extra,
    }


def serve_args(
    inv: Inventory,
    host: str,
    profile: dict[str, Any],
    inst: dict[str, Any],
    kv_cfg: dict[str, Any] | None,
    recipe: dict[str, Any],
    spec: FlagSpec,
    rep: Report,
) -> list[list[Any]]:
    """Step 5b. Input: a host, its profile, instance and kv config, the vLLM flag table.

    Output: the ``vllm serve`` flags as [flag, shell word or None for a switch]: the
    profile's flags with the host's fleet_serve_overrides applied (plan-owned flags
    refused), the @tp_size@ / @dp_size@ / @api_port@ / @kv_transfer_config@ markers
    filled in, every user value shell-quoted.
    """
    overrides = inv.var(host, "fleet_serve_overrides", {})
    check_owned_flags(host, overrides, spec, rep)
    serve = apply_serve_changes(profile["serve"], overrides, [], spec.version)
    markers = {
        "@tp_size@": inst["tp_size"],
        "@dp_size@": inst["dp_size"],
        "@api_port@": single_api_port(inv, host, recipe),
        "@kv_transfer_config@": kv_cfg,
    }
    args: list[list[Any]] = []
    for pair in serve:
        if len(pair) == 1:
            args.append([pair[0], None])
            continue
        value = markers.get(pair[1], pair[1]) if isinstance(pair[1], str) else pair[1]
        args.append([pair[0], shell_value(value, trusted=pair[0] not in overrides)])
    return args


def script_env(
    inv: Inventory, host: str, profile: dict[str, Any], role: str, ranks: list[dict[str, Any]]
) -> list[list[str]]:
    """Step 5c. Input: a host, its profile, role and ranks. Output: the exports as [name, shell word].

    The profile's environment, then fleet_engine_ready_timeout_s (as
    VLLM_ENGINE_READY_TIMEOUT_S), a single node's fleet_visible_devices (as
    ASCEND_RT_VISIBLE_DEVICES) and fleet_env_overrides (replace in place, append, or
    remove with null); a user's value is quoted.
    """
    env = [list(p) for p in profile["env"]]
    env_over = inv.var(host, "fleet_env_overrides", {})
    timeout = inv.var(host, "fleet_engine_ready_timeout_s")
    if timeout is not None and "VLLM_ENGINE_READY_TIMEOUT_S" not in env_over:
        env_over = {**env_over, "VLLM_ENGINE_READY_TIMEOUT_S": str(timeout)}
    if role == "single" and inv.is_set(host, "fleet_visible_devices") and "ASCEND_RT_VISIBLE_DEVICES" not in env_over:
        # fleet_visible_devices on a single node: the one engine sees exactly these devices
        env_over = {**env_over, "ASCEND_RT_VISIBLE_DEVICES": ranks[0]["devices"]}
    for name, value in env_over.items():
        idx = next((i for i, p in enumerate(env) if p[0] == name), None)
        # A user's value is quoted: it reaches the environment literally, never the shell.
        text = shlex.quote(_scalar_text(value)) if value is not None else None
        if text is None:
            env = [p for p in env if p[0] != name]
        elif idx is None:
            env.append([name, text])
        else:
            env[idx] = [name, text]
            env = [p for i, p in enumerate(env) if p[0] != name or i == idx]
    return env


def model_path(inv: Inventory, host: str, recipe: dict[str, Any], rep: Report) -> str:
    """Step 5d. Input: a host and the recipe. Output: the weights' path in the container.

    fleet_model_path (default: the recipe's) must lie inside weights_cache_dir, the
    only directory the engines mount.
    """
    path = inv.var(host, "fleet_model_path", recipe["model"]["path"])
    cache_dir = str(inv.var(host, "weights_cache_dir", "/root/.cache"))
    cache_norm = posixpath.normpath(cache_dir) if cache_dir.startswith("/") else None
    if cache_norm is None or not path.startswith(cache_norm.rstrip("/") + "/"):
        rep.error(
            f"host {host}: fleet_model_path = {path!r} is not inside weights_cache_dir = "
            f"{cache_dir!r}; the engines mount only weights_cache_dir, so they would not find the "
            "weights: put fleet_model_path under weights_cache_dir (or set weights_cache_dir to a "
            "directory above it)"
        )
    return path


def engine_image(inv: Inventory, host: str, recipe: dict[str, Any], hw_kind: str) -> str:
    """The engine image: fleet_image, else the recipe's repository:tag plus the kind's suffix."""
    image = recipe["image"]
    return inv.var(
        host,
        "fleet_image",
        "{}:{}{}".format(image["repository"], image["tag"], image["tag_suffix"].get(hw_kind, "")),
    )


def launcher_args(inst: dict[str, Any], node: dict[str, Any], start_port: int) -> list[list[Any]]:
    """Step 5e. Input: a P/D host's instance, node entry and first API port.

    Output: the launcher's options ([--dp-size, N], ...) that launch.sh passes to the
    recipe's launcher script.
    """
    return [
        ["--dp-size", inst["dp_size"]],
        ["--tp-size", inst["tp_size"]],
        ["--dp-size-local", node["dp_size_local"]],
        ["--dp-rank-start", node["dp_rank_start"]],
        ["--dp-address", inst["dp_address"]],
        ["--dp-rpc-port", inst["dp_rpc_port"]],
        ["--vllm-start-port", start_port],
    ]


def device_map(ranks: list[dict[str, Any]], tp: int) -> list[list[str]]:
    """Step 5f. Input: a P/D host's ranks (fleet_visible_devices set) and tp_size.

    Output: [launcher's device list, the one to use] for each rank whose devices differ
    from the launcher's default (tp_size consecutive ids per local rank).
    """
    out = []
    for r in ranks:
        given = ",".join(str(d) for d in range(r["local"] * tp, (r["local"] + 1) * tp))
        if r["devices"] != given:
            out.append([given, r["devices"]])
    return out


def host_entry(
    inv: Inventory,
    host: str,
    node: dict[str, Any],
    inst: dict[str, Any],
    ranks: list[dict[str, Any]],
    recipe: dict[str, Any],
    spec: FlagSpec,
    real_extra: dict[str, Any],
    proxy: dict[str, Any] | None,
    rep: Report,
) -> dict[str, Any]:
    """Step 5g. Input: one engine host's node entry, instance and ranks; recipe, flag table,
    side sizes, proxy. Output: the host's plan entry.

    The node entry plus the instance's DP/TP/kv values, the ranks and their ports, the
    container's devices, image and model, the script inputs (preamble, env, serve
    flags), the launcher call and the files to render.
    """
    role = node["role"]
    profile = recipe["profiles"][node["profile"]]
    tp = inst["tp_size"]
    kv_cfg = kv_transfer_config(inv, host, profile, inst, real_extra, recipe, rep) if role != "single" else None
    args = serve_args(inv, host, profile, inst, kv_cfg, recipe, spec, rep)
    env = script_env(inv, host, profile, role, ranks)
    path = model_path(inv, host, recipe, rep)
    image = engine_image(inv, host, recipe, node["hw_kind"])
    start_port = vllm_start_port(inv, host, recipe)
    launcher = launcher_args(inst, node, start_port) if role != "single" else None
    devices = device_map(ranks, tp) if role != "single" and inv.is_set(host, "fleet_visible_devices") else []
    try:  # the image's ~/.bashrc lines the engine start applies (recipe shell_env)
        shell_env = shell_env_for_kind(recipe, node["hw_kind"])
    except ShellEnvError as exc:
        rep.error(str(exc))
        shell_env = {"source": [], "export": []}
    entry = {
        **node,
        "device_map": devices,
        "instance": inst["name"],
        "tp_size": tp,
        "dp_size": inst["dp_size"],
        "dp_address": inst["dp_address"],
        "dp_rpc_port": inst["dp_rpc_port"],
        "is_dp_master": host == inst["master"],
        "vllm_start_port": start_port if role != "single" else single_api_port(inv, host, recipe),
        "engine_id": inst.get("engine_id"),
        "kv_role": profile.get("kv_role"),
        "kv_port": inst.get("kv_port"),
        "kv_ports": sorted(p for r in ranks for p in r.get("kv_ports", [])),
        "kv_extra_config": kv_cfg["kv_connector_extra_config"] if kv_cfg else None,
        "ranks": ranks,
        "api_ports": [r["api_port"] for r in ranks],
        # the tutorial's --device list for this hardware kind
        "container_devices": [f"/dev/davinci{d}" for d in range(node["device_count"])] + list(NPU_CONTROL_DEVICES),
        "image": image,
        "model_path": path,
        "model_hub_id": recipe["model"]["hub_id"],
        "served_name": recipe["model"]["served_name"],
        "script": {
            "preamble": profile["preamble"],
            "script_vars": bool(profile["script_vars"]),
            "env": env,
            "serve_args": args,
        },
        "launcher": {
            "python": recipe["launcher"]["python"],
            "script": recipe["launcher"]["script"],
            "args": launcher,
        },
        "is_proxy": bool(proxy and host == proxy["host"]),
        "shell_env": shell_env,
    }
    entry["files"] = (["serve.sh"] if role == "single" else ["run_dp_template.sh", "launch.sh"]) + (
        ["proxy.sh"] if entry["is_proxy"] else []
    )
    for pair in args:
        if pair[0] == "--served-model-name" and pair[1]:
            entry["served_name"] = shlex.split(pair[1])[0]
    return entry


def finish_proxy(
    inv: Inventory,
    plan: dict[str, Any],
    instances: list[dict[str, Any]],
    proxy: dict[str, Any],
    recipe: dict[str, Any],
) -> None:
    """Step 5h. Input: the plan with every host entry, the instances, the proxy (``plan_proxy``).

    Output (into ``plan``): the proxy's prefill/decode lists ([node address, API port] of
    every rank), the entry point (the proxy; served name of the first prefill instance),
    and the proxy on its host's entry, or a ``proxy_hosts`` entry for a dedicated proxy
    host (no engine, only proxy.sh, in the engine image).
    """
    for inst in instances:
        for host in inst["nodes"]:
            for r in plan["hosts"][host]["ranks"]:
                proxy[inst["role"]].append([plan["hosts"][host]["node_ip"], r["api_port"]])
    plan["proxy"] = proxy
    first_prefill = plan["hosts"][next(i for i in instances if i["role"] == "prefill")["master"]]
    plan["entrypoint"] = {
        "host": proxy["host"],
        "address": proxy["address"],
        "port": proxy["port"],
        "served_name": first_prefill["served_name"],
    }
    if proxy["host"] in plan["hosts"]:
        plan["hosts"][proxy["host"]]["proxy"] = proxy
        return
    host = proxy["host"]
    kind = inv.var(host, "fleet_hw_kind")
    kind = kind if kind in recipe["hardware"] else first_prefill["hw_kind"]
    plan["proxy_hosts"][host] = {
        "host": host,
        "role": "proxy",
        "instance": "proxy",
        "profile": "proxy",
        "hw_kind": kind,
        "node_ip": proxy["address"],
        "connect_address": str(inv.var(host, "ansible_host", host)),
        "image": engine_image(inv, host, recipe, kind),
        "files": ["proxy.sh"],
        "is_proxy": True,
        "proxy": proxy,
        "bound_ports": [proxy["port"]],
    }


def single_entrypoint(plan: dict[str, Any]) -> dict[str, Any]:
    """Step 5i. Input: a single-node plan with its host entry. Output: its entry point (first API port)."""
    first = next(iter(plan["hosts"].values()))
    return {
        "host": first["host"],
        "address": first["node_ip"],
        "port": first["api_ports"][0],
        "served_name": first["served_name"],
    }
