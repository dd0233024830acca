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
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from .recipes import DEFAULT_RECIPE, RecipeError, apply_serve_changes, container_settings, load_recipe
from .serveflags import FlagSpec, ServeFlagError, parse_serve_argv
from .shellenv import ShellEnvError
from .shellenv import for_kind as shell_env_for_kind

ROLE_GROUPS = ("single", "prefill", "decode")
DOC_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
TUTORIAL_PLACEHOLDER = re.compile(r"^(x{1,2}\.){3}(x{1,2}|\d+)$", re.IGNORECASE)
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
# Device nodes every engine container gets besides /dev/davinci0..N-1 (the tutorial's docker run).
NPU_CONTROL_DEVICES = ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")
LAUNCHER_POSITIONALS = ("devices", "port", "dp_size", "dp_rank", "dp_address", "dp_rpc_port", "tp")

# fleet_* inventory variables: name -> accepted Python types. Anything else prefixed
# fleet_ is reported as unknown (a typo would otherwise be ignored silently).
FLEET_VARS: dict[str, tuple[type, ...]] = {
    "fleet_topology": (str,),
    "fleet_recipe": (str,),
    "fleet_recipe_paths": (list,),
    "fleet_hw_kind": (str,),
    "fleet_profile": (str,),
    "fleet_nic_name": (str,),
    "fleet_node_ip": (str,),
    "fleet_instance": (str,),
    "fleet_tp_size": (int,),
    "fleet_dp_size": (int,),
    "fleet_dp_size_local": (int,),
    "fleet_dp_rank_start": (int,),
    "fleet_dp_address": (str,),
    "fleet_dp_rpc_port": (int,),
    "fleet_vllm_start_port": (int,),
    "fleet_api_port": (int,),
    "fleet_engine_id": (int,),
    "fleet_kv_port": (int,),
    "fleet_kv_port_base": (int,),
    "fleet_kv_port_stride": (int,),
    "fleet_kv_extra_config": (dict, str),
    "fleet_visible_devices": (list,),
    "fleet_serve_overrides": (dict,),
    "fleet_env_overrides": (dict,),
    "fleet_engine_ready_timeout_s": (int, type(None)),
    "fleet_proxy_port": (int,),
    "fleet_image": (str,),
    "fleet_model_path": (str,),
    "fleet_config_dir": (str,),
    "fleet_container_prefix": (str,),
    "fleet_allow_placeholder_addresses": (bool,),
    "fleet_render_dir": (str,),
    "fleet_api_key": (str,),
}
# Values never repeated in a message (errors name the variable, not the secret).
SECRET_VARS = frozenset({"fleet_api_key", "weights_token", "image_registry_password"})
# Instance-level values: every host of one instance must agree on them.
INSTANCE_VARS = (
    "fleet_engine_id",
    "fleet_kv_port",
    "fleet_dp_size",
    "fleet_tp_size",
    "fleet_dp_address",
    "fleet_dp_rpc_port",
    "fleet_kv_extra_config",
    "fleet_profile",
)


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, msg: str) -> None:
        if msg not in self.errors:
            self.errors.append(msg)

    def warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)


def _typename(value: Any) -> str:
    for kind, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "number"),
        (str, "string"),
        (dict, "mapping"),
        (list, "list"),
    ):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def _plain(value: Any) -> Any:
    """Ansible hands over tagged str subclasses: show them as plain values."""
    return str(value) if isinstance(value, str) else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


BOOL_WORDS = {"true": True, "yes": True, "false": False, "no": False}
INT_TEXT = re.compile(r"^[+-]?\d{1,9}$")
# Names that are written into scripts unquoted (comments, nic_name="...", file headers):
# validated to a charset that cannot leave a shell word or a comment line.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
NIC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}$")  # Linux: at most 15 characters
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
FLAG_NAME = re.compile(r"^--?[A-Za-z0-9][A-Za-z0-9_-]{0,80}$")
IMAGE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,254}$")
SAFE_VARS = {
    "fleet_instance": SAFE_NAME,
    "fleet_topology": SAFE_NAME,
    "fleet_nic_name": NIC_NAME,
    "fleet_container_prefix": SAFE_NAME,
    "fleet_image": IMAGE_REF,
}
PORT_VARS = (
    "fleet_dp_rpc_port",
    "fleet_vllm_start_port",
    "fleet_api_port",
    "fleet_kv_port",
    "fleet_kv_port_base",
    "fleet_proxy_port",
)
MAX_DEVICES = 16  # the largest node kind (A3); device-derived sizes are bounded by it
# vllm serve destinations the plan owns: set through fleet_* variables, never as overrides.
PLAN_OWNED_DESTS = ("port", "host", "tensor_parallel_size", "api_key")
SPEC_TYPES: dict[str, tuple[type, ...]] = {
    "bool": (bool,),
    "int": (int,),
    "str": (str,),
    "path": (str,),
    "list": (list,),
    "dict": (dict,),
    "float": (float, int),
}


def coerce(value: Any, types: tuple[type, ...]) -> tuple[bool, Any]:
    """(accepted, value) with the coercion ``-e k=v`` users expect: "8" is 8, "false" is False.

    Strings become booleans (true/false/yes/no), integers (digits) and lists/mappings
    (JSON) where the variable has that type; an integer becomes a string for a name.
    """
    if isinstance(value, bool):
        return (bool in types, value)
    if isinstance(value, types):
        return True, value
    if isinstance(value, str):
        text = value.strip()
        if bool in types and text.lower() in BOOL_WORDS:
            return True, BOOL_WORDS[text.lower()]
        if int in types and INT_TEXT.fullmatch(text):
            return True, int(text)
        if (list in types or dict in types) and text[:1] in ("[", "{"):
            try:
                parsed = json.loads(text)
            except ValueError:
                return False, value
            if isinstance(parsed, types):
                return True, parsed
    if isinstance(value, int) and str in types and int not in types:
        return True, str(value)
    return False, value


def _expected(types: tuple[type, ...]) -> str:
    return " or ".join(_typename(t()) if t is not type(None) else "null" for t in types)


def check_types(
    host: str,
    hv: dict[str, Any],
    option_types: dict[str, tuple[type, ...]],
    rep: Report,
    fleet_cap: int = MAX_DEVICES,
) -> dict[str, Any]:
    """Type-check (with coercion) the fleet_* variables and role options a host sets.

    Returns the host's variables with coerced values; a variable with a bad value is left
    out (the error is reported), so nothing later trips over it.
    """
    out: dict[str, Any] = {}
    for name, value in hv.items():
        value = _plain(value)
        if name.startswith("fleet_") and name not in FLEET_VARS:
            rep.warn(f"unknown variable {name} (typo? it is ignored)")
            out[name] = value
            continue
        types = FLEET_VARS.get(name) or option_types.get(name)
        if types is None:
            out[name] = value
            continue
        ok, new = coerce(value, types)
        if not ok:
            hint = ""
            if bool in types and isinstance(value, str):
                hint = " (true/false/yes/no)"
            shown = "(value not shown)" if name in SECRET_VARS else repr(value)
            rep.error(
                f"host {host}: {name} = {shown} is a {_typename(value)}; expected {_expected(types)}{hint} "
                f"(set {name} for {host} in the inventory or with -e)"
            )
            continue
        problem = _value_problem(name, new, fleet_cap)
        if problem:
            rep.error(f"host {host}: {name} = {new!r}; expected {problem} (set {name} for {host})")
            continue
        out[name] = new
    return out


def _value_problem(name: str, value: Any, fleet_cap: int) -> str | None:
    """What a well-typed value must be, if it is not (bounds keep every size finite)."""
    if value is None:
        return None
    if name in SAFE_VARS and not SAFE_VARS[name].fullmatch(value):
        return f"a name matching {SAFE_VARS[name].pattern} (letters, digits, . _ -; no spaces or shell characters)"
    if name in PORT_VARS and not 0 < value < 65536:
        return "a port number 1..65535"
    bounds = {
        "fleet_tp_size": (1, MAX_DEVICES, "devices per rank"),
        "fleet_dp_size_local": (1, MAX_DEVICES, "DP ranks on the node"),
        "fleet_dp_size": (1, fleet_cap, "DP ranks of the instance (at most the fleet's devices)"),
        "fleet_dp_rank_start": (0, fleet_cap - 1, "first DP rank of the node"),
        "fleet_engine_id": (0, 65535, "engine id"),
        "fleet_kv_port_stride": (1, 65535, "kv port stride"),
        "fleet_engine_ready_timeout_s": (1, 10**7, "seconds"),
    }
    if name in bounds:
        low, high, what = bounds[name]
        if not low <= value <= high:
            return f"an integer {low}..{high} ({what})"
    if name == "fleet_model_path" and (
        "\n" in value or "\x00" in value or not value.startswith("/") or posixpath.normpath(value) != value
    ):
        return "an absolute, normalised path (no '..', no trailing '/', no newline)"
    if name == "fleet_visible_devices" and (
        len(value) > MAX_DEVICES
        or not all(isinstance(e, int | str) and not isinstance(e, bool) and len(str(e)) <= 64 for e in value)
    ):
        return 'a list of at most 16 device-id strings, one per local rank (e.g. ["0,1", "2,3"])'
    if name == "fleet_serve_overrides":
        bad = [k for k in value if not isinstance(k, str) or not FLAG_NAME.fullmatch(k)]
        if bad:
            return f"a mapping of vllm serve flags (--name: value); {bad[0]!r} is not a flag name"
    if name == "fleet_env_overrides":
        bad = [k for k in value if not isinstance(k, str) or not ENV_NAME.fullmatch(k)]
        if bad:
            return f"a mapping of environment variable names to values; {bad[0]!r} is not a variable name"
        bad = [k for k, v in value.items() if isinstance(v, dict | list)]
        if bad:
            return f"scalar values (a string, a number, or null to remove); {bad[0]} has a {_typename(value[bad[0]])}"
    if name == "fleet_recipe_paths" and not all(isinstance(p, str) for p in value):
        return "a list of directory paths"
    return None


def _address_problem(value: str, allow_placeholders: bool) -> str | None:
    """Why ``value`` is not a usable node address, or None."""
    if TUTORIAL_PLACEHOLDER.match(value):
        return "the tutorial's placeholder (xx.xx.xx.N / x.x.x.x), not an address"
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        if re.fullmatch(r"[\d.]+", value) or not HOSTNAME.fullmatch(value):
            return "neither an IP address nor a valid hostname"
        return None
    if not allow_placeholders:
        for net in DOC_NETS:
            if addr in net:
                return (
                    f"a documentation placeholder ({net}); the shipped inventories use these "
                    "so nobody deploys to them by accident"
                )
    return None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _json_value(value: Any) -> Any:
    if isinstance(value, str):
        return json.loads(value)
    return value


POSITIONAL = re.compile(r"^\$[1-7]$")


def shell_value(value: Any, trusted: bool = True) -> str:
    """How a flag value is written in the rendered script: always one quoted shell word.

    Only the recipe's own launcher positionals ($1..$7) stay bare; a user's value
    (``trusted=False``) is quoted whatever it holds.
    """
    if isinstance(value, dict | list):
        return shlex.quote(json.dumps(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if trusted and POSITIONAL.fullmatch(text):
        return text  # a launcher positional: the launcher's argument, kept a shell word
    return shlex.quote(text)


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
    types: dict[str, tuple[type, ...]] = {
        name: SPEC_TYPES[kind] for name, kind in (option_types or {}).items() if kind in SPEC_TYPES
    }
    types.update({name: (bool,) for name in bool_vars or ()})
    groups = {str(g): [str(h) for h in (members or []) if isinstance(h, str)] for g, members in groups.items()}
    fleet_cap = MAX_DEVICES * max(1, len(hosts))
    hosts = {str(host): check_types(str(host), dict(hv or {}), types, rep, fleet_cap) for host, hv in hosts.items()}

    # ---- roles: every service host in exactly one role group -------------------------
    role_of: dict[str, str] = {}
    for host in hosts:
        roles = [g for g in ROLE_GROUPS if host in groups.get(g, [])]
        if len(roles) > 1:
            rep.error(
                f"host {host}: in groups {', '.join(roles)}; a node has exactly one role "
                "(remove it from all but one of single/prefill/decode)"
            )
        if roles:
            role_of[host] = roles[0]
    members = {g: [h for h in groups.get(g, []) if h in role_of] for g in ROLE_GROUPS}
    pd = bool(members["prefill"] or members["decode"] or "prefill" in groups or "decode" in groups)
    if pd:
        for g in ("prefill", "decode"):
            if not members[g]:
                state = "missing" if g not in groups else "empty"
                rep.error(
                    f"group {g}: {state}; a prefill/decode deployment needs at least one host "
                    f"in both 'prefill' and 'decode' (add hosts under children.{g})"
                )
        if members["single"]:
            rep.error(
                f"group single: {', '.join(members['single'])} sit beside prefill/decode groups; "
                "an inventory deploys either single-node or PD (move them to their own inventory)"
            )
    elif not members["single"]:
        rep.error(
            "group single/prefill/decode: none has hosts; expected a 'single' group (one node "
            "serves alone) or 'prefill' + 'decode' groups (PD disaggregation)"
        )
    proxy_group = [h for h in groups.get("proxy", []) if h in hosts]
    for host in hosts:
        if host not in role_of and host not in proxy_group:
            rep.warn(f"host {host}: in no role group (single/prefill/decode); nothing is deployed there")
    if proxy_group and not pd:
        rep.warn(f"group proxy: {', '.join(proxy_group)} ignored; a single-node deployment has no PD proxy")
    for host in [*role_of, *(h for h in proxy_group if h not in role_of)]:
        if not SAFE_NAME.fullmatch(host):
            rep.error(
                f"host {host!r}: the inventory name is written into the host's scripts; expected "
                "letters, digits, '.', '_' or '-' (at most 63, no spaces or shell characters): rename it"
            )

    if rep.errors and not role_of:
        plan.update(errors=rep.errors, warnings=rep.warnings)
        return plan

    # ---- recipe ------------------------------------------------------------------------
    def var(host: str, name: str, default: Any = None) -> Any:
        value = hosts[host].get(name)
        return default if value is None else value

    any_host = next(iter(role_of), next(iter(hosts), None))
    recipe_ids = {var(h, "fleet_recipe", DEFAULT_RECIPE) for h in role_of}
    if len(recipe_ids) > 1:
        rep.error(f"fleet_recipe: hosts disagree ({', '.join(sorted(recipe_ids))}); set it once in all.vars")
    recipe_id = sorted(recipe_ids)[0] if recipe_ids else DEFAULT_RECIPE
    try:
        recipe = load_recipe(recipe_id, var(any_host, "fleet_recipe_paths", []) if any_host else [])
    except RecipeError as exc:
        rep.error(f"fleet_recipe: {exc}")
        plan.update(errors=rep.errors, warnings=rep.warnings)
        return plan
    spec = flag_spec or FlagSpec.load(recipe.get("vllm_version", "0.21.0"))
    plan["recipe"] = recipe["id"]
    try:
        plan["container"] = container_settings(recipe)
    except RecipeError as exc:
        rep.error(f"fleet_recipe: {exc}")
        plan["container"] = {"privileged": False, "reason": ""}
    if plan["container"]["privileged"]:
        rep.warn(
            f"recipe {recipe['id']}: the engine containers run privileged (docker run --privileged=true): "
            f"{plan['container']['reason']}; set serve_privileged: false to run them without"
        )
    plan["topology"] = var(any_host, "fleet_topology", "") if any_host else ""
    plan["pd"] = pd

    # ---- per-host basics ---------------------------------------------------------------
    basics: dict[str, dict[str, Any]] = {}
    addresses: dict[str, list[str]] = {}
    allow_ph_default = mode == "render"
    for host, role in role_of.items():
        allow_ph = var(host, "fleet_allow_placeholder_addresses", allow_ph_default)
        conn = var(host, "ansible_host", host)
        node_ip = var(host, "fleet_node_ip", conn)
        checks = [("ansible_host", conn)]
        if hosts[host].get("fleet_node_ip") is not None:
            checks.append(("fleet_node_ip", node_ip))
        for label, value in checks:
            problem = _address_problem(str(value), allow_ph)
            if problem:
                rep.error(
                    f"host {host}: {label} = {value!r} is {problem}; set {label} for {host} "
                    "in the inventory to the node's real address"
                )
        if not _address_problem(str(node_ip), True) and not _is_ip(str(node_ip)):
            rep.error(
                f"host {host}: node address {node_ip!r} is a hostname; HCCL_IF_IP and the DP "
                f"master address need an IP: set fleet_node_ip for {host}"
            )
        addresses.setdefault(str(node_ip), []).append(host)
        if str(conn) != str(node_ip):
            addresses.setdefault(str(conn), []).append(host)

        hw = var(host, "fleet_hw_kind")
        if hw not in recipe["hardware"]:
            rep.error(
                f"host {host}: fleet_hw_kind = {hw!r}; expected one of "
                f"{', '.join(sorted(recipe['hardware']))} (a2: Atlas 800 A2, 8 devices; "
                "a3: Atlas 800 A3, 16 devices)"
            )
            continue
        profile_name = var(host, "fleet_profile", f"{hw}-{role}")
        profile = recipe["profiles"].get(profile_name)
        if profile is None:
            rep.error(
                f"host {host}: fleet_profile = {profile_name!r} is not in recipe {recipe['id']}; "
                f"expected one of {', '.join(sorted(recipe['profiles']))}"
            )
            continue
        if profile["role"] != role:
            rep.error(
                f"host {host}: fleet_profile = {profile_name!r} is a {profile['role']} profile but "
                f"the host is in group {role}; set fleet_profile to a {role} profile"
            )
            continue
        if profile["hw"] != hw:
            rep.error(
                f"host {host}: fleet_profile = {profile_name!r} is written for {profile['hw']} "
                f"but fleet_hw_kind = {hw!r}; fix one of them"
            )
            continue
        nic = var(host, "fleet_nic_name")
        if nic is None and mode == "render":
            rep.error(f"host {host}: fleet_nic_name is not set; rendering needs the NIC name of {node_ip}")
        instance = var(host, "fleet_instance", host if role == "single" else None)
        if instance is None:
            rep.error(
                f"host {host}: fleet_instance is not set; every {role} host names the instance "
                "it belongs to (nodes of one DP group share a name)"
            )
            continue
        basics[host] = {
            "host": host,
            "role": role,
            "hw_kind": hw,
            "profile": profile_name,
            "device_count": recipe["hardware"][hw]["devices"],
            # hbm_gb / driver_min / firmware_min: checked by preflight on the node
            "hardware": dict(recipe["hardware"][hw]),
            "node_ip": str(node_ip),
            "connect_address": str(conn),
            "nic_name": nic,
            "instance": f"{role}:{instance}",
            "instance_name": str(instance),
        }

    # A dedicated proxy host (group proxy, no engine): its address is checked like the others.
    for host in proxy_group if pd else []:
        if host in role_of:
            continue
        allow_ph = var(host, "fleet_allow_placeholder_addresses", allow_ph_default)
        conn = str(var(host, "ansible_host", host))
        node_ip = str(var(host, "fleet_node_ip", conn))
        for label, value in [("ansible_host", conn)] + (
            [("fleet_node_ip", node_ip)] if hosts[host].get("fleet_node_ip") is not None else []
        ):
            problem = _address_problem(value, allow_ph)
            if problem:
                rep.error(
                    f"host {host}: {label} = {value!r} is {problem}; set {label} for {host} "
                    "(the PD proxy host) in the inventory to its real address"
                )
        if not _address_problem(node_ip, True) and not _is_ip(node_ip):
            rep.error(
                f"host {host}: proxy address {node_ip!r} is a hostname; the proxy binds an IP: "
                f"set fleet_node_ip for {host}"
            )
        for addr in {conn, node_ip}:
            addresses.setdefault(addr, []).append(host)

    for addr, owners in addresses.items():
        owners = list(dict.fromkeys(owners))
        if len(owners) > 1:
            rep.error(
                f"hosts {', '.join(owners)}: share the address {addr}, the same machine under "
                f"{len(owners)} names; each node needs its own (fix ansible_host / fleet_node_ip)"
            )

    # ---- instances ---------------------------------------------------------------------
    order: list[str] = []
    nodes_of: dict[str, list[str]] = {}
    for role in ("prefill", "decode", "single"):
        for host in members[role]:
            if host in basics:
                key = basics[host]["instance"]
                if key not in nodes_of:
                    order.append(key)
                    nodes_of[key] = []
                nodes_of[key].append(host)

    for key in order:
        kinds = {h: basics[h]["hw_kind"] for h in nodes_of[key]}
        if len(set(kinds.values())) > 1:
            rep.error(
                f"instance {key.split(':', 1)[1]}: mixes hardware kinds in one DP group ("
                + ", ".join(f"{h} {k}" for h, k in kinds.items())
                + "); a DP group runs on one kind: fix fleet_hw_kind or split the instance (fleet_instance)"
            )
        for name in INSTANCE_VARS:
            seen = {repr(_plain(hosts[h].get(name))) for h in nodes_of[key]}
            if len(seen) > 1:
                rep.error(
                    f"instance {key.split(':', 1)[1]}: {name} differs between its hosts "
                    f"({', '.join(sorted(seen)).replace('None', 'unset')}); set it once for the whole "
                    "instance (e.g. as a group variable), not on some of its hosts"
                )

    engine_ids: dict[int, str] = {}
    instances: list[dict[str, Any]] = []
    pd_index = 0
    kv = recipe["kv"]
    for key in order:
        nodes = nodes_of[key]
        first = nodes[0]
        role = basics[first]["role"]
        profile = recipe["profiles"][basics[first]["profile"]]
        tp = var(first, "fleet_tp_size", profile["tp_size"])
        inst: dict[str, Any] = {
            "name": basics[first]["instance_name"],
            "key": key,
            "role": role,
            "nodes": nodes,
            "tp_size": tp,
            "profile": profile["name"],
            "kv_role": profile.get("kv_role"),
        }
        # DP ranks: nodes in inventory order; each node's start defaults to the running sum.
        cursor = 0
        covered: dict[int, str] = {}
        for host in nodes:
            local = var(host, "fleet_dp_size_local", profile["dp_size_local"])
            start = var(host, "fleet_dp_rank_start", cursor)
            basics[host]["dp_size_local"] = local
            basics[host]["dp_rank_start"] = start
            cursor = start + local
            devices = basics[host]["device_count"]
            if _is_int(tp) and _is_int(local) and tp * local > devices:
                rep.error(
                    f"host {host}: tp_size {tp} x dp_size_local {local} = {tp * local} devices, "
                    f"but an {basics[host]['hw_kind']} node has {devices}; lower fleet_tp_size or "
                    "fleet_dp_size_local"
                )
            if _is_int(start) and _is_int(local):
                for rank in range(start, start + local):
                    if rank in covered:
                        rep.error(
                            f"instance {inst['name']}: DP rank {rank} on both {covered[rank]} and "
                            f"{host}; fix fleet_dp_rank_start / fleet_dp_size_local"
                        )
                    covered[rank] = host
        dp_size = var(first, "fleet_dp_size", sum(basics[h]["dp_size_local"] for h in nodes))
        inst["dp_size"] = dp_size
        missing = sorted(set(range(dp_size)) - set(covered)) if _is_int(dp_size) else []
        extra = sorted(r for r in covered if not _is_int(dp_size) or r >= dp_size or r < 0)
        if missing or extra:
            rep.error(
                f"instance {inst['name']}: DP ranks must cover [0, {dp_size}) exactly once; "
                f"missing {missing or 'none'}, outside {extra or 'none'} (nodes: "
                + ", ".join(f"{h} {basics[h]['dp_rank_start']}..+{basics[h]['dp_size_local']}" for h in nodes)
                + "); fix fleet_dp_size / fleet_dp_rank_start / fleet_dp_size_local"
            )
        master = next((h for h in nodes if basics[h]["dp_rank_start"] == 0), first)
        inst["master"] = master
        inst["dp_address"] = var(first, "fleet_dp_address", basics[master]["node_ip"])
        problem = hosts[first].get("fleet_dp_address") is not None and _address_problem(
            str(inst["dp_address"]), mode == "render"
        )
        if problem:
            rep.error(f"instance {inst['name']}: fleet_dp_address = {inst['dp_address']!r} is {problem}")
        inst["dp_rpc_port"] = var(first, "fleet_dp_rpc_port", recipe["launcher"]["dp_rpc_port"])
        if role in ("prefill", "decode"):
            engine_id = var(first, "fleet_engine_id", pd_index)
            pd_index += 1
            if engine_id in engine_ids:
                rep.error(
                    f"instance {inst['name']}: engine_id {engine_id} is also used by instance "
                    f"{engine_ids[engine_id]}; every P/D instance needs its own (fleet_engine_id)"
                )
            engine_ids[engine_id] = inst["name"]
            inst["engine_id"] = engine_id
            base = var(first, "fleet_kv_port_base", kv["port_base"])
            stride = var(first, "fleet_kv_port_stride", kv["port_stride"])
            inst["kv_port"] = var(first, "fleet_kv_port", base + engine_id * stride if _is_int(engine_id) else base)
            if _is_int(dp_size) and _is_int(tp):
                inst["kv_port_range"] = [inst["kv_port"], inst["kv_port"] + dp_size * tp - 1]
            other = next((i for i in instances if i.get("kv_port") == inst["kv_port"]), None)
            if other is not None:
                rep.error(
                    f"instance {inst['name']}: kv_port {inst['kv_port']} is also the kv_port of instance "
                    f"{other['name']}; the tutorial: the kv_port must be unique for each P instance "
                    "(fleet_kv_port, or fleet_engine_id with fleet_kv_port_base/stride)"
                )
        instances.append(inst)

    # kv_connector_extra_config: the real sizes of the prefill and decode sides.
    side_sizes: dict[str, dict[str, int]] = {}
    for role in ("prefill", "decode"):
        sizes = {(i["dp_size"], i["tp_size"]) for i in instances if i["role"] == role}
        if len(sizes) > 1:
            rep.error(
                f"group {role}: its instances differ in size ({sorted(sizes)}); the kv connector "
                f"describes one {role} shape: make every {role} instance the same DP x TP"
            )
        if sizes:
            dp, tp = sorted(sizes)[0]
            side_sizes[role] = {"dp_size": dp, "tp_size": tp}
    real_extra = {"prefill": side_sizes.get("prefill"), "decode": side_sizes.get("decode")}

    # ---- proxy -------------------------------------------------------------------------
    proxy = None
    if pd and not rep.errors:
        proxy_hosts = [h for h in groups.get("proxy", []) if h in hosts]
        prefills = [i for i in instances if i["role"] == "prefill"]
        proxy_host = proxy_hosts[0] if proxy_hosts else prefills[0]["master"]
        if len(proxy_hosts) > 1:
            rep.error(f"group proxy: {len(proxy_hosts)} hosts ({', '.join(proxy_hosts)}); expected one")
        proxy_ip = (
            basics[proxy_host]["node_ip"]
            if proxy_host in basics
            else str(var(proxy_host, "fleet_node_ip", var(proxy_host, "ansible_host", proxy_host)))
        )
        proxy = {
            "host": proxy_host,
            "address": proxy_ip,
            "port": var(proxy_host, "fleet_proxy_port", recipe["proxy"]["port"]),
            "script": recipe["proxy"]["script"],
            "python": recipe["launcher"]["python"],
            "prefill": [],
            "decode": [],
        }

    # ---- per host: ranks, ports, script ------------------------------------------------
    image_repo = recipe["image"]["repository"]
    inst_by_key = {i["key"]: i for i in instances}
    bound: dict[str, list[tuple[int, str]]] = {}
    for host, b in basics.items():
        if b["instance"] not in inst_by_key or "dp_size_local" not in b:
            continue
        inst = inst_by_key[b["instance"]]
        profile = recipe["profiles"][b["profile"]]
        tp, local, start = inst["tp_size"], b["dp_size_local"], b["dp_rank_start"]
        if not all(_is_int(x) for x in (tp, local, start, inst["dp_size"])):
            continue
        start_port = var(host, "fleet_vllm_start_port", recipe["launcher"]["vllm_start_port"])
        api_port = var(host, "fleet_api_port", recipe["single"]["port"])
        devices_override = var(host, "fleet_visible_devices")
        ranks = []
        for i in range(local):
            if devices_override is not None:
                devs = str(devices_override[i]) if i < len(devices_override) else ""
            else:
                devs = ",".join(str(d) for d in range(i * tp, (i + 1) * tp))
            rank: dict[str, Any] = {"local": i, "dp_rank": start + i, "devices": devs}
            if b["role"] == "single":
                rank["api_port"] = api_port
            else:
                rank["api_port"] = start_port + i
                rank["kv_ports"] = (
                    [inst["kv_port"] + (start + i) * tp + t for t in range(tp)] if _is_int(inst.get("kv_port")) else []
                )
            ranks.append(rank)
        if b["role"] == "single":
            all_devs = (
                ",".join(str(e) for e in devices_override)
                if devices_override is not None
                else ",".join(str(d) for d in range(tp * local))
            )
            ranks = [{"local": 0, "dp_rank": 0, "api_port": api_port, "devices": all_devs}]
        # device list sanity
        if devices_override is not None:
            if len(devices_override) != local:
                rep.error(
                    f"host {host}: fleet_visible_devices has {len(devices_override)} entries; "
                    f"expected one per local DP rank ({local})"
                )
            used: set[int] = set()
            for entry in devices_override:
                ids = [x for x in str(entry).split(",") if x != ""]
                if not all(x.isdigit() for x in ids) or len(ids) != tp:
                    rep.error(
                        f"host {host}: fleet_visible_devices entry {entry!r}; expected {tp} "
                        "comma-separated device ids (tp_size)"
                    )
                    continue
                for x in map(int, ids):
                    if x >= b["device_count"] or x in used:
                        rep.error(
                            f"host {host}: device {x} in fleet_visible_devices is "
                            f"{'used twice' if x in used else 'not on this node'} "
                            f"({b['hw_kind']}: 0..{b['device_count'] - 1})"
                        )
                    used.add(x)

        ports = bound.setdefault(host, [])
        for r in ranks:
            ports.append((r["api_port"], f"API port of DP rank {r['dp_rank']}"))
            for p in r.get("kv_ports", []):
                ports.append((p, f"kv side-channel port of DP rank {r['dp_rank']}"))
        if b["role"] != "single" and host == inst["master"]:
            ports.append((inst["dp_rpc_port"], "DP RPC port (fleet_dp_rpc_port)"))
        if proxy and host == proxy["host"]:
            ports.append((proxy["port"], "proxy port (fleet_proxy_port)"))

        # Script content: preamble, env, serve flags.
        kv_cfg = None
        if b["role"] != "single":
            extra = real_extra
            override = var(host, "fleet_kv_extra_config")
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
            kv_cfg = {
                "kv_connector": kv["connector"],
                "kv_role": profile["kv_role"],
                "kv_port": str(inst["kv_port"]),
                "engine_id": str(inst["engine_id"]),
                "kv_connector_extra_config": extra,
            }
        overrides = var(host, "fleet_serve_overrides", {})
        _check_owned_flags(host, overrides, spec, rep)
        serve = apply_serve_changes(profile["serve"], overrides, [], spec.version)
        markers = {
            "@tp_size@": tp,
            "@dp_size@": inst["dp_size"],
            "@api_port@": api_port,
            "@kv_transfer_config@": kv_cfg,
        }
        serve_args = []
        for pair in serve:
            if len(pair) == 1:
                serve_args.append([pair[0], None])
                continue
            value = markers.get(pair[1], pair[1]) if isinstance(pair[1], str) else pair[1]
            serve_args.append([pair[0], shell_value(value, trusted=pair[0] not in overrides)])
        env = [list(p) for p in profile["env"]]
        env_over = var(host, "fleet_env_overrides", {})
        timeout = var(host, "fleet_engine_ready_timeout_s")
        if timeout is not None and "VLLM_ENGINE_READY_TIMEOUT_S" not in env_over:
            env_over = {**env_over, "VLLM_ENGINE_READY_TIMEOUT_S": str(timeout)}
        if b["role"] == "single" and devices_override is not None and "ASCEND_RT_VISIBLE_DEVICES" not in env_over:
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

        model_path = var(host, "fleet_model_path", recipe["model"]["path"])
        cache_dir = str(var(host, "weights_cache_dir", "/root/.cache"))
        cache_norm = posixpath.normpath(cache_dir) if cache_dir.startswith("/") else None
        if cache_norm is None or not model_path.startswith(cache_norm.rstrip("/") + "/"):
            rep.error(
                f"host {host}: fleet_model_path = {model_path!r} is not inside weights_cache_dir = "
                f"{cache_dir!r}; the engines mount only weights_cache_dir, so they would not find the "
                "weights: put fleet_model_path under weights_cache_dir (or set weights_cache_dir to a "
                "directory above it)"
            )
        image = var(
            host,
            "fleet_image",
            "{}:{}{}".format(image_repo, recipe["image"]["tag"], recipe["image"]["tag_suffix"].get(b["hw_kind"], "")),
        )
        launcher_args = None
        if b["role"] != "single":
            launcher_args = [
                ["--dp-size", inst["dp_size"]],
                ["--tp-size", tp],
                ["--dp-size-local", local],
                ["--dp-rank-start", start],
                ["--dp-address", inst["dp_address"]],
                ["--dp-rpc-port", inst["dp_rpc_port"]],
                ["--vllm-start-port", start_port],
            ]
        device_map = []
        if b["role"] != "single" and devices_override is not None:
            for r in ranks:
                given = ",".join(str(d) for d in range(r["local"] * tp, (r["local"] + 1) * tp))
                if r["devices"] != given:
                    device_map.append([given, r["devices"]])
        try:  # the image's ~/.bashrc lines the engine start applies (recipe shell_env)
            shell_env = shell_env_for_kind(recipe, b["hw_kind"])
        except ShellEnvError as exc:
            rep.error(str(exc))
            shell_env = {"source": [], "export": []}
        entry = {
            **b,
            "device_map": device_map,
            "instance": inst["name"],
            "tp_size": tp,
            "dp_size": inst["dp_size"],
            "dp_address": inst["dp_address"],
            "dp_rpc_port": inst["dp_rpc_port"],
            "is_dp_master": host == inst["master"],
            "vllm_start_port": start_port if b["role"] != "single" else api_port,
            "engine_id": inst.get("engine_id"),
            "kv_role": profile.get("kv_role"),
            "kv_port": inst.get("kv_port"),
            "kv_ports": sorted(p for r in ranks for p in r.get("kv_ports", [])),
            "kv_extra_config": kv_cfg["kv_connector_extra_config"] if kv_cfg else None,
            "ranks": ranks,
            "api_ports": [r["api_port"] for r in ranks],
            # the tutorial's --device list for this hardware kind
            "container_devices": [f"/dev/davinci{d}" for d in range(b["device_count"])] + list(NPU_CONTROL_DEVICES),
            "image": image,
            "model_path": model_path,
            "model_hub_id": recipe["model"]["hub_id"],
            "served_name": recipe["model"]["served_name"],
            "script": {
                "preamble": profile["preamble"],
                "script_vars": bool(profile["script_vars"]),
                "env": env,
                "serve_args": serve_args,
            },
            "launcher": {
                "python": recipe["launcher"]["python"],
                "script": recipe["launcher"]["script"],
                "args": launcher_args,
            },
            "is_proxy": bool(proxy and host == proxy["host"]),
            "shell_env": shell_env,
        }
        entry["files"] = (["serve.sh"] if b["role"] == "single" else ["run_dp_template.sh", "launch.sh"]) + (
            ["proxy.sh"] if entry["is_proxy"] else []
        )
        for pair in serve_args:
            if pair[0] == "--served-model-name" and pair[1]:
                entry["served_name"] = shlex.split(pair[1])[0]
        plan["hosts"][host] = entry
        _check_serve(host, entry, spec, rep)

    for host, ports in bound.items():
        by_port: dict[int, str] = {}
        clashes: list[str] = []
        for port, purpose in ports:
            if not _is_int(port) or not 0 < port < 65536:
                rep.error(f"host {host}: {purpose} = {port!r}; expected a port number 1..65535")
                continue
            if port in by_port:
                clashes.append(f"port {port} is both the {by_port[port]} and the {purpose}")
            by_port[port] = purpose
        if clashes:
            more = f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else ""
            rep.error(
                f"host {host}: {len(clashes)} port clash{'es' if len(clashes) > 1 else ''}: "
                + "; ".join(clashes[:3])
                + more
                + "; move one range (fleet_vllm_start_port, "
                "fleet_kv_port / fleet_kv_port_base, fleet_dp_rpc_port, fleet_proxy_port)"
            )
        plan["hosts"].get(host, {})["bound_ports"] = sorted(by_port)
        # what each port is for, so a port held by a stranger is reported by its purpose
        plan["hosts"].get(host, {})["port_purposes"] = {str(p): what for p, what in by_port.items()}

    # ---- proxy lists and entry point ---------------------------------------------------
    if proxy and not rep.errors:
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
        else:
            # A dedicated proxy host (group proxy): no engine, only proxy.sh, in the engine image.
            host = proxy["host"]
            kind = var(host, "fleet_hw_kind")
            kind = kind if kind in recipe["hardware"] else first_prefill["hw_kind"]
            plan["proxy_hosts"][host] = {
                "host": host,
                "role": "proxy",
                "instance": "proxy",
                "profile": "proxy",
                "hw_kind": kind,
                "node_ip": proxy["address"],
                "connect_address": str(var(host, "ansible_host", host)),
                "image": var(
                    host,
                    "fleet_image",
                    "{}:{}{}".format(image_repo, recipe["image"]["tag"], recipe["image"]["tag_suffix"].get(kind, "")),
                ),
                "files": ["proxy.sh"],
                "is_proxy": True,
                "proxy": proxy,
                "bound_ports": [proxy["port"]],
            }
    elif not pd and plan["hosts"]:
        first = next(iter(plan["hosts"].values()))
        plan["entrypoint"] = {
            "host": first["host"],
            "address": first["node_ip"],
            "port": first["api_ports"][0],
            "served_name": first["served_name"],
        }

    plan["instances"] = [{k: v for k, v in i.items() if k != "key"} for i in instances]
    _warn_risky(plan, recipe, rep)
    plan["errors"] = rep.errors
    plan["warnings"] = rep.warnings
    return plan


def serve_argv(entry: dict[str, Any]) -> list[str]:
    """The argv ``vllm serve`` gets on the host's first rank (launcher positionals filled in)."""
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


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check_owned_flags(host: str, overrides: dict[str, Any], spec: FlagSpec, rep: Report) -> None:
    """Refuse overrides of what the plan computes (ports, DP/TP layout, kv identity, API key)."""
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


def _check_serve(host: str, entry: dict[str, Any], spec: FlagSpec, rep: Report) -> None:
    """Validate the host's vllm serve command with vLLM's own flag table, plus PD rules."""
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


def _warn_risky(plan: dict[str, Any], recipe: dict[str, Any], rep: Report) -> None:
    """Tutorial values that are known to bite: kept as defaults, flagged with the fix."""
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
