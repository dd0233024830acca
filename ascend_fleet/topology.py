"""The topology engine: inventory + recipe -> a per-host deployment plan, validated.

Everything the deployment derives from the inventory is computed here, in one place, and
unit-tested: each host's role, instance, engine_id, kv_port, DP/TP sizes, DP rank range,
DP master address and RPC port, API ports, per-rank ASCEND_RT_VISIBLE_DEVICES, the kv
side-channel ports every rank binds, the kv_connector_extra_config sizes, the proxy's
prefiller/decoder lists, and the exact environment and ``vllm serve`` flags to render.

Input is plain data (what Ansible's inventory holds), so this module needs no Ansible:
``build_plan(hosts, groups, mode)`` where ``hosts`` maps inventory_hostname -> vars and
``groups`` maps group name -> ordered host list. The result carries ``errors`` (each one
names the host or group, the value found, what was expected and the variable to change)
and ``warnings`` (risky tutorial values kept as defaults, with the one-variable fix).

``build_plan`` is the composition of the steps, each a function of its own module:

1. inventory (``plan_inventory``): ``read_inventory`` type-checks every host's variables;
2. nodes (``plan_nodes``): ``assign_roles``, ``choose_recipe``, ``plan_container``,
   ``plan_nodes`` (hardware, profile, addresses, NIC, instance of each engine host) and
   the address checks;
3. instances (``plan_instances``): ``group_instances``, ``check_instance_agreement``,
   ``plan_instances`` (TP/DP sizes, each node's DP rank range, DP master, engine_id and
   kv_port), ``kv_side_sizes`` and ``plan_proxy``;
4. ranks and ports (``plan_ranks``): per host ``plan_ranks`` (devices, API and kv ports
   of each DP rank), ``host_ports`` and ``check_ports``;
5. scripts (``plan_scripts``): per host ``host_entry`` (kv config, serve flags, env,
   launcher, image, files), then ``finish_proxy`` / ``single_entrypoint``;
6. checks (``plan_checks``): per host ``check_serve`` (vLLM's own flag table), and
   ``warn_risky`` over the whole plan.
"""

from __future__ import annotations

from typing import Any

from .plan_checks import check_owned_flags, check_serve, serve_argv, warn_risky
from .plan_instances import (
    check_instance_agreement,
    group_instances,
    kv_side_sizes,
    plan_instances,
    plan_proxy,
)
from .plan_inventory import (
    FLEET_VARS,
    INSTANCE_VARS,
    MAX_DEVICES,
    NPU_CONTROL_DEVICES,
    PLAN_OWNED_DESTS,
    ROLE_GROUPS,
    SAFE_NAME,
    SECRET_VARS,
    SPEC_TYPES,
    Inventory,
    Report,
    check_types,
    coerce,
    read_inventory,
    shell_value,
)
from .plan_nodes import (
    assign_roles,
    check_proxy_host_addresses,
    check_shared_addresses,
    choose_recipe,
    plan_container,
    plan_nodes,
)
from .plan_ranks import check_ports, host_ports, is_plannable, plan_ranks
from .plan_scripts import finish_proxy, host_entry, single_entrypoint
from .serveflags import FlagSpec

# The names other modules and the tests import from here (the steps live in plan_*.py).
__all__ = [
    "FLEET_VARS",
    "INSTANCE_VARS",
    "MAX_DEVICES",
    "NPU_CONTROL_DEVICES",
    "PLAN_OWNED_DESTS",
    "ROLE_GROUPS",
    "SAFE_NAME",
    "SECRET_VARS",
    "SPEC_TYPES",
    "Inventory",
    "Report",
    "build_plan",
    "check_owned_flags",
    "check_types",
    "coerce",
    "serve_argv",
    "shell_value",
]


def build_plan(
    hosts: dict[str, dict[str, Any]],
    groups: dict[str, list[str]],
    mode: str = "render",
    bool_vars: set[str] | None = None,
    flag_spec: FlagSpec | None = None,
    option_types: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Compute and validate the plan. ``mode`` is "render" (placeholders allowed) or "deploy".

    ``option_types`` maps the roles' documented options to their argument_specs type
    (bool, int, str, path, list, dict); ``bool_vars`` is the older form (booleans only).
    Any input gives a plan with errors, never an exception.
    """
    try:
        return _build_plan(hosts, groups, mode, bool_vars, flag_spec, option_types)
    except Exception as exc:  # last resort: a bad inventory must read as an error, never a traceback
        return {
            "mode": mode,
            "hosts": {},
            "instances": [],
            "proxy": None,
            "errors": [f"inventory could not be planned ({type(exc).__name__}: {exc}); please report this input"],
            "warnings": [],
        }


def _build_plan(
    hosts: dict[str, dict[str, Any]],
    groups: dict[str, list[str]],
    mode: str,
    bool_vars: set[str] | None,
    flag_spec: FlagSpec | None,
    option_types: dict[str, str] | None,
) -> dict[str, Any]:
    rep = Report()
    plan: dict[str, Any] = {"mode": mode, "hosts": {}, "instances": [], "proxy": None, "proxy_hosts": {}}

    # 1. inventory
    inv = read_inventory(hosts, groups, mode, bool_vars, option_types, rep)

    # 2. nodes
    roles = assign_roles(inv, rep)
    if rep.errors and not roles.role_of:
        plan.update(errors=rep.errors, warnings=rep.warnings)
        return plan
    recipe = choose_recipe(inv, roles, rep)
    if recipe is None:
        plan.update(errors=rep.errors, warnings=rep.warnings)
        return plan
    spec = flag_spec or FlagSpec.load(recipe.get("vllm_version", "0.21.0"))
    plan["recipe"] = recipe["id"]
    plan["container"] = plan_container(recipe, rep)
    any_host = roles.first_host(inv)
    plan["topology"] = inv.var(any_host, "fleet_topology", "") if any_host else ""
    plan["pd"] = roles.pd
    nodes = plan_nodes(inv, roles, recipe, rep)
    check_proxy_host_addresses(inv, roles, rep)
    check_shared_addresses(inv, roles, rep)

    # 3. instances
    nodes_of = group_instances(roles, nodes)
    check_instance_agreement(inv, nodes, nodes_of, rep)
    instances = plan_instances(inv, recipe, nodes, nodes_of, rep)
    real_extra = kv_side_sizes(instances, rep)
    proxy = plan_proxy(inv, roles, nodes, instances, recipe, rep)

    # 4-6. per host: ranks and ports, script inputs, the serve command's check
    inst_by_key = {i["key"]: i for i in instances}
    bound: dict[str, list[tuple[int, str]]] = {}
    for host, node in nodes.items():
        inst = inst_by_key.get(node["instance"])
        if not is_plannable(node, inst):
            continue
        ranks = plan_ranks(inv, host, node, inst, recipe, rep)
        bound[host] = host_ports(host, node, inst, ranks, proxy)
        entry = host_entry(inv, host, node, inst, ranks, recipe, spec, real_extra, proxy, rep)
        plan["hosts"][host] = entry
        check_serve(host, entry, spec, rep)
    for host, ports in bound.items():
        by_port = check_ports(host, ports, rep)
        plan["hosts"][host]["bound_ports"] = sorted(by_port)
        # what each port is for, so a port held by a stranger is reported by its purpose
        plan["hosts"][host]["port_purposes"] = {str(p): what for p, what in by_port.items()}

    # 5. the proxy's lists and the entry point
    if proxy and not rep.errors:
        finish_proxy(inv, plan, instances, proxy, recipe)
    elif not roles.pd and plan["hosts"]:
        plan["entrypoint"] = single_entrypoint(plan)

    plan["instances"] = [{k: v for k, v in i.items() if k != "key"} for i in instances]
    # 6. checks over the whole plan
    warn_risky(plan, recipe, rep)
    plan["errors"] = rep.errors
    plan["warnings"] = rep.warnings
    return plan
