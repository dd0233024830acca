"""Plan step 1, the inventory: type-checked host variables, and the shared vocabulary.

What every later step of the plan (see ``topology.build_plan``) relies on: the fleet_*
variables and their types, the checks of one value (ports, names, addresses, bounds),
the ``Report`` that collects errors and warnings, and ``read_inventory``, which turns
Ansible's raw hostvars and groups into an ``Inventory`` whose values are coerced and
checked (a bad value is reported and left out, so no later step trips over it).
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

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


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class Inventory:
    """The checked inventory: host -> coerced variables, group -> ordered hosts, and the mode."""

    hosts: dict[str, dict[str, Any]]
    groups: dict[str, list[str]]
    mode: str

    def var(self, host: str, name: str, default: Any = None) -> Any:
        """The host's value of ``name``, or ``default`` when unset (or set to null)."""
        value = self.hosts[host].get(name)
        return default if value is None else value

    def is_set(self, host: str, name: str) -> bool:
        """Whether the inventory gives ``name`` a (non-null) value for ``host``."""
        return self.hosts[host].get(name) is not None


def read_inventory(
    hosts: dict[str, dict[str, Any]],
    groups: dict[str, list[str]],
    mode: str,
    bool_vars: set[str] | None,
    option_types: dict[str, str] | None,
    rep: Report,
) -> Inventory:
    """Step 1. Input: Ansible's hostvars and groups, the mode, the roles' option types.

    Output: an ``Inventory`` with host and group names as plain strings, groups holding
    only host names, and every host's fleet_* variables and typed role options coerced
    (``"8"`` -> 8) and checked; each bad value is reported on ``rep`` and left out.
    """
    types: dict[str, tuple[type, ...]] = {
        name: SPEC_TYPES[kind] for name, kind in (option_types or {}).items() if kind in SPEC_TYPES
    }
    types.update({name: (bool,) for name in bool_vars or ()})
    groups = {str(g): [str(h) for h in (members or []) if isinstance(h, str)] for g, members in groups.items()}
    fleet_cap = MAX_DEVICES * max(1, len(hosts))
    checked = {str(host): check_types(str(host), dict(hv or {}), types, rep, fleet_cap) for host, hv in hosts.items()}
    return Inventory(hosts=checked, groups=groups, mode=mode)
